"""A center's site settings: center.toml.

    [center]
    name = "hospital-a"                   # the name the coordinator gave (certs add-center NAME)
    data = "/srv/feddel/images"           # image folder, opened read-only
    state = "/var/lib/feddel-center"      # caches, manifests, events.jsonl

    [superlink]
    address = "link.example.org:9093"     # as the coordinator's certificate names it
    ca = "/etc/feddel/center/ca.crt"      # from centers/<name>/ of the coordinator
    key = "/etc/feddel/center/center.key" # idem; mode 0600

    [supernode]
    runtime-port = 9094                   # Flower's local ClientApp API, on 127.0.0.1 only

    [privacy]                             # optional: this center's floor (safe defaults)
    min-members = 10                      # see common/privacy/policy.py for every key

    [policy]                              # optional: which rounds this center takes part in
    methods = ["feddel", "meddel"]        # allowed methods (default: all)
    max-budget = 0.2                      # largest share of the pool a round may select
    operators = ["alice"]                 # coordinator operators allowed to submit (default:
                                          # any operator the coordinator authenticated)

Relative paths are taken relative to the file's folder, so the folder the coordinator hands
over (centers/<name>/) can hold center.toml beside its keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feddel.common.deployment.certs import check_center_name
from feddel.common.deployment.sites import read_site_config
from feddel.common.errors import ConfigError
from feddel.common.privacy import policy as privacy_policy
from feddel.common.privacy.policy import PrivacyPolicy

DEFAULT_RUNTIME_PORT = 9094

_SCHEMA: dict[str, dict[str, type]] = {
    "center": {"name": str, "data": str, "state": str},
    "superlink": {"address": str, "ca": str, "key": str},
    "supernode": {"runtime-port": int},
    privacy_policy.SECTION: privacy_policy.SCHEMA,
    "policy": {"methods": list, "max-budget": float, "operators": list},
}
_REQUIRED = {"center": ("name", "data", "state"), "superlink": ("address", "ca", "key")}


@dataclass(frozen=True)
class RoundPolicy:
    """[policy] of center.toml: the rounds this center takes part in (client/policy.py
    refuses the others, with the reason, and audits both)."""

    methods: tuple[str, ...] = ()  # empty: every method
    max_budget: float = 1.0
    operators: tuple[str, ...] = ()  # empty: any operator the coordinator authenticated

    def refusal(self, method: str, budget: float, operator: str) -> str | None:
        """Why this center refuses a round, in one line, or None."""
        if self.methods and method not in self.methods:
            return (
                f"method {method!r} is not allowed at this center (allowed: "
                f"{', '.join(self.methods)}; [policy] methods in center.toml)"
            )
        if budget > self.max_budget:
            return (
                f"budget {budget:g} is above this center's max-budget {self.max_budget:g} "
                "(the share of the pool the round selects; [policy] in center.toml)"
            )
        if self.operators and operator not in self.operators:
            return (
                f"operator {operator or '(none)'!r} may not submit rounds to this center "
                f"(allowed: {', '.join(self.operators)}; [policy] operators in center.toml)"
            )
        return None


@dataclass(frozen=True)
class CenterSite:
    name: str
    data: Path
    state: Path
    address: str  # host:port of the SuperLink
    ca_cert: Path
    key: Path
    runtime_port: int
    privacy: PrivacyPolicy = field(default_factory=PrivacyPolicy)
    policy: RoundPolicy = field(default_factory=RoundPolicy)

    @property
    def flwr_home(self) -> Path:
        """FLWR_HOME of this center's SuperNode (Flower installs each run's app here)."""
        return self.state / "flwr"


def load_center_site(path: str | Path) -> CenterSite:
    """Read and check center.toml: required keys present, name and address well formed."""
    file = Path(path)
    sections = read_site_config(file, _SCHEMA)
    missing = [
        f"[{section}] {key}"
        for section, keys in _REQUIRED.items()
        for key in keys
        if key not in sections[section]
    ]
    if missing:
        raise ConfigError(f"{file} lacks {', '.join(missing)}; see deploy/center.example.toml")
    center, link = sections["center"], sections["superlink"]
    check_center_name(center["name"])
    base = file.resolve().parent
    port = sections["supernode"].get("runtime-port", DEFAULT_RUNTIME_PORT)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{file}: [supernode] runtime-port = {port} must be in 1..65535")
    return CenterSite(
        name=center["name"],
        data=_path(center["data"], base),
        state=_path(center["state"], base),
        address=_check_address(file, link["address"]),
        ca_cert=_path(link["ca"], base),
        key=_path(link["key"], base),
        runtime_port=port,
        privacy=PrivacyPolicy.from_section(sections[privacy_policy.SECTION]),
        policy=_policy(file, sections["policy"]),
    )


def load_privacy_policy(path: str | Path) -> PrivacyPolicy:
    """Only the [privacy] section of a center.toml (defaults for what it leaves out): what the
    ClientApp reads for every message, and what a simulated center reads from its folder."""
    return PrivacyPolicy.from_section(read_site_config(Path(path), _SCHEMA)[privacy_policy.SECTION])


def _policy(file: Path, section: dict[str, Any]) -> RoundPolicy:
    # The method registry imports the curation code; only a [policy] that lists methods pays
    # for it, so `feddel-center status` and `join` start fast.
    from feddel.common.curation.methods import METHOD_NAMES

    methods = tuple(section.get("methods", ()))
    unknown = sorted(set(methods) - set(METHOD_NAMES))
    if unknown or ("methods" in section and not methods):
        raise ConfigError(
            f"{file}: [policy] methods = {list(methods)} must name some of "
            f"{', '.join(METHOD_NAMES)}"
        )
    max_budget = float(section.get("max-budget", 1.0))
    if not 0.0 < max_budget <= 1.0:
        raise ConfigError(f"{file}: [policy] max-budget = {max_budget:g} must be in (0, 1]")
    return RoundPolicy(methods, max_budget, tuple(section.get("operators", ())))


def _check_address(file: Path, address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(
            f"{file}: [superlink] address = {address!r} must be HOST:PORT, "
            "e.g. link.example.org:9093"
        )
    if "://" in address:
        raise ConfigError(f"{file}: [superlink] address = {address!r} must not carry a scheme")
    return address


def _path(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()
