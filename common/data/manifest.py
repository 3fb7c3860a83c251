"""Selection manifests: which of a center's samples a round selected (written atomically)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from feddel.common.io import read_csv, write_csv

# frame: the frame of a multi-frame file (a NIfTI slice, a DICOM frame), empty for an image
MANIFEST_COLUMNS = ("center", "file", "sample_id", "cluster", "score", "frame")

ManifestRow = tuple[str, str, str, int, float, str]


def manifest_rows(
    center: str,
    files: list[str],
    sample_ids: list[str],
    labels: np.ndarray,
    scores: np.ndarray,
    selected: np.ndarray,
    frames: Sequence[int | None] | None = None,
) -> list[ManifestRow]:
    """One row per selected sample, in the center's scan order; score = cluster PVI in bits."""
    return [
        (
            center,
            files[i],
            sample_ids[i],
            int(labels[i]),
            round(float(scores[i]), 6),
            "" if frames is None or frames[i] is None else str(frames[i]),
        )
        for i in np.flatnonzero(selected)
    ]


def row_frame(row: Mapping[str, str]) -> int | None:
    """A manifest row's frame, None for a single image (and for manifests without the column)."""
    value = row.get("frame", "")
    return int(value) if value else None


def manifest_name(run: str, round_: int) -> str:
    return f"selection-{run}-{round_}.csv"


def write_manifest(path: str | Path, rows: list[ManifestRow]) -> Path:
    return write_csv(path, MANIFEST_COLUMNS, rows)


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    return read_csv(path)
