"""Small image filters as weighted sums of shifted copies (vectorized over pixels)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def shift_sum(image: np.ndarray, taps: Sequence[tuple[int, int, float]]) -> np.ndarray:
    """(h, w, c) image -> (h, w, c): sum of weight x image shifted by (dy, dx), edges repeated."""
    h, w = image.shape[:2]
    pad = max(max(abs(dy), abs(dx)) for dy, dx, _ in taps)
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.zeros_like(image)
    for dy, dx, weight in taps:
        out += weight * padded[pad + dy : pad + dy + h, pad + dx : pad + dx + w]
    return out


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (h, w, c) float image; sigma in pixels (< 0.2: unchanged)."""
    if sigma < 0.2:
        return image
    radius = max(1, int(np.ceil(3.0 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    rows = shift_sum(image, [(0, int(o), float(k)) for o, k in zip(offsets, weights, strict=True)])
    return shift_sum(rows, [(int(o), 0, float(k)) for o, k in zip(offsets, weights, strict=True)])


def motion_blur(image: np.ndarray, length: float, angle: float) -> np.ndarray:
    """Average of (h, w, c) `image` along a line of `length` pixels at `angle` radians."""
    steps = max(3, round(length))
    ts = np.linspace(-0.5, 0.5, steps) * length
    taps = [(round(t * np.sin(angle)), round(t * np.cos(angle)), 1.0 / steps) for t in ts.tolist()]
    return shift_sum(image, taps)
