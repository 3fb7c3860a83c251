"""Procedural building blocks: smooth value noise and soft thresholds, all vectorized.

Scenes are continuous functions of scene coordinates, so a camera can look at them from any pose
and the frames of one video stay consistent without resampling a pixel canvas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """0 below edge0, 1 above edge1, a cubic ramp between (edge0 > edge1 flips it)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def value_noise(grid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Periodic lattice noise: grid (g, g) of values (g a power of two), x and y (h, w) in
    lattice units -> (h, w)."""
    g = grid.shape[0]
    wrap = g - 1
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = x - x0
    fy = y - y0
    sx = fx * fx * (3.0 - 2.0 * fx)
    sy = fy * fy * (3.0 - 2.0 * fy)
    i0 = x0.astype(np.intp) & wrap
    j0 = (y0.astype(np.intp) & wrap) * g
    i1 = (i0 + 1) & wrap
    j1 = (j0 + g) & (g * g - 1)
    flat = grid.ravel()
    a = flat.take(j0 + i0)
    top = a + (flat.take(j0 + i1) - a) * sx
    c = flat.take(j1 + i0)
    bottom = c + (flat.take(j1 + i1) - c) * sx
    return top + (bottom - top) * sy


@dataclass(frozen=True)
class Fbm:
    """Fractal noise in [0, 1]: octaves of `value_noise`, each with its own lattice.

    `frequency` is in cycles per scene unit (a frame at zoom 1 is one unit wide).
    """

    grids: tuple[np.ndarray, ...]
    frequency: float

    @classmethod
    def sample(cls, rng: np.random.Generator, frequency: float, octaves: int = 3) -> Fbm:
        grids = tuple(rng.random((16, 16)).astype(np.float32) for _ in range(octaves))
        return cls(grids=grids, frequency=frequency)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        total = np.zeros_like(x)
        norm = 0.0
        for octave, grid in enumerate(self.grids):
            f = self.frequency * 2.0**octave
            amp = 0.5**octave
            total += amp * value_noise(grid, x * f, y * f)
            norm += amp
        return total / norm
