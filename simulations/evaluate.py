"""Ground-truth measures of a selection, for simulated federations that ship truth.csv.

Truth is read only here, after the round, to judge it; the curation itself never sees it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from feddel.common.curation.selection import random_selection
from feddel.common.data.manifest import row_frame
from feddel.common.data.scan import locator
from feddel.common.io import read_csv
from feddel.common.reports.metrics import curation_quality
from feddel.simulations.layout import load_truth


def selected_files(selection_csv: str | Path) -> dict[str, list[str]]:
    """Center name -> selected files (`file#frame` for a frame of a multi-frame file, as truth
    names it), from a RUN/selection.csv."""
    by_center: dict[str, list[str]] = {}
    for row in read_csv(selection_csv):
        by_center.setdefault(row["center"], []).append(locator(row["file"], row_frame(row)))
    return by_center


def truth_measures(
    centers: list[Path],
    selection: dict[str, list[str]],
    pool_ids: dict[str, tuple[list[str], list[str]]] | None,
    retention: float,
    seed: int,
) -> dict[str, Any] | None:
    """Quality of `selection` and, beside it, of a uniform random selection at the same R.

    pool_ids: center -> (sample ids, files) of its pool, for drawing the random baseline with
    the same per-sample hash the `random` method uses. None when the data has no truth.
    """
    truth = load_truth(centers)
    if truth is None:
        return None
    measures = {"selection": curation_quality(selection, truth)}
    if pool_ids is not None:
        baseline = {
            center: [files[i] for i in random_selection(ids, retention, seed).nonzero()[0]]
            for center, (ids, files) in pool_ids.items()
        }
        measures["random_baseline"] = curation_quality(baseline, truth)
    return measures
