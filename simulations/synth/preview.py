"""A contact sheet of a generated federation, for a person to check what the data looks like:
one labeled row per semantic mode (clean frames), polyp masks outlined, and one row per
disruptive kind, examples drawn from different videos and centers."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from feddel.common.io import atomic_write_bytes, read_csv
from feddel.simulations.synth.disrupt import DISRUPTIONS
from feddel.simulations.synth.modes import MODES
from feddel.simulations.synth.plan import mask_file

EXAMPLES = 6
MIN_TILE = 96
_LABEL_WIDTH = 190
_GAP = 4
_OUTLINE = np.array([40, 255, 90], dtype=np.uint8)


def write_preview(root: Path, centers: list[str], size: int, seed: int) -> Path:
    """Write `root/preview.png` from the files of `centers` already under `root`."""
    rows = [(root / name, row) for name in centers for row in read_csv(root / name / "truth.csv")]
    usable = [(folder, r) for folder, r in rows if r["corrupt"] == "0" and not r["duplicate_of"]]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    sheet: list[tuple[str, list[np.ndarray]]] = []
    for mode in MODES:
        picked = _pick(
            [(f, r) for f, r in usable if r["mode"] == mode and not r["disruptive"]], rng
        )
        sheet.append((f"mode: {mode}", [_load(f / r["file"]) for f, r in picked]))
        if mode == "polyp":
            sheet.append(("polyp + mask outline", [_outlined(f, r["file"]) for f, r in picked]))
    for kind in DISRUPTIONS:
        picked = _pick([(f, r) for f, r in usable if r["disruptive"] == kind], rng)
        sheet.append((f"disruptive: {kind}", [_load(f / r["file"]) for f, r in picked]))
    path = root / "preview.png"
    atomic_write_bytes(path, _compose(sheet, size))
    return path


def _pick(
    candidates: list[tuple[Path, dict[str, str]]], rng: np.random.Generator
) -> list[tuple[Path, dict[str, str]]]:
    """Up to EXAMPLES rows from distinct videos, preferring distinct centers."""
    order = [candidates[i] for i in rng.permutation(len(candidates))]
    picked: list[tuple[Path, dict[str, str]]] = []
    for distinct_centers in (True, False):
        for folder, row in order:
            if len(picked) == EXAMPLES:
                return picked
            if any(row["video"] == r["video"] for _, r in picked):
                continue
            if distinct_centers and any(folder == f for f, _ in picked):
                continue
            picked.append((folder, row))
    return picked


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _outlined(folder: Path, file: str) -> np.ndarray:
    """The frame with its mask's boundary pixels painted green."""
    pixels = _load(folder / file).copy()
    with Image.open(folder / mask_file(file)) as image:
        mask = np.asarray(image) > 127
    padded = np.pad(mask, 1, mode="edge")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    pixels[mask & ~interior] = _OUTLINE
    return pixels


def _compose(sheet: list[tuple[str, list[np.ndarray]]], size: int) -> bytes:
    factor = math.ceil(MIN_TILE / size)
    tile = size * factor
    width = _LABEL_WIDTH + EXAMPLES * (tile + _GAP)
    height = len(sheet) * (tile + _GAP) + _GAP
    canvas = Image.new("RGB", (width, height), (24, 24, 28))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    for r, (label, images) in enumerate(sheet):
        top = _GAP + r * (tile + _GAP)
        draw.text((8, top + tile // 2 - 8), label, fill=(235, 235, 235), font=font)
        if not images:
            draw.text((_LABEL_WIDTH, top + tile // 2 - 8), "(none)", fill=(160, 160, 160))
        for c, pixels in enumerate(images):
            big = Image.fromarray(pixels).resize((tile, tile), Image.Resampling.NEAREST)
            canvas.paste(big, (_LABEL_WIDTH + c * (tile + _GAP), top))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=15)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()
