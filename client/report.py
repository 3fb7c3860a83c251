"""A center's private `report.html`: what the round kept and dropped, with thumbnails.

It reads only the center's own state (pool, scores, manifest) and images, and it is written into
the center's state directory; nothing here is sent anywhere. Every sample falls in exactly one
category, decided in this order:

    selected            in the round's manifest
    disruptive: <why>   flagged by the quality metrics (blur, dark, ...)
    outlier             too far from its cluster's centroid (eps)
    near-duplicate      a harder near-copy was kept (eta; within the center's pool, or
                        within a cluster in pools past DEDUP_POOL_LIMIT)
    not chosen          everything else (a candidate the plan did not pick)

For the baselines (random, full, meddel) some categories are empty, or the flags were computed
but did not decide the choice; the counts still say what the center's scores found.

    <state>/report.html                          the latest round (run and round in its title)
    <state>/report/<run>-<round>/<category>.png  one contact sheet per non-empty category
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from feddel.client.state import CenterState
from feddel.common.data.decode import UnreadableImage, load_image
from feddel.common.data.manifest import read_manifest
from feddel.common.data.scan import Sample
from feddel.common.errors import DataError
from feddel.common.reports import htmlreport as hr

log = logging.getLogger(__name__)

SHEET_MAX = 48  # thumbnails per contact sheet
THUMB = 64  # thumbnail side in pixels
COLUMNS = 8  # thumbnails per sheet row
_LABEL_H = 12  # pixels under each thumbnail for its label
BASE_CATEGORIES = ("selected", "not chosen", "near-duplicate", "outlier")
PRIVACY_NOTE = "This report stays at the center; it is never sent to the coordinator."


class Categorized(NamedTuple):
    """Per-sample category and thumbnail label; both (n,) lists in the pool's scan order."""

    category: list[str]
    label: list[str]


def categorize(
    selected: np.ndarray,
    disruptive: np.ndarray,
    disruption: list[str],
    outlier: np.ndarray,
    duplicate: np.ndarray,
    labels: np.ndarray,
) -> Categorized:
    """One category per sample (order in the module docstring); all inputs are (n,)."""
    category, label = [], []
    for i in range(len(selected)):
        if selected[i]:
            name = "selected"
        elif disruptive[i]:
            name = f"disruptive: {disruption[i] or 'unknown'}"
        elif outlier[i]:
            name = "outlier"
        elif duplicate[i]:
            name = "near-duplicate"
        else:
            name = "not chosen"
        category.append(name)
        label.append((disruption[i] or "disruptive") if disruptive[i] else f"c{int(labels[i])}")
    return Categorized(category, label)


def write_center_report(state_dir: Path, data_root: Path, run: str, round_: int) -> Path:
    """Write `<state_dir>/report.html` for this round and its contact sheets; return its path."""
    state = CenterState(state_dir)
    pool = state.load_pool(run)
    scores = state.load_scores(run)
    n = len(pool.samples)
    if len(scores.labels) != n:
        raise DataError(
            f"run '{run}' at {state.path}: scores cover {len(scores.labels)} samples but the pool "
            f"has {n}; re-run the round from the inventory phase"
        )
    selected = _selected(state, run, round_, [s.sample_id for s in pool.samples])
    groups = categorize(
        selected, pool.disruptive, pool.disruption, scores.outlier, scores.duplicate, scores.labels
    )
    sheets = f"report/{run}-{round_}"
    by_category: dict[str, list[int]] = {name: [] for name in BASE_CATEGORIES}
    for i, name in enumerate(groups.category):
        by_category.setdefault(name, []).append(i)
    counts = [(name, len(ix), hr.pct(len(ix) / n) if n else "") for name, ix in by_category.items()]
    sections = [
        f'<p class="note">{hr.esc(PRIVACY_NOTE)}</p>',
        hr.section("Categories", hr.table(("category", "samples", "share"), counts)),
    ]
    for name, index in by_category.items():
        shown = _spread(index, SHEET_MAX)
        labels = [groups.label[i] for i in shown]
        sheet = _contact_sheet(Path(data_root), [pool.samples[i] for i in shown], labels)
        if sheet is None:
            why = "No images in this category." if not index else "No image could be read."
            body = f'<p class="muted">{why}</p>'
        else:
            src = f"{sheets}/{_slug(name)}.png"
            hr.save_image(sheet.image, state.path / src)
            shown_text = f"{sheet.count} of {len(index)} shown, evenly spaced in file order; "
            body = (
                f'<p class="muted">{shown_text}labels give the cluster or the disruption.</p>'
                + hr.image(src, name)
            )
        sections.append(hr.section(f"{name} ({len(index)})", body))
    title = f"FedDEL center report: {pool.name}"
    subtitle = f"run {run}, round {round_}, {n} samples, {int(selected.sum())} selected"
    path = hr.write_page(state.path / "report.html", hr.page(title, sections, subtitle))
    log.info("center report written to %s", path)
    return path


def _selected(state: CenterState, run: str, round_: int, sample_ids: list[str]) -> np.ndarray:
    """(n,) bool: samples the round's manifest lists."""
    path = state.manifest_path(run, round_)
    if not path.is_file():
        raise DataError(
            f"no manifest for run '{run}' round {round_} at {path}; the select phase of that "
            "round has not finished at this center"
        )
    chosen = {row["sample_id"] for row in read_manifest(path)}
    unknown = chosen.difference(sample_ids)
    if unknown:
        raise DataError(
            f"manifest {path} lists {len(unknown)} sample(s) that are not in run '{run}''s pool; "
            "the state directory mixes runs: re-run the round"
        )
    return np.array([sample_id in chosen for sample_id in sample_ids], dtype=bool)


def _spread(index: list[int], limit: int) -> list[int]:
    """At most `limit` items of `index`, evenly spaced (all of them when there are fewer)."""
    if len(index) <= limit:
        return index
    picks = np.linspace(0, len(index) - 1, limit).round().astype(int)
    return [index[p] for p in picks]


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "category"


class _Sheet(NamedTuple):
    image: Image.Image
    count: int  # thumbnails that could be read


def _contact_sheet(root: Path, samples: list[Sample], labels: list[str]) -> _Sheet | None:
    """A grid of THUMB-pixel thumbnails with a small label under each; None if none is readable."""
    tiles = []
    for sample, label in zip(samples, labels, strict=True):
        try:
            thumb = load_image(root / sample.file, THUMB, frame=sample.frame)
            tiles.append((Image.fromarray(thumb), label))
        except UnreadableImage as error:
            log.warning("thumbnail skipped: %s", error)
    if not tiles:
        return None
    cell_h = THUMB + _LABEL_H
    columns = min(COLUMNS, len(tiles))
    rows = math.ceil(len(tiles) / COLUMNS)
    sheet = Image.new("RGB", (columns * THUMB, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (tile, label) in enumerate(tiles):
        x, y = (i % COLUMNS) * THUMB, (i // COLUMNS) * cell_h
        sheet.paste(tile, (x, y))
        draw.text((x + 2, y + THUMB), label[:12], fill="black")
    return _Sheet(sheet, len(tiles))
