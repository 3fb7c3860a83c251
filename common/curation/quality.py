"""Disruptive-frame detection from image statistics, with thresholds adapted to each center and
to each modality group within it.

Endoscopy pools are dominated by frames without usable content (Hyper-Kvasir is said to be over
90% blur, darkness, bubbles, overexposure or blank). A fixed threshold fails across hospitals: a
dim or soft device would see most of its frames flagged. So each frame is reduced to a few
generic statistics (`features_batch`), and `detect_disruptive` flags a frame when a statistic
lies far on the bad side of *its own group's* distribution (a one-sided robust z-score, median
and MAD), or beyond an absolute limit no usable frame reaches (e.g. 40% of the pixels clipped
white in a colour frame).

A center's pool mixes modalities (an MR series beside ultrasound cine beside fundus photographs),
and their statistics differ more than a good frame differs from a bad one, so the caller passes
`groups` (e.g. modality and folder, common/data/pool.py) and each group is judged on its own.
A group is colour or grey by the majority of its frames, and the two get different tests: grey
medical images have large black or white backgrounds (air, collimation) and small bright
anatomy, so for them the black and white clipping limits are far higher, specular spots are not
bubbles, and sharpness is measured over the blocks that hold something (`detail`), not the
median block. Within a group, a frame is measured against its own series (a volume, a cine)
when the caller names series, so that anatomies that differ (head and spine CT) do not flag
each other.

The reference distribution is fitted only on frames that pass every absolute check, and one of
those is noise (pixels two apart uncorrelated): a center where noise images are the
majority still judges its real frames against real frames. A group with fewer than
`min_frames` such frames gets the absolute limits only, and a warning says so.

Only luminance, colour saturation, second differences, a polynomial illumination fit and a
morphological top-hat are used: nothing about how any particular data set was made.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
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
    "correlation",  # that residual's correlation with itself 2 pixels away: ~0 for noise
    "colour",  # fraction of the lit pixels (luminance >= 30) with saturation >= 0.2
    "detail",  # like sharpness, over the blocks that are lit (mean luminance >= 20) only
)
REASONS: tuple[str, ...] = ("dark", "overexposed", "blank", "blur", "bubbles", "noise")

_INDEX = {name: i for i, name in enumerate(QUALITY_FEATURES)}
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_CLIP_HIGH = 244.5  # half a grey level off the integer limit: float rounding cannot flip a pixel
_CLIP_LOW = 10.5
_WHITE_LUMA = 170.0  # washed out: bright and nearly colourless (every channel saturating)
_WHITE_SATURATION = 0.3
_GREY_SATURATION = 0.05  # a frame with no pixel more saturated than this is a grey image
_COLOUR_SATURATION = 0.2  # a pixel this saturated (and lit) is coloured
_COLOUR_LUMA = 30.0
_COLOUR_GROUP = 0.5  # a frame with this fraction of its lit pixels coloured is a colour frame
_LIT_BLOCK = 20.0  # a block with this mean luminance holds something (detail is measured there)
_NOISE_LAG = 2  # pixels: the distance at which `correlation` is measured
_NOISE_MIN_STD = 8.0  # grey levels of residual: below, uncorrelated is sensor noise on a blank
_LINE = 5  # pixels: a bright spot shorter than this in every direction counts as specular
_SPOT_DELTA = 15.0  # a specular spot is this many grey levels above its surroundings ...
_SPOT_REL = 0.15  # ... and at least this fraction of the frame's mean luminance
_BLOCKS = 8  # sharpness blocks per side
_ILLUMINATION_DEGREE = 4  # polynomial surface: vignette, tilt and lumen falloff, not texture
_CHUNK = 512
SERIES_LOCATION = 5  # reference frames a series needs to be its frames' own location


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
_COLOUR_STAGES: tuple[tuple[_Test, ...], ...] = (
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
# Grey medical images: dark (an ultrasound probe in the air leaves a dark sector; the floor is
# low because grey frames are dark to begin with), clipping to white beyond the group's usual
# background (a window or gain set far too high), blank, and blur over the lit blocks, with a
# higher ceiling since one modality group holds different anatomy (a head CT has 6x the fine
# detail of an abdominal one). No bubbles: small bright spots are anatomy there.
_GREY_STAGES: tuple[tuple[_Test, ...], ...] = (
    (
        _Test("dark", "exposure", -1, 0.1),
        _Test("overexposed", "clipped_high", +1, 0.05),
    ),
    (_Test("blank", "structure", -1, 0.3),),
    (_Test("blur", "detail", -1, 0.25, 0.8),),
)


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of `detect_disruptive`.

    `z_<reason>` are one-sided robust z-scores against the group's own frames. The absolute
    limits apply whatever the center: more than `max_clipped_high` of the pixels clipped white
    is overexposed, more than `max_clipped_low` clipped black is dark (`..._grey`: the same
    for grey groups, whose backgrounds are black or white), a luminance standard deviation under
    `min_contrast` (fraction of 255) is blank, a correlation of pixels 2 apart under
    `min_correlation` (with a residual of at least 8 grey levels: a blank frame's sensor noise
    is not noise) is noise. `min_frames` is the fewest frames whose median and spread are
    trusted; a smaller group gets the absolute limits only.
    """

    z_dark: float = 3.5
    z_overexposed: float = 3.5
    z_blank: float = 3.5
    z_blur: float = 3.0
    z_bubbles: float = 3.5
    max_clipped_high: float = 0.4
    max_clipped_low: float = 0.6
    max_clipped_high_grey: float = 0.9
    max_clipped_low_grey: float = 0.98
    min_contrast: float = 2.0 / 255.0
    min_correlation: float = 0.1
    min_frames: int = 10

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name.startswith("z_") and not value > 0:
                raise ConfigError(f"QualityConfig.{field.name}={value} must be > 0")
        limits = ("max_clipped_high", "max_clipped_low", "max_clipped_high_grey")
        for name in (*limits, "max_clipped_low_grey", "min_contrast", "min_correlation"):
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
    features: np.ndarray,
    config: QualityConfig = QualityConfig(),
    groups: Sequence[Hashable] | None = None,
    series: Sequence[Hashable] | None = None,
) -> QualityResult:
    """Flag the disruptive frames of ONE center from its (n, F) `features_batch` output.

    `groups` (n labels, default one group) splits the center into modality groups, each judged
    against its own statistics with the tests of its nature (colour or grey, by majority).
    `series` (n labels, optional) names the acquisition of each frame (a volume, a cine, a
    video): a frame is then measured from its series' typical (median) frame when the series
    has SERIES_LOCATION reference frames, and by its series' spread when it has `min_frames`,
    so that a group that mixes anatomies (a head and a spine CT) or steady and changing series
    (a still cine beside a sweep) flags neither for being unlike the other.
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
    labels = [0] * len(feats) if groups is None else list(groups)
    acquisitions = list(range(len(feats))) if series is None else list(series)
    if not len(labels) == len(acquisitions) == len(feats):
        raise DataError(
            f"{len(labels)} group and {len(acquisitions)} series labels for {len(feats)} frames; "
            "give one of each per frame"
        )
    codes = _codes(acquisitions)
    severity = np.zeros((len(feats), len(REASONS)))  # (n, reasons), >= 1 fires
    for name, rows in _natures(feats, labels):
        where = "the center" if groups is None else f"group {labels[rows[0]]}"
        severity[rows] = _severities(feats[rows], codes[rows], config, name, where)
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
        "detail": col["detail"] - exposure,
        "specular": col["specular"],
        "clipped_high": col["clipped_high"],
    }


def _natures(feats: np.ndarray, labels: list[Hashable]) -> list[tuple[str, np.ndarray]]:
    """(nature, row indices) per group: "colour" when most of its frames are colour frames (an
    endoscopy, a fundus photograph, a stained slide), else "grey" (an ultrasound frame with a
    Doppler box is grey: most of its lit pixels are)."""
    coloured = feats[:, _INDEX["colour"]] >= _COLOUR_GROUP
    by_group: dict[Hashable, list[int]] = {}
    for row, label in enumerate(labels):
        by_group.setdefault(label, []).append(row)
    parts = []
    for rows in by_group.values():
        index = np.array(rows)
        parts.append(("colour" if 2 * coloured[index].sum() > len(index) else "grey", index))
    return parts


def _codes(labels: list[Hashable]) -> np.ndarray:
    """(n,) int codes of hashable labels, equal labels equal codes."""
    index: dict[Hashable, int] = {}
    return np.array([index.setdefault(label, len(index)) for label in labels], dtype=np.int64)


def _severities(
    feats: np.ndarray, series: np.ndarray, config: QualityConfig, nature: str, where: str
) -> np.ndarray:
    """(n, F) frames of one group, (n,) their series codes -> (n, len(REASONS)): z / threshold
    (or value / absolute limit); >= 1 fires.

    The reference is the frames that pass every absolute limit. Each stage's statistics come
    from the reference frames no earlier stage flagged, then once more without the frames the
    stage itself flagged (so its own outliers do not widen it).
    """
    col = {name: feats[:, i] for name, i in _INDEX.items()}
    grey = nature == "grey"
    severity = np.zeros((len(feats), len(REASONS)))
    high = config.max_clipped_high_grey if grey else config.max_clipped_high
    low = config.max_clipped_low_grey if grey else config.max_clipped_low
    severity[:, REASONS.index("overexposed")] = col["clipped_high"] / high
    severity[:, REASONS.index("dark")] = col["clipped_low"] / low
    # 1 (not a ratio): a frame that is also clipped is named dark or overexposed, not blank
    severity[:, REASONS.index("blank")] = (col["contrast"] < config.min_contrast).astype(float)
    # residual std in grey levels, from structure = log1p(std) - log1p(mean luminance)
    residual = np.expm1(col["structure"] + np.log1p(255.0 * col["brightness"]))
    noise = (col["correlation"] < config.min_correlation) & (residual >= _NOISE_MIN_STD)
    # noise explains every other statistic of the frame (its detail, its spots): it names it
    severity[:, REASONS.index("noise")] = np.where(noise, np.inf, 0.0)
    reference = severity.max(axis=1) < 1.0
    if reference.sum() < config.min_frames:
        if len(feats):
            logger.warning(
                "%s: %d of %d frames pass the absolute limits (< min_frames=%d), too few to "
                "calibrate on; using absolute quality limits only",
                where,
                int(reference.sum()),
                len(feats),
                config.min_frames,
            )
        return severity
    stats = _statistics(feats)
    for stage in _GREY_STAGES if grey else _COLOUR_STAGES:
        own = np.zeros(len(feats), dtype=bool)
        stage_severity = np.zeros_like(severity)
        for _ in range(2):
            if (reference & ~own).sum() < config.min_frames:
                break
            stage_severity[:] = 0.0
            for test in stage:
                values = test.side * stats[test.statistic]
                z = _robust_z(values, reference & ~own, series, test, config.min_frames)
                j = REASONS.index(test.reason)
                stage_severity[:, j] = np.maximum(
                    stage_severity[:, j], z / config.threshold(test.reason)
                )
            own = stage_severity.max(axis=1) >= 1.0
        severity = np.maximum(severity, stage_severity)
        reference &= ~own
    return severity


def _robust_z(
    bad_high: np.ndarray, reference: np.ndarray, series: np.ndarray, test: _Test, own: int
) -> np.ndarray:
    """(n,) values (high is bad) -> (x - m) / clamp(s, floor, ceiling), where m is the median
    of the frame's series over its `reference` frames when it has SERIES_LOCATION of them, else
    the median of all `reference` frames, and s is 1.4826 MAD (the median |x - m|) over the
    series' reference frames when it has `own` of them, else over all reference frames."""
    location = np.full(len(bad_high), float(np.median(bad_high[reference])))
    series_spread: list[tuple[np.ndarray, np.ndarray]] = []
    order = np.argsort(series, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(series[order]) != 0])
    for rows in np.split(order, starts[1:]):
        kept = rows[reference[rows]]
        if len(kept) >= SERIES_LOCATION:
            location[rows] = np.median(bad_high[kept])
        if len(kept) >= own:
            series_spread.append((rows, kept))
    residual = bad_high - location
    spread = np.full(len(bad_high), 1.4826 * float(np.median(np.abs(residual[reference]))))
    for rows, kept in series_spread:
        spread[rows] = 1.4826 * float(np.median(np.abs(residual[kept])))
    return residual / np.clip(spread, test.floor, test.ceiling)


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


def _luminance_saturation(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, h, w[, 3]) uint8 -> (n, h, w) float32 luminance in grey levels (Rec. 601) and
    saturation (max - min) / max in [0, 1], and (n,) the coloured fraction (`colour`). A grey
    frame has no colour to tell a white wash from bright tissue, so its saturation is set to 1:
    washed_out stays 0 and exposure decides."""
    if images.ndim == 3:
        grey = np.ones(images.shape, dtype=np.float32)
        return images.astype(np.float32), grey, np.zeros(len(images))
    red, green, blue = images[..., 0], images[..., 1], images[..., 2]
    luminance = _LUMA[0] * red.astype(np.float32)  # channel by channel: 4x faster than a matmul
    luminance += _LUMA[1] * green.astype(np.float32)
    luminance += _LUMA[2] * blue.astype(np.float32)
    high = np.maximum(np.maximum(red, green), blue)
    low = np.minimum(np.minimum(red, green), blue)
    saturation = (high - low).astype(np.float32) / np.maximum(high, 1).astype(np.float32)
    lit = (luminance >= _COLOUR_LUMA).reshape(len(images), -1)
    coloured = (saturation >= _COLOUR_SATURATION).reshape(len(images), -1) & lit
    colour = coloured.sum(axis=1) / np.maximum(lit.sum(axis=1), 1)
    grey = saturation.reshape(len(images), -1).max(axis=1) < _GREY_SATURATION
    saturation[grey] = 1.0
    return luminance, saturation, colour


def _features(lum: np.ndarray, saturation: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """(n, h, w) float32 luminance and saturation, (n,) coloured fraction -> (n, F) features."""
    n, h, w = lum.shape
    flat = lum.reshape(n, -1)
    mean = flat.mean(axis=1)
    spots = _blob_tophat(np.rint(lum).astype(np.uint8))
    spot_delta = np.maximum(_SPOT_DELTA, _SPOT_REL * mean)[:, None, None]
    basis = _illumination_basis(h, w)
    residual = flat - (flat @ basis) @ basis.T
    white = (lum >= _WHITE_LUMA) & (saturation < _WHITE_SATURATION)
    blocks = _block_detail(lum)  # (n, 4, B)
    lit = _block_means(lum[:, 1:-1, 1:-1]) >= _LIT_BLOCK  # (n, B), the same blocks
    out = np.empty((n, len(QUALITY_FEATURES)), dtype=np.float64)
    out[:, _INDEX["sharpness"]] = np.log1p(np.median(blocks, axis=2).min(axis=1))
    out[:, _INDEX["detail"]] = np.log1p(_lit_median(blocks, lit).min(axis=1))
    out[:, _INDEX["correlation"]] = _neighbour_correlation(residual.reshape(n, h, w))
    out[:, _INDEX["colour"]] = colour
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
    return np.median(_block_detail(lum), axis=2)


def _lit_median(blocks: np.ndarray, lit: np.ndarray) -> np.ndarray:
    """(n, 4, B) block details, (n, B) lit blocks -> (n, 4) median over the lit blocks (0 when
    a frame has none)."""
    masked = np.where(lit[:, None, :], blocks, np.nan)
    out = np.zeros(blocks.shape[:2])
    some = lit.any(axis=1)
    out[some] = np.nanmedian(masked[some], axis=2)
    return out


def _neighbour_correlation(residual: np.ndarray, lag: int = _NOISE_LAG) -> np.ndarray:
    """(n, h, w) -> (n,): the correlation of the residual with itself `lag` pixels away, the mean
    of horizontal and vertical; 1 for a frame without residual (nothing there is noise).

    Images (medical ones too) correlate over many pixels (at 64 px, 2 pixels apart: above 0.4
    for 99% of the real-image federation's frames, above 0.3 for every clean synthetic frame,
    above 0.11 for frames full of 2-pixel bubbles); white noise does not, nor does noise
    smoothed over up to ~0.65 pixel (exp(-1 / sigma^2) < 0.1 two pixels away)."""
    values = []
    pairs = ((residual[:, :, lag:], residual[:, :, :-lag]), (residual[:, lag:], residual[:, :-lag]))
    for a, b in pairs:
        a = a - a.mean(axis=(1, 2), keepdims=True)
        b = b - b.mean(axis=(1, 2), keepdims=True)
        norm = np.sqrt((a * a).sum(axis=(1, 2)) * (b * b).sum(axis=(1, 2)))
        product = (a * b).sum(axis=(1, 2))
        values.append(np.divide(product, norm, out=np.ones_like(norm), where=norm > 1e-6))
    return np.mean(values, axis=0)


def _block_detail(lum: np.ndarray) -> np.ndarray:
    """(n, h, w) -> (n, 4, B): per direction (see `_directional_detail`), each block's mean
    squared second difference along it."""
    centre = lum[:, 1:-1, 1:-1]
    h, w = centre.shape[1:]
    detail = []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        second = 2.0 * centre
        second -= lum[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        second -= lum[:, 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]
        second *= second
        step4 = float(dy * dy + dx * dx) ** 2  # a second difference grows with the step squared
        detail.append(_block_means(second) / step4)
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
