"""Disruptive-frame detection from image statistics, with thresholds adapted to each center.

Endoscopy pools are dominated by frames without usable content (Hyper-Kvasir is said to be over
90% blur, darkness, bubbles, overexposure or blank). A fixed threshold fails across hospitals: a
dim or soft device would see most of its frames flagged. So each frame is reduced to a few
generic statistics (`features_batch`), and `detect_disruptive` flags a frame when a statistic
lies far on the bad side of *its own center's* distribution (a one-sided robust z-score), or
beyond an absolute limit no usable frame reaches (e.g. 40% of the pixels clipped white).

Only luminance, colour saturation, second differences, a polynomial illumination fit and a
morphological top-hat are used: nothing about how any particular data set was made.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from feddel.common.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

QUALITY_FEATURES: tuple[str, ...] = (
    "sharpness",  # log(1 + fine detail along the weakest direction in the typical block)
    "brightness",  # mean luminance / 255, in [0, 1]
    "clipped_high",  # fraction of pixels with luminance >= 245
    "clipped_low",  # fraction of pixels with luminance <= 10
    "contrast",  # luminance standard deviation / 255
    "specular",  # fraction of pixels in small bright spots (blob top-hat): bubbles give many
    "washed_out",  # fraction of near-white pixels: luminance >= 170 and saturation < 0.3
    "structure",  # log(residual std / mean luminance) once a smooth illumination is removed
)
REASONS: tuple[str, ...] = ("dark", "overexposed", "blank", "blur", "bubbles")

_INDEX = {name: i for i, name in enumerate(QUALITY_FEATURES)}
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_CLIP_HIGH = 244.5  # half a grey level off the integer limit: float rounding cannot flip a pixel
_CLIP_LOW = 10.5
_WHITE_LUMA = 170.0  # washed out: bright and nearly colourless (every channel saturating)
_WHITE_SATURATION = 0.3
_GREY_SATURATION = 0.05  # a frame with no pixel more saturated than this is a grey image
_LINE = 5  # pixels: a bright spot shorter than this in every direction counts as specular
_SPOT_DELTA = 15.0  # a specular spot is this many grey levels above its surroundings ...
_SPOT_REL = 0.15  # ... and at least this fraction of the frame's mean luminance
_BLOCKS = 8  # sharpness blocks per side
_ILLUMINATION_DEGREE = 4  # polynomial surface: vignette, tilt and lumen falloff, not texture
_CHUNK = 512


class _Test(NamedTuple):
    """One relative test: `statistic` (see `_statistics`) far on its bad `side` (+1: high is bad,
    -1: low is bad). The center's spread is clamped to [floor, ceiling] in the statistic's
    units: a center whose frames all look alike must not turn jitter into huge z-scores, and
    one that mixes very different videos must not hide a frame that lost most of its detail."""

    reason: str
    statistic: str
    side: int
    floor: float
    ceiling: float = np.inf


# Tests in stages: a later stage measures its center statistics without the frames an earlier
# stage flagged (the sharpness of a black or blank frame says nothing about the device).
_STAGES: tuple[tuple[_Test, ...], ...] = (
    (
        _Test("dark", "exposure", -1, 0.25),
        # clipping compresses over-exposure in the mean, hence a smaller floor than for dark
        _Test("overexposed", "exposure", +1, 0.15),
        _Test("overexposed", "washed_out", +1, 0.02),
    ),
    (_Test("blank", "structure", -1, 0.3),),
    (
        # ceiling: 3 x 0.5 = 1.5, i.e. 4.5x less detail than the center's median frame is blur
        _Test("blur", "sharpness", -1, 0.25, 0.5),
        _Test("bubbles", "specular", +1, 0.005),
    ),
)


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of `detect_disruptive`.

    `z_<reason>` are one-sided robust z-scores against the center's own frames. The absolute
    limits apply whatever the center: more than `max_clipped_high` of the pixels clipped white
    is overexposed, more than `max_clipped_low` clipped black is dark, a luminance standard
    deviation under `min_contrast` (fraction of 255) is blank. `min_frames` is the fewest frames
    whose median and spread are trusted; a smaller center gets the absolute limits only.
    """

    z_dark: float = 3.5
    z_overexposed: float = 3.5
    z_blank: float = 3.5
    z_blur: float = 3.0
    z_bubbles: float = 3.5
    max_clipped_high: float = 0.4
    max_clipped_low: float = 0.6
    min_contrast: float = 2.0 / 255.0
    min_frames: int = 10

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name.startswith("z_") and not value > 0:
                raise ConfigError(f"QualityConfig.{field.name}={value} must be > 0")
        for name in ("max_clipped_high", "max_clipped_low", "min_contrast"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"QualityConfig.{name}={value} must be in (0, 1]")
        if self.min_frames < 3:
            raise ConfigError(f"QualityConfig.min_frames={self.min_frames} must be >= 3")

    def threshold(self, reason: str) -> float:
        """The z threshold of `reason` (one of `REASONS`)."""
        return float(getattr(self, f"z_{reason}"))


class QualityResult(NamedTuple):
    """Per-frame verdicts: `disruptive` (n,) bool; `reason[i]` is "" or one of `REASONS`."""

    disruptive: np.ndarray
    reason: list[str]


def frame_features(image: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 RGB (or (h, w) grey) -> (F,) float64, one value per `QUALITY_FEATURES`."""
    if not isinstance(image, np.ndarray):
        raise DataError(f"image must be a numpy array, got {type(image).__name__}")
    return features_batch(image[None])[0]


def features_batch(images: np.ndarray) -> np.ndarray:
    """(n, h, w, 3) uint8 RGB (or (n, h, w) grey) -> (n, F) float64, vectorized in chunks."""
    _check_images(images)
    out = np.empty((images.shape[0], len(QUALITY_FEATURES)), dtype=np.float64)
    for start in range(0, images.shape[0], _CHUNK):
        chunk = images[start : start + _CHUNK]
        out[start : start + _CHUNK] = _features(*_luminance_saturation(chunk))
    return out


def detect_disruptive(
    features: np.ndarray, config: QualityConfig = QualityConfig()
) -> QualityResult:
    """Flag the disruptive frames of ONE center from its (n, F) `features_batch` output.

    A flagged frame is named after the reason with the largest z relative to its threshold
    (absolute limits: value relative to the limit); blur only when nothing else fires, since
    every other failure also wipes out detail.
    """
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[1] != len(QUALITY_FEATURES):
        raise DataError(
            f"features of shape {feats.shape} must be (n, {len(QUALITY_FEATURES)}); "
            "compute them with features_batch"
        )
    if not np.isfinite(feats).all():
        raise DataError("features contain NaN or infinity; recompute them with features_batch")
    relative = feats.shape[0] >= config.min_frames
    if feats.shape[0] and not relative:
        logger.warning(
            "only %d frames (< min_frames=%d): using absolute quality limits only",
            feats.shape[0],
            config.min_frames,
        )
    severity = _severities(feats, config, relative)  # (n, reasons), >= 1 fires
    fired = severity >= 1.0
    last_resort = np.array([reason == "blur" for reason in REASONS])
    rank = np.where(fired, np.minimum(severity, 1e6) - 2e6 * last_resort, -np.inf)
    best = rank.argmax(axis=1)
    disruptive = fired.any(axis=1)
    reason = [REASONS[j] if hit else "" for j, hit in zip(best, disruptive, strict=True)]
    return QualityResult(disruptive=disruptive, reason=reason)


def _statistics(feats: np.ndarray) -> dict[str, np.ndarray]:
    """(n, F) features -> per test statistic, (n,) values (exposure in log grey levels)."""
    col = {name: feats[:, i] for name, i in _INDEX.items()}
    exposure = np.log1p(255.0 * col["brightness"])
    return {
        "exposure": exposure,
        "washed_out": col["washed_out"],
        "structure": col["structure"],
        # detail per unit of light: texture energy grows with the light squared, sensor noise
        # does not; dividing by the light once makes neither dim nor bright videos look soft
        "sharpness": col["sharpness"] - exposure,
        "specular": col["specular"],
    }


def _severities(feats: np.ndarray, config: QualityConfig, relative: bool) -> np.ndarray:
    """(n, F) -> (n, len(REASONS)): z / threshold (or value / absolute limit); >= 1 fires.

    Each stage's center statistics come from the frames no earlier stage flagged, then once
    more without the frames the stage itself flagged (so its own outliers do not widen it).
    """
    col = {name: feats[:, i] for name, i in _INDEX.items()}
    severity = np.zeros((len(feats), len(REASONS)))
    severity[:, REASONS.index("overexposed")] = col["clipped_high"] / config.max_clipped_high
    severity[:, REASONS.index("dark")] = col["clipped_low"] / config.max_clipped_low
    # 1 (not a ratio): a frame that is also clipped is named dark or overexposed, not blank
    severity[:, REASONS.index("blank")] = (col["contrast"] < config.min_contrast).astype(float)
    if not relative:
        return severity
    stats = _statistics(feats)
    reference = severity.max(axis=1) < 1.0
    for stage in _STAGES:
        own = np.zeros(len(feats), dtype=bool)
        stage_severity = np.zeros_like(severity)
        for _ in range(2):
            if (reference & ~own).sum() < config.min_frames:
                break
            stage_severity[:] = 0.0
            for test in stage:
                z = _robust_z(test.side * stats[test.statistic], reference & ~own, test)
                j = REASONS.index(test.reason)
                stage_severity[:, j] = np.maximum(
                    stage_severity[:, j], z / config.threshold(test.reason)
                )
            own = stage_severity.max(axis=1) >= 1.0
        severity = np.maximum(severity, stage_severity)
        reference &= ~own
    return severity


def _robust_z(bad_high: np.ndarray, reference: np.ndarray, test: _Test) -> np.ndarray:
    """(n,) values (high is bad) -> (x - median) / clamp(1.4826 MAD, floor, ceiling), with the
    median and MAD of the `reference` (n,) bool frames."""
    ref = bad_high[reference]
    median = float(np.median(ref))
    spread = 1.4826 * float(np.median(np.abs(ref - median)))
    return (bad_high - median) / min(max(spread, test.floor), test.ceiling)


def _check_images(images: object) -> None:
    if not isinstance(images, np.ndarray):
        raise DataError(f"images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise DataError(f"images dtype {images.dtype} must be uint8 (decoded 8-bit pixels)")
    grey = images.ndim == 3
    rgb = images.ndim == 4 and images.shape[-1] == 3
    if not (grey or rgb) or images.shape[1] < 8 or images.shape[2] < 8:
        raise DataError(
            f"images of shape {images.shape} must be (n, h, w, 3) or (n, h, w), h and w >= 8"
        )


def _luminance_saturation(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, h, w[, 3]) uint8 -> (n, h, w) float32 luminance in grey levels (Rec. 601) and
    saturation (max - min) / max in [0, 1]. A grey frame has no colour to tell a white wash from
    bright tissue, so its saturation is set to 1: washed_out stays 0 and exposure decides."""
    if images.ndim == 3:
        return images.astype(np.float32), np.ones(images.shape, dtype=np.float32)
    red, green, blue = images[..., 0], images[..., 1], images[..., 2]
    luminance = _LUMA[0] * red.astype(np.float32)  # channel by channel: 4x faster than a matmul
    luminance += _LUMA[1] * green.astype(np.float32)
    luminance += _LUMA[2] * blue.astype(np.float32)
    high = np.maximum(np.maximum(red, green), blue)
    low = np.minimum(np.minimum(red, green), blue)
    saturation = (high - low).astype(np.float32) / np.maximum(high, 1).astype(np.float32)
    grey = saturation.reshape(len(images), -1).max(axis=1) < _GREY_SATURATION
    saturation[grey] = 1.0
    return luminance, saturation


def _features(lum: np.ndarray, saturation: np.ndarray) -> np.ndarray:
    """(n, h, w) float32 luminance and saturation -> (n, F) float64 features."""
    n, h, w = lum.shape
    flat = lum.reshape(n, -1)
    mean = flat.mean(axis=1)
    spots = _blob_tophat(np.rint(lum).astype(np.uint8))
    spot_delta = np.maximum(_SPOT_DELTA, _SPOT_REL * mean)[:, None, None]
    basis = _illumination_basis(h, w)
    residual = flat - (flat @ basis) @ basis.T
    white = (lum >= _WHITE_LUMA) & (saturation < _WHITE_SATURATION)
    out = np.empty((n, len(QUALITY_FEATURES)), dtype=np.float64)
    out[:, _INDEX["sharpness"]] = np.log1p(_directional_detail(lum).min(axis=1))
    out[:, _INDEX["brightness"]] = mean / 255.0
    out[:, _INDEX["clipped_high"]] = (flat > _CLIP_HIGH).mean(axis=1)
    out[:, _INDEX["clipped_low"]] = (flat < _CLIP_LOW).mean(axis=1)
    out[:, _INDEX["contrast"]] = flat.std(axis=1) / 255.0
    out[:, _INDEX["specular"]] = (spots > spot_delta).reshape(n, -1).mean(axis=1)
    out[:, _INDEX["washed_out"]] = white.reshape(n, -1).mean(axis=1)
    out[:, _INDEX["structure"]] = np.log1p(residual.std(axis=1)) - np.log1p(mean)
    return out


def _directional_detail(lum: np.ndarray) -> np.ndarray:
    """(n, h, w) -> (n, 4): per direction (horizontal, vertical, both diagonals), the median over
    blocks of the mean squared second difference along it, in grey levels^2 per pixel^4.

    Motion blur smooths a frame along one direction only, so the weakest direction measures
    it; the median block ignores a sharp instrument or a smooth lumen.
    """
    centre = lum[:, 1:-1, 1:-1]
    h, w = centre.shape[1:]
    detail = []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        second = 2.0 * centre
        second -= lum[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        second -= lum[:, 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]
        second *= second
        step4 = float(dy * dy + dx * dx) ** 2  # a second difference grows with the step squared
        detail.append(np.median(_block_means(second), axis=1) / step4)
    return np.stack(detail, axis=1)


def _block_means(values: np.ndarray) -> np.ndarray:
    """(n, h, w) -> (n, B): means over a `_BLOCKS` x `_BLOCKS` grid (remainder rows dropped)."""
    n, h, w = values.shape
    bh, bw = max(h // _BLOCKS, 1), max(w // _BLOCKS, 1)
    rows, cols = h // bh, w // bw
    strips = values[:, : rows * bh, : cols * bw].reshape(n, rows, bh, cols * bw).sum(axis=2)
    return strips.reshape(n, rows, cols, bw).sum(axis=3).reshape(n, -1) / (bh * bw)


def _blob_tophat(lum: np.ndarray) -> np.ndarray:
    """(n, h, w) uint8 -> (n, h, w) float32: how much brighter each pixel is than the brightest
    `_LINE`-pixel line opening through it (horizontal, vertical, both diagonals).

    A line opening keeps any bright structure at least a line long in its direction, so only
    spots shorter than the line in every direction remain: bubble glints and rims, not the long
    bright edges of instruments or folds.
    """
    lines = [
        _line_filter(_line_filter(lum, np.minimum, step), np.maximum, step)
        for step in ((0, 1), (1, 0), (1, 1), (1, -1))
    ]
    return lum.astype(np.float32) - np.maximum.reduce(lines).astype(np.float32)


def _line_filter(images: np.ndarray, op: np.ufunc, step: tuple[int, int]) -> np.ndarray:
    """(n, h, w) running `op` (np.minimum / np.maximum) over the `_LINE` pixels centred on each
    pixel along direction `step` (dy, dx); the line is cut short at the frame border."""
    out = images.copy()
    h, w = images.shape[1:]
    for k in range(1, _LINE // 2 + 1):
        for dy, dx in ((k * step[0], k * step[1]), (-k * step[0], -k * step[1])):
            ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
            xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
            op(out[:, yd, xd], images[:, ys, xs], out=out[:, yd, xd])
    return out


@lru_cache(maxsize=8)
def _illumination_basis(h: int, w: int) -> np.ndarray:
    """(h*w, k) float32 orthonormal basis Q of the 2-D polynomials up to `_ILLUMINATION_DEGREE`:
    the smooth illumination of a flattened frame x (vignette, tilt, lumen falloff) is Q Q^T x."""
    v, u = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    terms = [
        (u**i * v**j).ravel()
        for i in range(_ILLUMINATION_DEGREE + 1)
        for j in range(_ILLUMINATION_DEGREE + 1 - i)
    ]
    basis, _ = np.linalg.qr(np.stack(terms, axis=1))
    return basis.astype(np.float32)
