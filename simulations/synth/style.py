"""Per-center device style: how one hospital's endoscope turns a scene into 8-bit pixels.

Every center gets its own colour cast, exposure, tone curve, saturation, vignette, sensor noise
and a mild optical blur. These are the 'normal' differences between hospitals; the ranges are
chosen so the softest, dimmest device stays clearly apart from the disruptive frames
(motion blur >= 10% of the frame width, under-exposure at <= 1/4 of the light).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from feddel.simulations.synth.filters import gaussian_blur

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class DeviceStyle:
    cast: tuple[float, float, float]  # per-channel gains, mean 1
    exposure: float  # light gain
    gamma: float  # tone curve exponent
    saturation: float  # 1 = unchanged
    vignette: float  # darkening at the frame corners, fraction
    noise: float  # sensor noise standard deviation, grey levels
    blur: float  # optical blur sigma in pixels at 64 px (scaled with the frame size)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def sample_style(rng: np.random.Generator) -> DeviceStyle:
    cast = rng.uniform(0.88, 1.12, size=3)
    cast /= cast.mean()
    return DeviceStyle(
        cast=(float(cast[0]), float(cast[1]), float(cast[2])),
        exposure=float(rng.uniform(0.85, 1.15)),
        gamma=float(rng.uniform(0.85, 1.2)),
        saturation=float(rng.uniform(0.85, 1.2)),
        vignette=float(rng.uniform(0.15, 0.5)),
        noise=float(rng.uniform(0.6, 2.5)),
        blur=float(rng.uniform(0.0, 0.7)),
    )


def develop(
    rgb: np.ndarray,
    style: DeviceStyle,
    rng: np.random.Generator,
    gain: float = 1.0,
    offset: float = 0.0,
) -> np.ndarray:
    """(h, w, 3) float display values -> (h, w, 3) uint8 as this device records them.

    `gain` and `offset` are extra exposure from a disruption (1 and 0 for a normal frame).
    """
    size = rgb.shape[0]
    x = gaussian_blur(rgb * (style.exposure * gain) + offset, style.blur * size / 64.0)
    x = np.clip(x, 0.0, 1.0)
    luma = (x @ _LUMA)[..., None]
    x = np.clip(luma + style.saturation * (x - luma), 0.0, 1.0)
    x = np.clip(x * np.asarray(style.cast, dtype=np.float32), 0.0, 1.0) ** style.gamma
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    r2 = (axis[None, :] ** 2 + axis[:, None] ** 2) * 2.0  # 1 at the corners
    x = x * (1.0 - style.vignette * r2**1.25)[..., None]
    pixels = 255.0 * x + rng.normal(0.0, style.noise, size=x.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
