"""From a source's frames to the federation's 64-px frames: views, tiles, and defects.

A single image becomes a short series of *views* (small shifts, zooms, rotations and gammas),
which look to an encoder as adjacent slices or repeated acquisitions do: near-duplicates. A large
slide or field becomes *tiles* (separate regions, separate content). Defects are what ruins a
real frame: a blank frame (nothing acquired), a blurred one (motion, defocus), a saturated one
(gain or window far too high: most of what shows is clipped white) and, for ultrasound, no
contact (the probe in the air: the sector holds only dark noise and reverberation bands, the
annotations stay).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from feddel.common.data.decode import resize_square

DEFECTS: tuple[str, ...] = ("blank", "blur", "saturated", "no-contact")
VIEW_CROP = (0.80, 0.92)  # fraction of the side a view keeps
TILE_CROP = (0.3, 0.45)  # fraction of the side a tile keeps
_MAX_ROTATION = 3.0  # degrees
_GAMMA = (0.9, 1.1)  # exposure changes as a gamma: nothing a clean view shows is clipped


def view(
    frame: np.ndarray, size: int, rng: np.random.Generator, crop: tuple[float, float]
) -> np.ndarray:
    """A random crop of `frame` (side fraction drawn from `crop`), slightly rotated and
    re-exposed (a gamma) for views, not for tiles, resized to (size, size[, 3]) uint8."""
    tile = crop[1] < VIEW_CROP[0]
    image = Image.fromarray(frame)
    if not tile:
        image = image.rotate(
            float(rng.uniform(-_MAX_ROTATION, _MAX_ROTATION)), Image.Resampling.BILINEAR
        )
    width, height = image.size
    side = float(rng.uniform(*crop))
    w, h = max(8, round(width * side)), max(8, round(height * side))
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    pixels = np.asarray(image.crop((left, top, left + w, top + h)))
    if not tile:
        gamma = float(rng.uniform(*_GAMMA))
        pixels = np.rint(255.0 * (pixels / 255.0) ** gamma).astype(np.uint8)
    return resize_square(pixels, size, Image.Resampling.BILINEAR)


def fit(frame: np.ndarray, size: int) -> np.ndarray:
    """A frame of a real sequence (a slice, a cine frame) as it is, resized to size x size."""
    return resize_square(frame, size, Image.Resampling.BILINEAR)


def apply_defect(frame: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """`frame` (uint8, grey or RGB) ruined by defect `kind` (one of DEFECTS)."""
    pixels = frame.astype(np.float32)
    if kind == "blank":
        background = np.percentile(pixels, 2, axis=(0, 1))
        out = np.broadcast_to(background, pixels.shape)
    elif kind == "blur":
        sigma = float(rng.uniform(1.8, 2.6)) * frame.shape[0] / 64
        out = ndimage.gaussian_filter(pixels, (sigma, sigma, 0)[: frame.ndim])
    elif kind == "saturated":  # 60-80% of what shows (luminance > 10) clipped white
        grey = pixels if pixels.ndim == 2 else pixels.mean(axis=2)
        shown = grey[grey > 10.0]
        knee = np.percentile(shown, rng.uniform(20, 40)) if shown.size else 1.0
        out = pixels * (255.0 / max(float(knee), 1.0))
    elif kind == "no-contact":
        out = _no_contact(pixels, rng)
    else:
        raise ValueError(f"unknown defect {kind!r}; one of {DEFECTS}")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _no_contact(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The sector (the largest bright region, holes filled) replaced by dark noise and a few
    horizontal reverberation bands that fade with depth; text and graphics outside it stay."""
    grey = pixels if pixels.ndim == 2 else pixels.mean(axis=2)
    smooth = ndimage.gaussian_filter(grey, 2.0)
    labels, count = ndimage.label(smooth > 12.0)
    if count == 0:
        return np.zeros_like(pixels)
    sizes = ndimage.sum_labels(np.ones_like(grey), labels, range(1, count + 1))
    sector = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    rows = np.flatnonzero(sector.any(axis=1))
    depth = (np.arange(grey.shape[0]) - rows[0]) / max(1, rows[-1] - rows[0])
    bands = 60.0 * np.exp(-4.0 * depth) * (np.cos(2 * np.pi * depth * 6) > 0.6)
    dark = np.abs(rng.normal(6.0, 4.0, grey.shape)) + bands[:, None]
    out = pixels.copy()
    if pixels.ndim == 3:
        out[sector] = dark[sector][:, None]
    else:
        out[sector] = dark[sector]
    return out
