"""A curation round's summary: one typed record from the round to summary.json and back.

The federated round (server/report.py) and the centralized reference
(simulations/centralized.py) both produce a `RoundSummary`; commands, the pipeline and the
benchmarks read its fields, and only `to_json` turns it into the dict written as summary.json
(keys are the CLI's contract: add, never rename). `from_json` reads a written one back, e.g.
what a deployed ServerApp wrote for `feddel-coordinator curate`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

Traffic = dict[str, int]  # bytes per phase, plus "total"


@dataclass(frozen=True)
class CenterLine:
    """One center's line of `per_center`: its counts and what the round selected there."""

    files: int
    samples: int
    unreadable: int
    duplicate_files: int
    disruptive: int
    selected: int
    status: str | None = None  # federated only: "ok", "small" or "empty"


@dataclass(frozen=True)
class FailedCenter:
    center: str
    phase: str
    reason: str


@dataclass(frozen=True)
class ClusterCounts:
    """Per global cluster (federated: secure sums, small cells dropped)."""

    candidates: list[int]
    quotas: list[int]
    selected: list[int]


@dataclass(frozen=True)
class RoundSummary:
    method: str
    budget: float
    total_samples: int
    selected: int
    k: int
    kmeans_rounds: int
    inertia: float
    tau: float
    per_center: dict[str, CenterLine]
    config: dict[str, Any]
    wall_s: float
    mode: str = "federated"
    eta: float | None = None
    inertia_history: list[float] = field(default_factory=list)
    bytes_up: Traffic | None = None
    bytes_down: Traffic | None = None
    phase_seconds: dict[str, float] | None = None
    failed_centers: list[FailedCenter] = field(default_factory=list)
    clusters: ClusterCounts | None = None
    v_information: dict[str, dict[str, float]] = field(default_factory=dict)
    synthesized: dict[str, Any] | None = None  # optidel: mosaics per center
    warnings: list[str] = field(default_factory=list)
    quality: dict[str, Any] | None = None  # against truth.csv, simulations only
    privacy: dict[str, Any] | None = None  # federated: noise per phase, DP epsilon and delta

    @property
    def centers(self) -> int:
        return len(self.per_center)

    @property
    def retention(self) -> float:
        return self.selected / self.total_samples if self.total_samples else 0.0

    @property
    def bytes_total(self) -> int:
        """Both directions, every phase (0 for the centralized reference)."""
        return sum((traffic or {}).get("total", 0) for traffic in (self.bytes_up, self.bytes_down))

    @property
    def privacy_line(self) -> str:
        """One line on what protects the round's statistics ("" for the centralized run)."""
        if not self.privacy:
            return ""
        dp = self.privacy.get("dp")
        if dp:
            return (
                f"differential privacy: epsilon {dp['epsilon']:.3g} at delta {dp['delta']:g} "
                f"(target {dp['epsilon_target']:g}) over {dp['releases']} Gaussian releases"
            )
        return (
            f"noise sigma {self.privacy['noise_sigma']:g} in every shared sum of embeddings, "
            f"exact counts, min-count {self.privacy['min_count']}, min-roster "
            f"{self.privacy['min_roster']} (no DP guarantee: set dp-epsilon for one)"
        )

    def to_json(self) -> dict[str, Any]:
        """summary.json: every field (None as null), plus centers and retention."""
        return {"centers": self.centers, "retention": self.retention, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundSummary:
        known = {item.name for item in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["per_center"] = {
            name: CenterLine(**line) for name, line in data.get("per_center", {}).items()
        }
        values["failed_centers"] = [FailedCenter(**f) for f in data.get("failed_centers", [])]
        if data.get("clusters") is not None:
            values["clusters"] = ClusterCounts(**data["clusters"])
        return cls(**values)
