"""Paired comparisons over seeds: the difference of two cells within each seed, its mean and a
95% confidence interval from the paired t distribution (n - 1 degrees of freedom).

Cells of one seed share their random init, their head's initialization and batches, and the
random draws of the federation, so the within-seed difference cancels what the seed alone
decides; only seeds that hold both cells count (none is dropped otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from feddel.common.curation.methods import FEDDEL, FULL, RANDOM
from feddel.simulations.pipeline import SCRATCH
from feddel.simulations.science.controls import CONTROLS

Row = dict[str, Any]
CONFIDENCE = 0.95
NEGATIVE_CONTROLS = CONTROLS[1:]
# fixed before any run (docs/does-curation-pay.md)
PRIMARY = ((FEDDEL.name, 0.05), (RANDOM.name, 0.05))
UNPAIRED = (SCRATCH, FULL.name)  # one cell per seed, whatever the budget
FULL_CELL, SCRATCH_CELL = (FULL.name, 1.0), (SCRATCH, 0.0)


@dataclass(frozen=True)
class Paired:
    """`first` minus `second`, each (method, budget), per seed and summarized."""

    first: tuple[str, float]
    second: tuple[str, float]
    seeds: tuple[int, ...]
    differences: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float:
        return float(np.mean(self.differences))

    @property
    def interval(self) -> tuple[float, float]:
        """The 95% paired-t interval; (nan, nan) with fewer than two seeds."""
        if self.n < 2:
            return math.nan, math.nan
        half = (
            stats.t.ppf(0.5 + CONFIDENCE / 2, self.n - 1)
            * np.std(self.differences, ddof=1)
            / math.sqrt(self.n)
        )
        return self.mean - half, self.mean + half

    @property
    def excludes_zero(self) -> bool:
        low, high = self.interval
        return bool(low > 0 or high < 0)

    @property
    def label(self) -> str:
        return f"{cell_label(*self.first)} - {cell_label(*self.second)}"


def cell_label(method: str, budget: float) -> str:
    return method if method in UNPAIRED else f"{method} {budget:.0%}"


def paired(rows: Sequence[Row], first: tuple[str, float], second: tuple[str, float],
           measure: str = "mIoU") -> Paired | None:  # fmt: skip
    """The paired difference of `measure`, or None when no seed holds both cells."""
    by_cell = {(r["method"], float(r["budget"]), int(r["seed"])): float(r[measure]) for r in rows}
    seeds = sorted(
        seed
        for (method, budget, seed) in by_cell
        if (method, budget) == first and (*second, seed) in by_cell
    )
    if not seeds:
        return None
    differences = tuple(by_cell[(*first, s)] - by_cell[(*second, s)] for s in seeds)
    return Paired(first, second, tuple(seeds), differences)


def standard_comparisons(rows: Sequence[Row]) -> list[Paired]:
    """The comparisons of docs/does-curation-pay.md, those the rows can make, in this order:
    the primary (feddel 5% - random 5%); the controls (oracle - each negative control, at each
    budget); every cell against random at its budget, against full and against scratch."""
    cells = sorted({(r["method"], float(r["budget"])) for r in rows}, key=lambda c: (c[1], c[0]))
    wanted: list[tuple[tuple[str, float], tuple[str, float]]] = [PRIMARY]
    for method, budget in cells:
        if method == "oracle":
            wanted += [((method, budget), (other, budget)) for other in NEGATIVE_CONTROLS]
    for method, budget in cells:
        if method in UNPAIRED:
            continue
        if method != RANDOM.name:
            wanted.append(((method, budget), (RANDOM.name, budget)))
        wanted += [((method, budget), FULL_CELL), ((method, budget), SCRATCH_CELL)]
    wanted.append((FULL_CELL, SCRATCH_CELL))
    found = (paired(rows, first, second) for first, second in dict.fromkeys(wanted))
    return [p for p in found if p is not None]


def paired_markdown(comparisons: Sequence[Paired]) -> str:
    """A table: comparison, seeds, mean difference, 95% CI, per-seed differences."""
    lines = [
        "| comparison | seeds | mean difference | 95% CI (paired t) | per seed |",
        "|---|---|---|---|---|",
    ]
    for p in comparisons:
        low, high = p.interval
        ci = "-" if p.n < 2 else f"[{low:+.4f}, {high:+.4f}]" + (" *" if p.excludes_zero else "")
        per_seed = ", ".join(f"{d:+.4f}" for d in p.differences)
        lines.append(f"| {p.label} | {p.n} | {p.mean:+.4f} | {ci} | {per_seed} |")
    return "\n".join(lines) + "\n"


def paired_plot(comparisons: Sequence[Paired], title: str) -> bytes:
    """PNG: each comparison's mean difference with its 95% CI and per-seed points."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = 1.0 + 0.32 * len(comparisons)
    figure, axis = plt.subplots(figsize=(8, height), constrained_layout=True)
    for y, p in enumerate(reversed(comparisons)):
        low, high = p.interval
        if p.n >= 2:
            axis.plot([low, high], [y, y], color="tab:blue", linewidth=2)
        axis.plot(p.differences, [y] * p.n, "o", color="tab:gray", markersize=3, alpha=0.7)
        axis.plot([p.mean], [y], "D", color="tab:blue")
    axis.axvline(0.0, color="black", linewidth=0.8)
    axis.set_yticks(range(len(comparisons)), [p.label for p in reversed(comparisons)])
    axis.set_xlabel("mIoU difference (mean, 95% paired-t CI, seeds as dots)")
    axis.set_title(title)
    axis.grid(axis="x", alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
