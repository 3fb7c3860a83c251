"""Synthetic embeddings for the benchmarks: video-like, non-IID across centers, on disk.

No encoder runs here: the benchmarks of k-means, scoring and scale need (n, d) unit rows with the
structure FedDEL meets in endoscopy, written straight to a memory-mappable .npy file:
- semantic modes: `modes` random unit directions;
- videos: a video's direction is its mode's plus Gaussian spread (two videos of one mode have
  cosine ~0.6); a center draws its videos' modes from its own Dirichlet mix (non-IID);
- frames: a video's direction plus per-video noise, so frames of one video have cosine
  0.94-0.997 (about half the videos collapse under the default eta = 0.98, the rest keep
  several frames);
- centers: heavy-tailed sizes (log-normal), each center one contiguous block of rows.
Rows are generated and written a block at a time, so 1M x 384 float32 (1.5 GB) never sits in
RAM at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from feddel.common.errors import ConfigError

MODE_SPREAD = 0.8  # video direction = mode + MODE_SPREAD * N(0, I/d)
FRAME_NOISE = (0.05, 0.25)  # per-video frame noise, uniform in this range
MEAN_VIDEO = 20  # mean frames per video (geometric)
MIX_ALPHA = 0.5  # Dirichlet concentration of a center's mode mix (small = non-IID)
SIZE_SIGMA = 1.0  # log-normal sigma of center sizes
_BLOCK = 65536  # rows generated per step


class SyntheticSet(NamedTuple):
    path: Path  # .npy (n, d) float32 unit rows
    sizes: np.ndarray  # (centers,) int64 rows per center; center c holds one contiguous block

    @property
    def offsets(self) -> np.ndarray:
        """(centers + 1,) row offsets: center c is rows offsets[c]:offsets[c + 1]."""
        return np.concatenate([[0], np.cumsum(self.sizes)])

    def open(self) -> np.ndarray:
        """The rows, memory-mapped read-only."""
        return np.load(self.path, mmap_mode="r")


def center_sizes(n: int, centers: int, rng: np.random.Generator, minimum: int = 20) -> np.ndarray:
    """(centers,) heavy-tailed sizes summing to n, each >= minimum (log-normal shares)."""
    if centers < 1 or n < centers * minimum:
        raise ConfigError(f"n={n} must be >= centers * {minimum} = {centers * minimum}")
    share = rng.lognormal(0.0, SIZE_SIGMA, centers)
    sizes = minimum + np.floor(share / share.sum() * (n - centers * minimum)).astype(np.int64)
    sizes[np.argmax(sizes)] += n - int(sizes.sum())
    return sizes


def write_synthetic(
    path: str | Path, n: int, d: int, centers: int, seed: int, modes: int = 64
) -> SyntheticSet:
    """Write n video-like unit embeddings of dimension d for `centers` centers to `path`."""
    if d < 2 or modes < 1:
        raise ConfigError(f"d={d} must be >= 2 and modes={modes} >= 1")
    rng = np.random.default_rng(seed)
    sizes = center_sizes(n, centers, rng)
    mode_dirs = _unit(rng.standard_normal((modes, d)))
    mixes = rng.dirichlet(np.full(modes, MIX_ALPHA), centers)
    center_of_row = np.repeat(np.arange(centers), sizes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    start = 0
    while start < n:
        stop = min(start + _BLOCK, n)
        rows[start:stop] = _frames(center_of_row[start:stop], mode_dirs, mixes, rng)
        start = stop
    rows.flush()
    del rows
    return SyntheticSet(path, sizes)


def video_shards(sizes: Sequence[int], d: int, seed: int, modes: int = 64) -> list[np.ndarray]:
    """In memory, one (size, d) float64 block of video-like unit rows per center: the same
    structure as `write_synthetic`, for federations of any (small) sizes."""
    rng = np.random.default_rng(seed)
    mode_dirs = _unit(rng.standard_normal((modes, d)))
    mixes = rng.dirichlet(np.full(modes, MIX_ALPHA), len(sizes))
    return [
        _frames(np.full(int(size), c), mode_dirs, mixes, rng).astype(np.float64)
        for c, size in enumerate(sizes)
    ]


def _frames(
    center: np.ndarray, mode_dirs: np.ndarray, mixes: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Rows for one block: consecutive frames share a video until the center changes, a
    geometric draw ends the video, or the block ends (videos never straddle centers)."""
    m, d = len(center), mode_dirs.shape[1]
    new_video = rng.random(m) < 1.0 / MEAN_VIDEO
    new_video[0] = True
    new_video[1:] |= center[1:] != center[:-1]
    video = np.cumsum(new_video) - 1
    starts = np.flatnonzero(new_video)
    owner = center[starts]
    video_modes = np.empty(len(starts), dtype=np.int64)
    for c in np.unique(owner):
        mine = owner == c
        video_modes[mine] = rng.choice(len(mode_dirs), size=int(mine.sum()), p=mixes[c])
    spread = rng.standard_normal((len(starts), d), dtype=np.float32) * (MODE_SPREAD / np.sqrt(d))
    video_dirs = _unit(mode_dirs[video_modes] + spread)
    noise = rng.uniform(*FRAME_NOISE, len(starts)).astype(np.float32)[video]
    frames = rng.standard_normal((m, d), dtype=np.float32)
    frames *= (noise / np.sqrt(d))[:, None]
    frames += video_dirs[video]
    return _unit(frames)


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


class Datasets:
    """Synthetic sets under one folder, written on first use and shared by the benchmarks."""

    def __init__(self, folder: str | Path, seed: int = 0) -> None:
        self.folder, self.seed = Path(folder), seed
        self._made: dict[tuple[int, int, int], SyntheticSet] = {}

    def get(self, n: int, d: int, centers: int) -> SyntheticSet:
        key = (n, d, centers)
        if key not in self._made:
            path = self.folder / f"embeddings-n{n}-d{d}-c{centers}.npy"
            self._made[key] = write_synthetic(path, n, d, centers, self.seed)
        return self._made[key]
