"""What the coordinator writes after a round: summary.json (aggregates only).

Everything here comes from the replies of the round, never from a center's files, so the
same summary is written whether the centers are simulated or real hospitals.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from feddel.common.io import write_json, write_npy
from feddel.common.reports.summary import CenterLine, ClusterCounts, FailedCenter, RoundSummary
from feddel.server.curation.round import RoundResult
from feddel.server.report_html import write_coordinator_report

SUMMARY_FILE = "summary.json"
CENTROIDS_FILE = "centroids.npy"  # the round's global centroids (means of >= min-count samples)
MEAN_IMAGE_FILE = "mean_image.npy"  # optidel: the noisy federated image sum / count


def _with_total(by_phase: dict[str, int]) -> dict[str, int]:
    return {**by_phase, "total": sum(by_phase.values())}


def round_summary(result: RoundResult) -> RoundSummary:
    """The round's aggregates as a RoundSummary (per center, per cluster, traffic, warnings)."""
    config = result.config
    traffic = result.broadcaster.traffic
    return RoundSummary(
        method=config.method,
        budget=config.budget,
        total_samples=result.total_samples,
        selected=result.total_selected,
        k=len(result.centers),
        kmeans_rounds=len(result.inertia_history),
        inertia=result.inertia_history[-1] if result.inertia_history else 0.0,
        inertia_history=result.inertia_history,
        tau=result.tau,
        eta=result.eta,
        bytes_up=_with_total(traffic.up),
        bytes_down=_with_total(traffic.down),
        phase_seconds=traffic.seconds,
        wall_s=round(result.wall_s, 3),
        failed_centers=[
            FailedCenter(f.center, f.phase, f.reason) for f in result.broadcaster.failures
        ],
        per_center={
            name: center_line(
                inv, result.selected[name].selected, center_status(inv.samples, config.min_count)
            )
            for name, inv in sorted(result.inventories.items())
        },
        clusters=ClusterCounts(
            result.candidates.tolist(), result.quotas.tolist(), result.selected_per_cluster.tolist()
        ),
        v_information={
            name: dataclasses.asdict(estimate) for name, estimate in result.v_information.items()
        },
        synthesized=synthesized_summary(result) if config.selection_method.synthesizes else None,
        warnings=round_warnings(result),
        config=config.to_run_config(),
        privacy=result.privacy.summary(),
    )


def synthesized_summary(result: RoundResult) -> dict[str, Any]:
    """optidel: how many mosaics each center made (the mosaics stay at the centers)."""
    per_center = {
        name: {"mosaics": reply.mosaics, "patches_proposed": reply.patches_proposed,
               "sources_used": reply.sources_used, "unreadable": reply.unreadable}
        for name, reply in sorted(result.synthesized.items())
    }  # fmt: skip
    total = sum(reply.mosaics for reply in result.synthesized.values())
    return {"mosaics": total, "per_center": per_center}


CENTER_FIELDS = ("files", "samples", "unreadable", "duplicate_files", "disruptive")


def center_line(counts: Any, selected: int, status: str | None = None) -> CenterLine:
    """One center's line of `per_center`, from anything carrying the CENTER_FIELDS counts (an
    InventoryReply at the coordinator, a PoolCounts in the centralized reference)."""
    counted = {field: int(getattr(counts, field)) for field in CENTER_FIELDS}
    return CenterLine(**counted, selected=selected, status=status)


def center_status(samples: int, min_count: int) -> str:
    """A center's line in `per_center`: "empty" without a usable image (it takes part with
    zeros); "small" under min-count samples (it proposes no local centroid and no image sum,
    and reaches the coordinator only inside the secure sums); else "ok"."""
    if samples == 0:
        return "empty"
    return "small" if samples < min_count else "ok"


def round_warnings(result: RoundResult) -> list[str]:
    """What a user must know to trust the numbers: centers with too little data to weigh in,
    and a budget the round could not fill."""
    config = result.config
    warnings = []
    by_status: dict[str, list[str]] = {"empty": [], "small": []}
    for name, inventory in sorted(result.inventories.items()):
        status = center_status(inventory.samples, config.min_count)
        if status in by_status:
            by_status[status].append(f"{name} ({inventory.samples} of {inventory.files} files)")
    if by_status["empty"]:
        warnings.append(
            f"{len(by_status['empty'])} center(s) have no usable image and took part with "
            f"zeros: {', '.join(by_status['empty'])}; run `feddel-center check` there"
        )
    if by_status["small"]:
        warnings.append(
            f"{len(by_status['small'])} center(s) hold fewer than min-count={config.min_count} "
            f"samples and add to the secure sums only (no local centroids, no mean image): "
            f"{', '.join(by_status['small'])}"
        )
    if reduced := k_reduced_warning(config.k, len(result.centers)):
        warnings.append(reduced)
    budget = math.ceil(config.budget * result.total_samples)
    candidates = int(result.candidates.sum())
    plans = config.selection_method.plans_by_histograms
    if plans and candidates < budget:
        warnings.append(
            f"selected {result.total_selected} of a budget of {budget}: only {candidates} "
            "candidates remain across the federation after outliers and near-duplicates are "
            "left out; lower eps or raise eta, or add data"
        )
    if plans and result.total_selected < min(budget, candidates):
        warnings.append(
            f"selected {result.total_selected} of the {min(budget, candidates)} the plan asked "
            "for: each center rounds its share of a cluster's boundary bin to whole samples "
            "(this loses many when centers hold only a few samples per cluster), and a center "
            "that failed after scoring took its share with it"
        )
    return warnings


def k_reduced_warning(asked: int, used: int) -> str | None:
    """A warning when k-means ran with fewer clusters than asked for, else None: the selection
    then spreads its budget over fewer modes than the user planned."""
    if used >= asked:
        return None
    return (
        f"k={asked} was reduced to {used}: the pool cannot fill more clusters (a federated "
        f"round keeps only clusters of at least min-count members, merging smaller ones into "
        f"their neighbours); ask for k <= {used}, or add data"
    )


def write_round(result: RoundResult, out_dir: str | Path) -> RoundSummary:
    """Write summary.json and report.html (plots under plots/) for a finished round."""
    summary = round_summary(result)
    write_json(Path(out_dir) / SUMMARY_FILE, summary.to_json())
    write_npy(Path(out_dir) / CENTROIDS_FILE, result.centers)
    if result.mean_image is not None:
        write_npy(Path(out_dir) / MEAN_IMAGE_FILE, result.mean_image)
    write_coordinator_report(summary.to_json(), Path(out_dir))
    return summary
