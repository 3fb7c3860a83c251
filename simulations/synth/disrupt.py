"""Disruptive frames: what ruins an endoscopy frame for training, applied to a rendered scene.

Each kind changes the frame the way it happens in a scope, before the device develops it:
motion blur smears the scene along one direction, dark and overexposed change the light
(returned as an extra exposure gain/offset for `style.develop`), bubbles put many specular
circles on the lens, blank replaces the view with a near-uniform wash (scope against the wall,
or fluid on the lens).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from feddel.simulations.synth.filters import motion_blur
from feddel.simulations.synth.noise import smoothstep
from feddel.simulations.synth.scene import frame_grid

DISRUPTIONS: tuple[str, ...] = ("blur", "dark", "overexposed", "bubbles", "blank")


class Disrupted(NamedTuple):
    """rgb (h, w, 3) float; gain/offset for `develop`; visible_lesion False when wiped out."""

    rgb: np.ndarray
    gain: float
    offset: float
    visible_lesion: bool


def disrupt(rgb: np.ndarray, kind: str, rng: np.random.Generator) -> Disrupted:
    """Apply disruption `kind` (one of DISRUPTIONS) to an (h, w, 3) rendered frame."""
    size = rgb.shape[0]
    if kind == "blur":
        length = rng.uniform(0.12, 0.2) * size
        return Disrupted(motion_blur(rgb, length, rng.uniform(0, np.pi)), 1.0, 0.0, True)
    if kind == "dark":
        return Disrupted(rgb, float(rng.uniform(0.08, 0.2)), 0.0, True)
    if kind == "overexposed":
        return Disrupted(rgb, float(rng.uniform(2.2, 3.5)), float(rng.uniform(0.08, 0.2)), True)
    if kind == "bubbles":
        return Disrupted(_bubbles(rgb, rng), 1.0, 0.0, True)
    return Disrupted(_blank(rgb, rng), 1.0, 0.0, False)


def _bubbles(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Many fluid bubbles: a bright thin rim, a lens-like brightening, a white glint each."""
    u, v = frame_grid(rgb.shape[0])
    rim = np.zeros_like(u)
    glint = np.zeros_like(u)
    body = np.zeros_like(u)
    count = int(rng.integers(18, 45))
    radii = np.exp(rng.uniform(np.log(0.02), np.log(0.07), size=count))
    centers = rng.uniform(-0.55, 0.55, size=(count, 2))
    for (cx, cy), r in zip(centers, radii, strict=True):
        rho = np.hypot(u - cx, v - cy) / r
        rim = np.maximum(rim, np.exp(-(((rho - 0.9) / 0.1) ** 2)))
        body = np.maximum(body, smoothstep(1.0, 0.8, rho))
        spot = np.hypot(u - cx + 0.35 * r, v - cy + 0.35 * r) / r
        glint = np.maximum(glint, smoothstep(0.35, 0.2, spot))
    fluid = np.array([0.95, 0.92, 0.8], dtype=np.float32)
    out = rgb * (1.0 + 0.25 * body[..., None]) + 0.15 * body[..., None] * fluid
    out = out + 0.55 * rim[..., None] * fluid
    return out + 1.2 * glint[..., None]


def _blank(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A near-uniform frame: red-out (mucosa against the lens) or a fluid wash."""
    u, v = frame_grid(rgb.shape[0])
    if rng.random() < 0.5:
        base = np.median(rgb.reshape(-1, 3), axis=0) * rng.uniform(0.8, 1.1)
    else:
        base = np.array([0.92, 0.82, 0.68], dtype=np.float32) * rng.uniform(0.65, 0.95)
    gx, gy = rng.normal(0.0, 0.03, size=2)
    ramp = 1.0 + gx * u + gy * v
    return (base[None, None, :] * ramp[..., None]).astype(np.float32)
