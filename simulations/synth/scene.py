"""A video's scene (mucosa + one semantic mode) and the camera that films it.

Coordinates: a frame at zoom 1 spans one scene unit, (u, v) in [-0.5, 0.5] (u right, v down).
A pose maps frame coordinates to scene coordinates (shift, zoom, rotation), so the frames of one
video see the same procedural scene from slightly different poses: near-duplicates, not copies.
Colours are display values in [0, 1] (h, w, 3) float32 before the device develops them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from feddel.simulations.synth.modes import Geometry, Lesion, sample_lesion
from feddel.simulations.synth.noise import Fbm, smoothstep


class Pose(NamedTuple):
    """Camera pose: scene point under the frame centre, zoom (scene units per frame), rotation."""

    cx: float
    cy: float
    zoom: float
    angle: float


class Frame(NamedTuple):
    """A rendered frame: rgb (h, w, 3) float32 display values; mask (h, w) bool lesion footprint."""

    rgb: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class Mucosa:
    """The tube wall: colour, lumen (dark far end), folds around it, texture, vessels, glints."""

    color: np.ndarray  # (3,)
    lumen: tuple[float, float]
    lumen_radius: float
    falloff: float  # distance from the lumen over which the wall brightens (closer to the scope)
    ambient: float
    fold_freq: float
    fold_phase: float
    fold_amp: float
    wobble: Fbm
    texture: Fbm
    pits: Fbm  # pixel-scale granularity of the mucosal surface: what motion blur destroys
    vessels: Fbm
    vessel_width: float
    vessel_strength: float
    glints: Fbm
    arcs: Fbm  # where folds show: haustral folds are partial arcs, not full rings


@dataclass(frozen=True)
class Scene:
    mode: str
    mucosa: Mucosa
    lesion: Lesion | None


def sample_scene(rng: np.random.Generator, mode: str) -> Scene:
    """Draw a fresh scene of `mode` (one of MODES); lesions sit near the scene origin."""
    mucosa = _sample_mucosa(rng)
    return Scene(mode=mode, mucosa=mucosa, lesion=sample_lesion(rng, mode, mucosa.lumen))


def sample_path(rng: np.random.Generator, frames: int) -> list[Pose]:
    """Small, smooth camera motion: a drift in shift, zoom and rotation plus per-frame jitter."""
    start = Pose(
        cx=rng.uniform(-0.05, 0.05),
        cy=rng.uniform(-0.05, 0.05),
        zoom=rng.uniform(0.9, 1.1),
        angle=rng.uniform(0.0, 2.0 * np.pi),
    )
    vx, vy = rng.normal(0.0, 0.01, size=2)
    vzoom = rng.normal(0.0, 0.01)
    vangle = rng.normal(0.0, 0.03)
    jitter = rng.normal(0.0, 0.004, size=(frames, 2))
    return [
        Pose(
            cx=start.cx + t * vx + jitter[t, 0],
            cy=start.cy + t * vy + jitter[t, 1],
            zoom=start.zoom * (1.0 + t * vzoom),
            angle=start.angle + t * vangle,
        )
        for t in range(frames)
    ]


def frame_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame coordinates (u, v), each (size, size) float32 in [-0.5, 0.5], pixel centres."""
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size - 0.5).astype(np.float32)
    return np.meshgrid(axis, axis)


def render(scene: Scene, pose: Pose, size: int, t: int) -> Frame:
    """Render frame number `t` of a video of `scene` seen from `pose` at size x size pixels."""
    u, v = frame_grid(size)
    cos, sin = np.float32(np.cos(pose.angle)), np.float32(np.sin(pose.angle))
    zoom = np.float32(pose.zoom)
    x = np.float32(pose.cx) + zoom * (cos * u - sin * v)
    y = np.float32(pose.cy) + zoom * (sin * u + cos * v)
    rgb, illum = _render_mucosa(scene.mucosa, x, y)
    geo = Geometry(x=x, y=y, u=u, v=v, illum=illum, color=scene.mucosa.color, t=t)
    mask = np.zeros((size, size), dtype=bool)
    if scene.lesion is not None:
        rgb, mask = scene.lesion.paint(rgb, geo)
    return Frame(rgb=rgb, mask=mask)


def _sample_mucosa(rng: np.random.Generator) -> Mucosa:
    color = np.array(
        [rng.uniform(0.80, 0.95), rng.uniform(0.36, 0.52), rng.uniform(0.30, 0.44)],
        dtype=np.float32,
    )
    if rng.random() < 0.15:  # looking at the wall: the lumen is out of view
        radius, angle = rng.uniform(0.75, 0.95), rng.uniform(0.0, 2.0 * np.pi)
    else:
        radius, angle = rng.uniform(0.0, 0.4), rng.uniform(0.0, 2.0 * np.pi)
    return Mucosa(
        color=color,
        lumen=(float(radius * np.cos(angle)), float(radius * np.sin(angle))),
        lumen_radius=rng.uniform(0.08, 0.2),
        falloff=rng.uniform(0.3, 0.55),
        ambient=rng.uniform(0.15, 0.3),
        fold_freq=rng.uniform(5.0, 9.0),
        fold_phase=rng.uniform(0.0, 2.0 * np.pi),
        fold_amp=rng.uniform(0.8, 1.5),
        wobble=Fbm.sample(rng, frequency=1.2, octaves=2),
        texture=Fbm.sample(rng, frequency=14.0, octaves=2),
        pits=Fbm.sample(rng, frequency=45.0, octaves=1),
        vessels=Fbm.sample(rng, frequency=3.0),
        vessel_width=rng.uniform(0.015, 0.03),
        vessel_strength=rng.uniform(0.3, 0.7),
        glints=Fbm.sample(rng, frequency=12.0, octaves=2),
        arcs=Fbm.sample(rng, frequency=2.5, octaves=2),
    )


def _render_mucosa(m: Mucosa, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scene coordinates (h, w) -> (rgb (h, w, 3), illumination (h, w))."""
    dx = x - np.float32(m.lumen[0])
    dy = y - np.float32(m.lumen[1])
    wobble = m.wobble(x, y)
    d = np.sqrt(dx * dx + dy * dy) * (0.7 + 0.6 * wobble)
    illum = m.ambient + (1.0 - m.ambient) * (1.0 - np.exp(-((d / m.falloff) ** 2)))
    illum *= 1.0 - 0.93 * smoothstep(m.lumen_radius, 0.45 * m.lumen_radius, d)
    phase = m.fold_freq * np.log(d + 0.05) + 4.0 * wobble + m.fold_phase
    crest = (0.5 + 0.5 * np.sin(phase)) ** 6
    shadow = (0.5 + 0.5 * np.sin(phase - 1.2)) ** 6
    fade = smoothstep(m.lumen_radius, 2.0 * m.lumen_radius, d) * np.exp(-d)
    fade *= smoothstep(0.35, 0.65, m.arcs(x, y))
    shade = 1.0 + m.fold_amp * fade * (0.3 * crest - 0.6 * shadow)
    texture = 0.8 + 0.24 * m.texture(x, y) + 0.3 * m.pits(x, y)
    level = (illum * shade * texture).astype(np.float32)
    rgb = m.color * level[..., None]
    ridge = np.abs(m.vessels(x, y) - 0.5)
    vessel = m.vessel_strength * np.exp(-((ridge / m.vessel_width) ** 2))
    rgb *= 1.0 - vessel[..., None] * np.array([0.2, 0.55, 0.5], dtype=np.float32)
    glint = smoothstep(0.7, 0.85, m.glints(x, y)) * smoothstep(0.3, 0.8, crest) * fade * illum
    rgb += 0.9 * glint[..., None]
    return rgb.astype(np.float32), illum.astype(np.float32)
