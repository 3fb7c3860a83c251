"""NIfTI volumes (.nii, .nii.gz) as stacks of 2-D frames: which axis, which window, read-only.

A volume enters the pool slice by slice, each slice one sample, so the rules below decide what
every center's encoder sees:

- slices are cut along the acquisition axis: the header's slice dimension when it names one,
  else the axis with the thickest voxels (ties: the last spatial axis);
- a 4-D series (fMRI, diffusion) contributes its first volume only: later volumes repeat the
  same anatomy and would fill the pool with near-copies;
- CT (at least 1% of the voxels are air, below -500, so it is in Hounsfield units; a stray
  negative voxel of an MR volume does not count) is windowed at soft tissue, level 40 / width
  400 HU; anything else (MR, PET, ...) at the 0.5th and 99.5th
  percentiles of the whole volume, so a slice keeps its brightness relative to its neighbours
  (an empty end slice stays dark instead of being stretched into noise);
- a slice is shown with its first axis running left to right (np.rot90), as viewers do.

Decoding a slice windows the whole volume once; the last two volumes are kept (uint8) so that
reading a volume's slices in order costs one read.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

import nibabel as nib
import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")
CT_AIR_HU = -500.0  # a volume with values below this holds air in Hounsfield units: CT
CT_AIR_PERCENTILE = 1.0  # ... when at least this percentage of its voxels does
CT_WINDOW = (-160.0, 240.0)  # level 40, width 400 HU: soft tissue
PERCENTILE_WINDOW = (0.5, 99.5)
_CACHED_VOLUMES = 2
_lock = threading.Lock()


class VolumeError(ValueError):
    """A NIfTI file whose header or data cannot give 2-D slices; the message is the reason."""


def is_nifti(path: str | os.PathLike[str]) -> bool:
    """True for a file name ending in .nii or .nii.gz (any case)."""
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def nifti_frames(path: str | os.PathLike[str], max_pixels: int) -> tuple[int, tuple[int, int]]:
    """(slices along the acquisition axis, (height, width) of a slice), from the header only.

    Raises VolumeError for a header without at least two spatial axes, or a volume of more
    than `max_pixels` voxels (its window needs the whole volume in memory).
    """
    image = _load(path)
    shape = tuple(int(n) for n in image.shape[:3])
    if len(shape) < 2 or min(shape) < 1:
        raise VolumeError(f"NIfTI of shape {image.shape} has no 2-D slices")
    if len(shape) == 2:
        return 1, (shape[1], shape[0])
    voxels = int(np.prod(shape))
    if voxels > max_pixels:
        raise VolumeError(f"volume too large ({'x'.join(map(str, shape))} > {max_pixels} voxels)")
    axis = slice_axis(image)
    rest = [n for i, n in enumerate(shape) if i != axis]
    return shape[axis], (rest[1], rest[0])  # rot90: the second remaining axis becomes the rows


def nifti_slice(path: str | os.PathLike[str], frame: int | None, max_pixels: int) -> np.ndarray:
    """Slice `frame` (None: the middle one) of a NIfTI volume as (h, w) uint8, windowed."""
    path = Path(path)
    stat = path.stat()
    with _lock:  # the scan decodes on threads: read each volume once
        volume, axis = _windowed(str(path.resolve()), stat.st_size, stat.st_mtime_ns, max_pixels)
    count = volume.shape[axis]
    index = count // 2 if frame is None else frame
    if not 0 <= index < count:
        raise VolumeError(f"slice {index} out of range (the volume has {count})")
    return np.ascontiguousarray(np.rot90(np.take(volume, index, axis=axis)))


def slice_axis(image: nib.spatialimages.SpatialImage) -> int:
    """The acquisition axis of a 3-D (or 4-D) image: header slice dim, else thickest voxels."""
    try:
        _, _, declared = image.header.get_dim_info()
    except (AttributeError, TypeError):  # a format without dim info
        declared = None
    if declared is not None and 0 <= declared < 3:
        return int(declared)
    zooms = np.asarray(image.header.get_zooms()[:3], dtype=np.float64)
    zooms = np.where(np.isfinite(zooms) & (zooms > 0), zooms, 1.0)
    return int(np.flatnonzero(zooms == zooms.max())[-1])


def window(volume: np.ndarray) -> np.ndarray:
    """A volume's values -> uint8 by the module's rules (CT: HU window; else percentiles)."""
    values = np.nan_to_num(volume.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if values.size and float(np.percentile(values, CT_AIR_PERCENTILE)) < CT_AIR_HU:
        low, high = CT_WINDOW
    else:
        low, high = (float(v) for v in np.percentile(values, PERCENTILE_WINDOW))
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _load(path: str | os.PathLike[str]) -> nib.spatialimages.SpatialImage:
    try:
        return nib.load(os.fspath(path))
    except (nib.filebasedimages.ImageFileError, ValueError, EOFError) as exc:
        raise VolumeError(f"not a readable NIfTI volume ({exc})") from exc


@functools.lru_cache(maxsize=_CACHED_VOLUMES)
def _windowed(path: str, size: int, mtime_ns: int, max_pixels: int) -> tuple[np.ndarray, int]:
    """The windowed uint8 volume (read-only) and its slice axis, cached by path, size and
    mtime: the scan and the embedding read a volume's slices in order."""
    nifti_frames(path, max_pixels)  # the header's checks, before any voxel is read
    image = _load(path)
    extra = len(image.shape) - 3  # 4-D and up: the first volume (see the module docstring)
    first = (slice(None),) * 3 + (0,) * extra  # the proxy reads that volume only
    data = np.asanyarray(image.dataobj[first] if extra > 0 else image.dataobj)
    volume = window(data if data.ndim == 3 else data[:, :, None])
    volume.flags.writeable = False
    return volume, slice_axis(image) if image.ndim >= 3 else 2
