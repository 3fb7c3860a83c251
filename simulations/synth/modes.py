"""The semantic modes painted onto the mucosa: polyp, ulcer, bleeding, instrument, diverticulum.

Each lesion is a frozen dataclass drawn once per video (`sample_lesion`) and painted on every
frame (`paint`), so it moves with the scene. Only polyps return a non-empty footprint mask.
The instrument is attached to the scope: it lives in frame coordinates and only slides in or out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from feddel.simulations.synth.noise import Fbm, smoothstep

MODES: tuple[str, ...] = ("normal", "polyp", "ulcer", "bleeding", "instrument", "diverticulum")


class Geometry(NamedTuple):
    """Per-pixel coordinates of one frame, all (h, w) float32: scene (x, y), frame (u, v),
    the mucosa's illumination; the mucosa colour (3,); the frame number t."""

    x: np.ndarray
    y: np.ndarray
    u: np.ndarray
    v: np.ndarray
    illum: np.ndarray
    color: np.ndarray
    t: int


class Lesion(Protocol):
    def paint(self, rgb: np.ndarray, geo: Geometry) -> tuple[np.ndarray, np.ndarray]:
        """(h, w, 3) rgb -> (painted rgb (h, w, 3), footprint mask (h, w) bool)."""
        ...


@dataclass(frozen=True)
class Blob:
    """An irregular ellipse in scene coordinates: centre, radius, aspect, angle, lobes."""

    cx: float
    cy: float
    radius: float
    aspect: float
    angle: float
    lobes: np.ndarray  # (k, 3): harmonic, amplitude, phase

    @classmethod
    def sample(
        cls,
        rng: np.random.Generator,
        center: tuple[float, float],
        radius: float,
        lobed: bool = True,
    ) -> Blob:
        """Lobed blobs have irregular edges (lesions); others are smooth ovals (openings)."""
        k = np.arange(2, 6)
        amp = rng.uniform(0.0, 0.1 if lobed else 0.02, size=k.size)
        lobes = np.stack([k, amp, rng.uniform(0, 2 * np.pi, size=k.size)], 1)
        aspect, angle = rng.uniform(0.7, 1.0), rng.uniform(0, np.pi)
        return cls(center[0], center[1], radius, aspect, angle, lobes)

    def coords(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ex, ey, rho), each (h, w): position in the blob's unit disc (rho < 1 is inside)."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        px = (x - self.cx) * c + (y - self.cy) * s
        py = ((y - self.cy) * c - (x - self.cx) * s) / self.aspect
        theta = np.arctan2(py, px)
        edge = np.ones_like(x)
        for k, amp, phase in self.lobes:
            edge += amp * np.sin(k * theta + phase)
        ex = px / (self.radius * edge)
        ey = py / (self.radius * edge)
        return ex, ey, np.sqrt(ex * ex + ey * ey)


def _near_origin(rng: np.random.Generator, spread: float) -> tuple[float, float]:
    r, a = spread * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
    return float(r * np.cos(a)), float(r * np.sin(a))


def _blend(rgb: np.ndarray, color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return rgb * (1.0 - alpha[..., None]) + color * alpha[..., None]


@dataclass(frozen=True)
class Polyp:
    """Raised rounded blob: dome shading, a rim shadow, a specular highlight; mask = footprint."""

    blob: Blob
    tint: np.ndarray  # (3,) multiplies the mucosa colour
    light: np.ndarray  # (3,) unit light direction
    texture: Fbm

    def paint(self, rgb: np.ndarray, geo: Geometry) -> tuple[np.ndarray, np.ndarray]:
        ex, ey, rho = self.blob.coords(geo.x, geo.y)
        height = np.sqrt(np.clip(1.0 - rho * rho, 0.0, 1.0))
        lx, ly, lz = self.light
        lambert = np.clip(ex * lx + ey * ly + height * lz, 0.0, 1.0)
        half = self.light + np.array([0.0, 0.0, 1.0])
        half /= np.linalg.norm(half)
        spec = np.clip(ex * half[0] + ey * half[1] + height * half[2], 0.0, 1.0) ** 40
        inside = rho < 1.0
        outside_rim = np.exp(-(((rho - 1.0) / 0.2) ** 2)) * (rho >= 1.0)
        rgb = rgb * (1.0 - 0.45 * outside_rim)[..., None]
        level = (0.35 + 0.85 * lambert) * (0.8 + 0.4 * self.texture(geo.x, geo.y))
        level *= np.maximum(geo.illum, 0.35) * 1.1
        body = geo.color * self.tint * level[..., None]
        alpha = smoothstep(1.0, 0.9, rho) * inside
        rgb = _blend(rgb, body, alpha) + (0.9 * spec * alpha)[..., None]
        return rgb, inside


@dataclass(frozen=True)
class Ulcer:
    """Flat whitish fibrin patch inside an inflamed red rim and a reddened halo."""

    blob: Blob
    fibrin: np.ndarray  # (3,)
    texture: Fbm

    def paint(self, rgb: np.ndarray, geo: Geometry) -> tuple[np.ndarray, np.ndarray]:
        _, _, rho = self.blob.coords(geo.x, geo.y)
        halo = 0.35 * np.exp(-(((rho - 1.0) / 0.6) ** 2))
        rgb = rgb * (1.0 - halo[..., None] * np.array([0.0, 0.6, 0.5], dtype=np.float32))
        rim_color = np.array([0.72, 0.08, 0.08], dtype=np.float32) * geo.illum[..., None]
        rgb = _blend(rgb, rim_color, 0.85 * np.exp(-(((rho - 1.08) / 0.16) ** 2)))
        level = (0.8 + 0.3 * self.texture(geo.x, geo.y)) * np.maximum(geo.illum, 0.7)
        rgb = _blend(rgb, self.fibrin * level[..., None], smoothstep(1.0, 0.85, rho))
        return rgb, np.zeros(rho.shape, dtype=bool)


@dataclass(frozen=True)
class Bleeding:
    """A dark red pool of blood with glossy specks and streaks running away from it."""

    pool: Blob
    streaks: np.ndarray  # (k, 5): start x, start y, end x, end y, width
    gloss: Fbm

    def paint(self, rgb: np.ndarray, geo: Geometry) -> tuple[np.ndarray, np.ndarray]:
        _, _, rho = self.pool.coords(geo.x, geo.y)
        tint = 0.4 * np.exp(-(((rho - 1.0) / 0.8) ** 2))
        rgb = rgb * (1.0 - tint[..., None] * np.array([0.0, 0.7, 0.6], dtype=np.float32))
        lit = np.maximum(geo.illum, 0.4)[..., None]
        blood = np.array([0.5, 0.03, 0.04], dtype=np.float32) * lit
        for x0, y0, x1, y1, width in self.streaks:
            dist = _segment_distance(geo.x, geo.y, (x0, y0), (x1, y1))
            rgb = _blend(rgb, blood, 0.9 * np.exp(-((dist / width) ** 2)))
        pool = np.array([0.3, 0.01, 0.02], dtype=np.float32) * np.maximum(geo.illum, 0.5)[..., None]
        alpha = smoothstep(1.0, 0.85, rho)
        speck = smoothstep(0.8, 0.9, self.gloss(geo.x, geo.y)) * alpha
        rgb = _blend(rgb, pool, alpha) + (0.4 * speck)[..., None]
        return rgb, np.zeros(rho.shape, dtype=bool)


@dataclass(frozen=True)
class Instrument:
    """Grey metallic tool entering from the frame edge at `entry` radians; its tip slides by
    `advance` per frame. Cylinder shading with a specular stripe and a dark marker band."""

    entry: float
    tip: float  # distance of the tip from the frame centre, towards the entry side
    advance: float
    half_width: float
    color: np.ndarray  # (3,)

    def paint(self, rgb: np.ndarray, geo: Geometry) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = np.cos(self.entry), np.sin(self.entry)
        tip = self.tip - self.advance * geo.t
        along = geo.u * dx + geo.v * dy - tip  # > 0 on the body, towards the entry edge
        across = geo.v * dx - geo.u * dy
        hw = self.half_width * (0.8 + 0.6 * np.clip(along, 0.0, 1.0))
        nc = across / hw
        radial = np.where(along > 0.0, np.abs(nc), np.sqrt(nc * nc + (along / hw) ** 2))
        shadow = 0.5 * np.exp(-(((radial - 1.0) / 0.5) ** 2)) * (radial >= 1.0) * (along > -hw)
        rgb = rgb * (1.0 - shadow[..., None])
        cyl = np.sqrt(np.clip(1.0 - nc * nc, 0.0, 1.0))
        level = 0.25 + 0.65 * cyl + 0.7 * np.exp(-(((nc + 0.35) / 0.12) ** 2))
        band = (along > 0.06) & (along < 0.1)
        level = np.where(band, 0.3 * level, level)
        alpha = smoothstep(1.0, 0.85, radial)
        return _blend(rgb, self.color * level[..., None], alpha), np.zeros(nc.shape, dtype=bool)


@dataclass(frozen=True)
class Diverticulum:
    """One to three dark round pouch openings with a slightly raised, brighter rim."""

    openings: tuple[Blob, ...]

    def paint(self, rgb: np.ndarray, geo: Geometry) -> tuple[np.ndarray, np.ndarray]:
        factor = np.ones_like(geo.x)
        for blob in self.openings:
            _, _, rho = blob.coords(geo.x, geo.y)
            depth = 0.08 + 0.5 * rho**2
            inner = smoothstep(1.0, 0.9, rho)
            ridge = 1.0 + 0.3 * np.exp(-(((rho - 1.12) / 0.1) ** 2))
            factor *= (1.0 - inner) * ridge + inner * depth
        return rgb * factor[..., None], np.zeros(factor.shape, dtype=bool)


def _segment_distance(
    x: np.ndarray, y: np.ndarray, a: tuple[float, float], b: tuple[float, float]
) -> np.ndarray:
    """(h, w) distance of each point (x, y) to the segment a-b."""
    bx, by = b[0] - a[0], b[1] - a[1]
    t = np.clip(((x - a[0]) * bx + (y - a[1]) * by) / (bx * bx + by * by + 1e-9), 0.0, 1.0)
    return np.hypot(x - a[0] - t * bx, y - a[1] - t * by)


def sample_lesion(rng: np.random.Generator, mode: str, lumen: tuple[float, float]) -> Lesion | None:
    """Draw the lesion of `mode` for one video (None for normal mucosa)."""
    if mode == "polyp":
        light = np.array([*rng.normal(0.0, 0.35, size=2), 1.0])
        return Polyp(
            blob=Blob.sample(rng, _near_origin(rng, 0.18), rng.uniform(0.11, 0.22)),
            tint=np.array([1.05, rng.uniform(0.72, 0.95), rng.uniform(0.72, 0.95)], np.float32),
            light=light / np.linalg.norm(light),
            texture=Fbm.sample(rng, frequency=22.0, octaves=2),
        )
    if mode == "ulcer":
        fibrin = np.array([1.0, rng.uniform(0.93, 0.98), rng.uniform(0.78, 0.9)], np.float32)
        return Ulcer(
            blob=Blob.sample(rng, _near_origin(rng, 0.18), rng.uniform(0.07, 0.15)),
            fibrin=fibrin,
            texture=Fbm.sample(rng, frequency=18.0, octaves=2),
        )
    if mode == "bleeding":
        pool = Blob.sample(rng, _near_origin(rng, 0.2), rng.uniform(0.09, 0.18))
        count = int(rng.integers(2, 6))
        flow = rng.uniform(0, 2 * np.pi)
        angles = flow + rng.normal(0.0, 0.12, size=count)
        side = rng.uniform(-0.7, 0.7, size=count) * pool.radius
        x0 = pool.cx - side * np.sin(flow)
        y0 = pool.cy + side * np.cos(flow)
        lengths = rng.uniform(0.2, 0.6, size=count)
        streaks = np.stack(
            [
                x0,
                y0,
                x0 + lengths * np.cos(angles),
                y0 + lengths * np.sin(angles),
                rng.uniform(0.01, 0.028, size=count),
            ],
            axis=1,
        )
        return Bleeding(pool=pool, streaks=streaks, gloss=Fbm.sample(rng, 25.0, octaves=1))
    if mode == "instrument":
        grey = rng.uniform(0.55, 0.7)
        return Instrument(
            entry=rng.uniform(0, 2 * np.pi),
            tip=rng.uniform(-0.05, 0.25),
            advance=rng.normal(0.0, 0.01),
            half_width=rng.uniform(0.05, 0.08),
            color=np.array([grey, grey * 1.01, grey * rng.uniform(1.02, 1.1)], np.float32),
        )
    if mode == "diverticulum":
        return Diverticulum(openings=_sample_openings(rng, lumen))
    return None


def _sample_openings(rng: np.random.Generator, lumen: tuple[float, float]) -> tuple[Blob, ...]:
    """1-3 openings near the view centre, kept off the lumen so they read as separate holes."""
    openings: list[Blob] = []
    for _ in range(int(rng.integers(1, 4))):
        radius = rng.uniform(0.05, 0.1)
        center = _near_origin(rng, 0.3)
        for _ in range(10):
            if np.hypot(center[0] - lumen[0], center[1] - lumen[1]) > 0.25:
                break
            center = _near_origin(rng, 0.35)
        openings.append(Blob.sample(rng, center, radius, lobed=False))
    return tuple(openings)
