"""How good a curation is: NormDEL (docs/science.md section 1) and ground-truth / embedding
measures.

DEL = mIoU * exp(-alpha * R) and NormDEL = sigmoid(DEL), mIoU and R as fractions, alpha = 1.
Since DEL lies in [0, 1], NormDEL only spans [0.5, 0.731]: report both.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from feddel.common.errors import ConfigError, DataError

TRUTH_COLUMNS = ("file", "mode", "disruptive", "duplicate_of", "corrupt")
# optional groupings: frames of one video (synthetic endoscopy), slices of one series (DICOM,
# volumes, cine); each present column gives its distinct-per-selected measure
GROUP_COLUMNS = {"video": "distinct_videos_per_selected", "series": "distinct_series_per_selected"}
_FALSE_FLAGS = ("", "0", "false", "no", "none")


def del_score(miou: float, retention: float, alpha: float = 1.0) -> float:
    """DEL = mIoU * exp(-alpha * R); mIoU and R in [0, 1]."""
    for name, value in (("miou", miou), ("retention", retention)):
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name}={value!r} must be a fraction in [0, 1] (not a percentage)")
    if not math.isfinite(alpha) or alpha < 0:
        raise ConfigError(f"alpha={alpha!r} must be a finite number >= 0")
    return miou * math.exp(-alpha * retention)


def norm_del(miou: float, retention: float, alpha: float = 1.0) -> float:
    """NormDEL = 1 / (1 + exp(-DEL)), in [0.5, 0.731] for alpha >= 0."""
    return 1.0 / (1.0 + math.exp(-del_score(miou, retention, alpha)))


def curation_quality(
    selected_files_by_center: Mapping[str, Sequence[str]],
    truth_by_center: Mapping[str, list[dict[str, str]]],
) -> dict[str, Any]:
    """Judge a selection against simulation ground truth (TRUTH_COLUMNS and any of
    GROUP_COLUMNS, all strings).

    `disruptive` is true unless "", "0", "false", "no" or "none" (it may name the defect, e.g.
    "blur"); a duplicate file inherits it and its content from the root of its duplicate_of
    chain within its center. Rates are 0.0 when nothing is selected. The pool is every truth row.
    """
    pool: list[tuple[str, dict[str, str]]] = []
    chosen: list[tuple[str, dict[str, str]]] = []
    for center, rows in truth_by_center.items():
        by_file = {row["file"]: row for row in _check_rows(center, rows)}
        pool.extend((center, _resolved(by_file, f)) for f in by_file)
        picked = list(selected_files_by_center.get(center, ()))
        unknown = [f for f in picked if f not in by_file]
        if unknown:
            raise DataError(
                f"{len(unknown)} selected file(s) of center {center!r} are not in its truth, "
                f"e.g. {unknown[0]!r}; select from the same federation the truth describes"
            )
        chosen.extend((center, _resolved(by_file, f)) for f in picked)
    missing = sorted(set(selected_files_by_center) - set(truth_by_center))
    if missing:
        raise DataError(f"centers {missing} have selections but no truth")
    n = len(chosen)
    pool_modes = Counter(row["mode"] for _, row in pool)
    modes = Counter(row["mode"] for _, row in chosen)
    contents = {(center, row["content"]) for center, row in chosen}
    covered = len(set(modes) & set(pool_modes))
    measures: dict[str, Any] = {
        "selected": n,
        "disruptive_rate": _rate(sum(truth_flag(r["disruptive"]) for _, r in chosen), n),
        "pool_disruptive_rate": _rate(sum(truth_flag(r["disruptive"]) for _, r in pool), len(pool)),
    }
    for column, measure in GROUP_COLUMNS.items():
        if pool and all(column in row for _, row in pool):
            measures[measure] = _rate(len({(c, r[column]) for c, r in chosen}), n)
    return measures | {
        "mode_coverage": _rate(covered, len(pool_modes)),
        "modes_covered": covered,
        "modes_total": len(pool_modes),
        "modes_selected": dict(sorted(modes.items())),
        "mode_entropy": _entropy_bits(modes),
        "pool_mode_entropy": _entropy_bits(pool_modes),
        "corrupt_selected": sum(truth_flag(r["corrupt"]) for _, r in chosen),
        "duplicate_files_selected": n - len(contents),
    }


def _check_rows(center: str, rows: list[dict[str, str]]) -> list[dict[str, str]]:
    for i, row in enumerate(rows):
        absent = [c for c in TRUTH_COLUMNS if c not in row]
        if absent:
            raise DataError(f"truth row {i} of center {center!r} lacks column(s) {absent}")
    return rows


def _resolved(by_file: Mapping[str, dict[str, str]], file: str) -> dict[str, str]:
    """The truth of the original that `file` copies (following duplicate_of; a cycle or a
    dangling link stops the walk), with "content" naming that original."""
    root, seen = file, {file}
    while (source := by_file[root]["duplicate_of"]) and source in by_file and source not in seen:
        seen.add(source)
        root = source
    return by_file[root] | {"content": root}


def truth_flag(value: str) -> bool:
    """A truth cell as a yes/no: true unless "", "0", "false", "no" or "none"."""
    return value.strip().lower() not in _FALSE_FLAGS


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _entropy_bits(counts: Counter[str]) -> float:
    """Shannon entropy (bits) of a count distribution; 0.0 when empty."""
    total = sum(counts.values())
    return sum(-(c / total) * math.log2(c / total) for c in counts.values() if c) if total else 0.0
