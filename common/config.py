"""The curation configuration: one frozen dataclass, built once at the boundary and validated.

Flower hands apps a flat `run_config` of kebab-case keys (bool/int/float/str only). The same
defaults are declared in pyproject's `[tool.flwr.app.config]` for `flwr run`; a test keeps the
two identical, so there is one set of defaults however FedDEL is started.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from feddel.common.curation.methods import FEDDEL, METHOD_NAMES, METHODS, Method, method_named
from feddel.common.errors import ConfigError

# FedDEL's own ViT, registered with timm by common/models/registry.py (why this size: see there).
DEFAULT_MODEL = "vit_feddel_patch8_64"

KEEP_CHOICES = ("hard", "easy")


@dataclass(frozen=True)
class CurationConfig:
    """Everything one curation round needs; field names are run-config keys with '-' -> '_'."""

    method: str = FEDDEL.name
    budget: float = 0.05  # target retention R = selected / pool
    k: int = 32  # global clusters
    k_local: int = 8  # local centroids each center proposes for k-FED seeding
    min_count: int = 10  # privacy: no shared statistic but a count describes fewer samples
    noise_sigma: float = 0.05  # privacy: noise std in every shared sum of unit embeddings
    image_noise: float = 8192.0  # privacy: noise std per pixel of the federated image sum
    min_roster: int = 3  # privacy: centers in every secure sum, at least
    dp_epsilon: float = 0.0  # differential privacy over the whole round; 0 = off
    dp_delta: float = 1e-6
    min_fraction: float = 0.5  # the round goes on while at least this share of centers answers
    phase_timeout: float = 0.0  # seconds to wait for a phase's replies; 0 = no limit
    min_centers: int = 1  # wait until this many centers are connected before starting
    connect_timeout: float = 120.0  # seconds to wait for them
    kmeans_max_rounds: int = 20
    kmeans_tol: float = 1e-4  # stop Lloyd when the relative inertia change is below this
    tau: float = 0.0  # temperature of the cluster-PVI softmax; 0 = mean squared distance (auto)
    eps: float = 0.9  # MedDEL outlier threshold: cosine distance to the centroid
    eta: float = 0.98  # near-duplicate threshold (cosine) within a center; encoder-dependent
    keep: str = "hard"  # which of a near-duplicate pair survives
    series_cap: float = 1.0  # FedDEL: a series keeps <= this x its budget share of candidates
    seed: int = 0
    model: str = DEFAULT_MODEL
    image_size: int = 64
    weights: str = ""  # local weights file; empty = random init with `seed`
    run_name: str = "run"
    out: str = "runs/coordinator"

    @property
    def selection_method(self) -> Method:
        """The method this round runs (common/curation/methods.py)."""
        return method_named(self.method)

    def __post_init__(self) -> None:
        _check(self.method in METHODS, "method", self.method, f"one of {', '.join(METHOD_NAMES)}")
        _check(0.0 < self.budget <= 1.0, "budget", self.budget, "in (0, 1], e.g. 0.05 for 5%")
        _check(self.k >= 1, "k", self.k, ">= 1")
        _check(self.k_local >= 1, "k-local", self.k_local, ">= 1")
        _check(self.min_count >= 1, "min-count", self.min_count, ">= 1")
        _check(self.noise_sigma >= 0.0, "noise-sigma", self.noise_sigma, ">= 0")
        _check(self.image_noise >= 0.0, "image-noise", self.image_noise, ">= 0")
        _check(self.min_roster >= 1, "min-roster", self.min_roster, ">= 1")
        _check(self.dp_epsilon >= 0.0, "dp-epsilon", self.dp_epsilon, ">= 0 (0 = off)")
        _check(0.0 < self.dp_delta < 1.0, "dp-delta", self.dp_delta, "in (0, 1), e.g. 1e-6")
        _check(0.0 < self.min_fraction <= 1.0, "min-fraction", self.min_fraction, "in (0, 1]")
        _check(
            self.phase_timeout >= 0.0, "phase-timeout", self.phase_timeout, ">= 0 (0 = no limit)"
        )
        _check(self.min_centers >= 1, "min-centers", self.min_centers, ">= 1")
        _check(self.connect_timeout >= 0.0, "connect-timeout", self.connect_timeout, ">= 0")
        _check(self.kmeans_max_rounds >= 1, "kmeans-max-rounds", self.kmeans_max_rounds, ">= 1")
        _check(self.kmeans_tol >= 0.0, "kmeans-tol", self.kmeans_tol, ">= 0")
        _check(self.tau >= 0.0, "tau", self.tau, ">= 0 (0 = automatic)")
        _check(0.0 < self.eps <= 2.0, "eps", self.eps, "in (0, 2] (a cosine distance)")
        _check(-1.0 <= self.eta <= 1.0, "eta", self.eta, "in [-1, 1] (a cosine similarity)")
        _check(self.keep in KEEP_CHOICES, "keep", self.keep, "'hard' or 'easy'")
        _check(self.series_cap >= 0.0, "series-cap", self.series_cap, ">= 0 (0 = no cap)")
        _check(self.image_size >= 16, "image-size", self.image_size, ">= 16")
        _check(bool(self.run_name.strip()), "run-name", self.run_name, "a non-empty name")

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> CurationConfig:
        """Build from Flower's kebab-case run config; unknown keys are rejected by name."""
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        unknown = sorted(set(run_config) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {', '.join(unknown)}; "
                f"known keys: {', '.join(sorted(known))}"
            )
        values = {
            known[key].name: _coerce(key, value, known[key]) for key, value in run_config.items()
        }
        return cls(**values)

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """Turn CLI `key=value` pairs into a run-config mapping (values coerced later by type)."""
    overrides: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not key=value, e.g. --set budget=0.1")
        overrides[key.strip()] = value.strip()
    return overrides


def with_field_defaults(stored: Mapping[str, Any], settings_class: type) -> dict[str, Any]:
    """Stored settings of a dataclass, plus the defaults of fields added since they were written.

    Runs made before a setting existed used its default, so their stored settings still match a
    run with that default: resuming them, or reusing their cells, stays allowed.
    """
    defaults: dict[str, Any] = {}
    for field in fields(settings_class):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
            is_settings = dataclasses.is_dataclass(value)
            defaults[field.name] = dataclasses.asdict(value) if is_settings else value
    return {**json.loads(json.dumps(defaults)), **stored}


def _coerce(key: str, value: Any, field: dataclasses.Field[Any]) -> Any:
    kind = type(field.default)
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return bool(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind is float:
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(value)
            return number
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} must be {_KIND_NAMES[kind]}") from None


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a finite number", str: "text"}


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} must be {rule}")
