"""Selection manifests: which of a center's samples a round selected (written atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from feddel.common.io import read_csv, write_csv

MANIFEST_COLUMNS = ("center", "file", "sample_id", "cluster", "score")


def manifest_rows(
    center: str,
    files: list[str],
    sample_ids: list[str],
    labels: np.ndarray,
    scores: np.ndarray,
    selected: np.ndarray,
) -> list[tuple[str, str, str, int, float]]:
    """One row per selected sample, in the center's scan order; score = cluster PVI in bits."""
    return [
        (center, files[i], sample_ids[i], int(labels[i]), round(float(scores[i]), 6))
        for i in np.flatnonzero(selected)
    ]


def manifest_name(run: str, round_: int) -> str:
    return f"selection-{run}-{round_}.csv"


def write_manifest(path: str | Path, rows: list[tuple[str, str, str, int, float]]) -> Path:
    return write_csv(path, MANIFEST_COLUMNS, rows)


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    return read_csv(path)
