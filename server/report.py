"""What the coordinator writes after a round: summary.json (aggregates only).

Everything here comes from the replies of the round, never from a center's files, so the
same summary is written whether the centers are simulated or real hospitals.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from common.io import write_json, write_npy
from server.curation import RoundResult
from server.report_html import write_coordinator_report

SUMMARY_FILE = "summary.json"
CENTROIDS_FILE = "centroids.npy"  # the round's global centroids (means of >= min-count samples)
MEAN_IMAGE_FILE = "mean_image.npy"  # sum of images / count over centers with >= min-count


def _with_total(by_phase: dict[str, int]) -> dict[str, int]:
    return {**by_phase, "total": sum(by_phase.values())}


def round_summary(result: RoundResult) -> dict[str, Any]:
    """The round as JSON: the keys the CLI contract names, plus per-center and per-cluster."""
    config = result.config
    traffic = result.broadcaster.traffic
    total = result.total_samples
    selected = result.total_selected
    return {
        "method": config.method,
        "budget": config.budget,
        "centers": len(result.selected),
        "total_samples": total,
        "selected": selected,
        "retention": selected / total if total else 0.0,
        "k": len(result.centers),
        "kmeans_rounds": len(result.inertia_history),
        "inertia": result.inertia_history[-1] if result.inertia_history else 0.0,
        "inertia_history": result.inertia_history,
        "tau": result.tau,
        "eta": result.eta,
        "bytes_up": _with_total(traffic.up),
        "bytes_down": _with_total(traffic.down),
        "phase_seconds": traffic.seconds,
        "wall_s": round(result.wall_s, 3),
        "failed_centers": [
            {"center": f.center, "phase": f.phase, "reason": f.reason}
            for f in result.broadcaster.failures
        ],
        "per_center": {
            name: center_row(inv, result.selected[name].selected)
            for name, inv in sorted(result.inventories.items())
        },
        "clusters": {
            "candidates": result.candidates.tolist(),
            "quotas": result.quotas.tolist(),
            "selected": result.selected_per_cluster.tolist(),
        },
        "warnings": round_warnings(result),
        "config": config.to_run_config(),
    }


CENTER_FIELDS = ("files", "samples", "unreadable", "duplicate_files", "disruptive")


def center_row(counts: Any, selected: int) -> dict[str, int]:
    """One center's line of `per_center`, from anything carrying the CENTER_FIELDS counts (an
    InventoryReply at the coordinator, a PoolCounts in the centralized reference)."""
    return {**{field: int(getattr(counts, field)) for field in CENTER_FIELDS}, "selected": selected}


def round_warnings(result: RoundResult) -> list[str]:
    """What a user must know to trust the numbers: a budget the round could not fill."""
    config = result.config
    budget = math.ceil(config.budget * result.total_samples)
    if config.method != "feddel" or result.total_selected >= budget:
        return []
    return [
        f"selected {result.total_selected} of a budget of {budget}: only "
        f"{int(result.candidates.sum())} candidates are in clusters with at least "
        f"min-count={config.min_count} of them across the federation; lower k or min-count, "
        "or add data"
    ]


def write_round(result: RoundResult, out_dir: str | Path) -> dict[str, Any]:
    """Write summary.json and report.html (plots under plots/) for a finished round."""
    summary = round_summary(result)
    write_json(Path(out_dir) / SUMMARY_FILE, summary)
    write_npy(Path(out_dir) / CENTROIDS_FILE, result.centers)
    if result.mean_image is not None:
        write_npy(Path(out_dir) / MEAN_IMAGE_FILE, result.mean_image)
    write_coordinator_report(summary, Path(out_dir))
    return summary
