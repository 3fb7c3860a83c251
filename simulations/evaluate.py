"""Ground-truth measures of a selection, for simulated federations that ship truth.csv.

Truth is read only here, after the round, to judge it; the curation itself never sees it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from feddel.common.curation.quality import QualityConfig
from feddel.common.curation.selection import random_selection
from feddel.common.data.manifest import row_frame
from feddel.common.data.pool import decode_pass
from feddel.common.data.scan import locator, scan_center
from feddel.common.errors import DataError
from feddel.common.io import read_csv
from feddel.common.reports.metrics import curation_quality, truth_flag
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


def flag_rates(
    centers: list[Path], size: int = 64, config: QualityConfig | None = None
) -> dict[str, dict[str, float]]:
    """The quality filter against truth, per modality (truth's `modality` column): samples,
    truly defective and flagged fractions, recall and false-positive rate.

    Each center flags its own pool exactly as in a round (scan, decode, per-center statistics);
    duplicates collapse into their first file as in the pool, corrupt files never enter it.
    """
    truth = load_truth(centers)
    if truth is None:
        raise DataError("flag rates need a truth.csv in every center folder")
    counts: dict[str, Counter[str]] = {}
    for folder in centers:
        rows = {row["file"]: row for row in truth[folder.name]}
        samples = scan_center(folder).samples
        flags = decode_pass(folder, samples, size, config or QualityConfig()).disruptive
        for sample, flagged in zip(samples, flags, strict=True):
            row = rows[sample.locator]
            bad = truth_flag(row["disruptive"])
            tally = counts.setdefault(row.get("modality") or "all", Counter())
            tally.update(samples=1, defective=bad, flagged=bool(flagged))
            tally.update(hits=bad and bool(flagged), false=(not bad) and bool(flagged))
    return {modality: _rates(tally) for modality, tally in sorted(counts.items())}


def _rates(tally: Counter[str]) -> dict[str, float]:
    clean = tally["samples"] - tally["defective"]
    return {
        "samples": tally["samples"],
        "truth_rate": tally["defective"] / tally["samples"],
        "flag_rate": tally["flagged"] / tally["samples"],
        "recall": tally["hits"] / tally["defective"] if tally["defective"] else 1.0,
        "false_positive_rate": tally["false"] / clean if clean else 0.0,
    }
