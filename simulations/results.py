"""The comparison's outputs: results.csv (one row per cell), results.md (mean +- std per method
and budget, then the paired comparisons of simulations/science/paired.py), results.png (mIoU and
NormDEL against R, one line per method, error bars) and paired.png (the paired differences)."""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from feddel.common.io import atomic_write_bytes, atomic_write_text, write_csv
from feddel.simulations.science.paired import paired_markdown, paired_plot, standard_comparisons

RESULT_COLUMNS = ("method", "budget", "R", "seed", "mIoU", "DEL", "NormDEL", "wall_s", "cpu_s")
# what the cell's federated pre-training moved, both ways (GB; the warm-up not included)
TRAFFIC_COLUMN = "pretrain_gb"
QUALITY_COLUMNS = (
    "quality_disruptive_rate",
    "quality_distinct_videos_per_selected",
    "quality_mode_coverage",
)
MEASURES = ("R", "mIoU", "DEL", "NormDEL")
# how a cell was made: the encoder its curation embedded with (warmup, random, or truth for a
# control), how it was pre-trained (federated, or the fast exact path), and from which commit
# (the run folder's settings.json holds every setting)
PROVENANCE_COLUMNS = ("curation_encoder", "pretrain_engine", "commit")

Row = dict[str, Any]


class Group(NamedTuple):
    method: str
    budget: float
    seeds: int
    mean: dict[str, float]
    std: dict[str, float]


def group_rows(rows: Sequence[Row]) -> list[Group]:
    """Mean and sample std (0 with one seed) of each measure per (method, budget), in order."""
    cells: dict[tuple[str, float], list[Row]] = defaultdict(list)
    for row in rows:
        cells[(row["method"], float(row["budget"]))].append(row)
    groups = []
    for (method, budget), members in cells.items():
        mean, std = {}, {}
        for key in (*MEASURES, *QUALITY_COLUMNS, TRAFFIC_COLUMN, "wall_s", "cpu_s"):
            values = [float(r[key]) for r in members if r.get(key) not in (None, "")]
            if values:
                mean[key] = float(np.mean(values))
                std[key] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        groups.append(Group(method, budget, len(members), mean, std))
    return groups


def write_results(rows: Sequence[Row], out: Path, title: str) -> list[Path]:
    """results.csv, results.md and results.png under `out`, and with two seeds or more the
    paired comparisons in results.md and paired.png; returns the paths written."""
    columns = (*RESULT_COLUMNS, *QUALITY_COLUMNS, TRAFFIC_COLUMN, *PROVENANCE_COLUMNS)
    csv_path = write_csv(
        out / "results.csv", columns, [[row.get(c, "") for c in columns] for row in rows]
    )
    groups = group_rows(rows)
    text = results_markdown(groups, title)
    comparisons = [p for p in standard_comparisons(rows) if p.n >= 2]
    paths = [csv_path]
    if comparisons:
        text += PAIRED_INTRO + paired_markdown(comparisons)
        plot = paired_plot(comparisons, f"{title}: paired differences")
        paths.append(atomic_write_bytes(out / "paired.png", plot))
    paths.append(atomic_write_text(out / "results.md", text))
    paths.append(atomic_write_bytes(out / "results.png", results_plot(groups, title)))
    return paths


PAIRED_INTRO = """
## Paired differences of mIoU

Within each seed, one cell's mIoU minus the other's (the same random init, head initialization
and batches); the mean over seeds and its 95% confidence interval from the paired t
distribution; * marks an interval that excludes 0. The first row is the primary comparison and
the oracle rows are the controls (docs/does-curation-pay.md).

"""


def results_markdown(groups: Sequence[Group], title: str) -> str:
    lines = [
        f"# {title}",
        "",
        "Mean +- sample std over seeds. R = selected / pool; mIoU of a light segmentation head "
        "on the pre-trained encoder (test-image-weighted over centers); DEL = mIoU x exp(-R), "
        "NormDEL = sigmoid(DEL) (spans only [0.5, 0.731]). `scratch` is the random-init encoder.",
        "",
        "| method | budget | seeds | R | mIoU | DEL | NormDEL | disruptive | distinct videos "
        "/ selected | pre-train GB | wall s | CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        cells = [_pm(g, key) for key in MEASURES]
        quality = [_pm(g, key, "{:.3f}") for key in QUALITY_COLUMNS[:2]]
        traffic = f"{g.mean[TRAFFIC_COLUMN]:.2f}" if TRAFFIC_COLUMN in g.mean else "-"
        wall, cpu = (f"{g.mean[key]:.0f}" if key in g.mean else "-" for key in ("wall_s", "cpu_s"))
        values = [g.method, f"{g.budget:g}", str(g.seeds), *cells, *quality, traffic, wall, cpu]
        values = " | ".join(values)
        lines.append(f"| {values} |")
    return "\n".join(lines) + "\n"


def _pm(group: Group, key: str, fmt: str = "{:.4f}") -> str:
    if key not in group.mean:
        return "-"
    return f"{fmt.format(group.mean[key])} +- {fmt.format(group.std[key])}"


def results_plot(groups: Sequence[Group], title: str) -> bytes:
    """PNG: mIoU and NormDEL against R with error bars (std over seeds), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    by_method: dict[str, list[Group]] = defaultdict(list)
    for group in groups:
        by_method[group.method].append(group)
    for method, members in by_method.items():
        members.sort(key=lambda g: g.mean["R"])
        for axis, key in zip(axes, ("mIoU", "NormDEL"), strict=True):
            axis.errorbar(
                [g.mean["R"] for g in members],
                [g.mean[key] for g in members],
                xerr=[g.std["R"] for g in members],
                yerr=[g.std[key] for g in members],
                marker="o",
                capsize=3,
                label=method,
            )
    for axis, key in zip(axes, ("mIoU", "NormDEL"), strict=True):
        axis.set_xlabel("R (retained fraction of the pool)")
        axis.set_ylabel(key)
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
