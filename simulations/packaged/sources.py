"""The real medical images that installed packages ship, read once into display frames.

pydicom's test files and the pydicom-data package (CT, MR, ultrasound incl. multi-frame cine,
computed radiography, nuclear medicine), nibabel's test volumes (anatomical MR, fMRI) and
scikit-image's data (a retina fundus photograph, an immunohistochemistry slide).
Nothing is downloaded: a source whose package is missing raises a DataError that says which
package to install.

Each source is a list of display frames (uint8, grey (h, w) or RGB (h, w, 3)), decoded with
FedDEL's own rules (common/data/decode.py), with the truth the federation writes about it:
its semantic mode (modality and anatomy) and its modality.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from feddel.common.data.decode import decode_file
from feddel.common.errors import DataError

_MAX_SIDE = 256  # frames are kept at most this large; the federation writes them at 64 px


@dataclass(frozen=True)
class SourceSpec:
    """Where a source lies and what it shows."""

    name: str
    package: str  # "pydicom", "nibabel" or "skimage"
    file: str  # a pydicom test file name, a nibabel test volume, or a scikit-image data file
    mode: str  # truth: modality and anatomy, e.g. "ct-head"
    modality: str  # truth: CT, MR, US, CR, NM, OP (ophthalmic photo), SM (slide microscopy)
    frames: int | None = None  # a multi-frame source: keep this many, evenly spaced (None: all)


SOURCES: dict[str, SourceSpec] = {
    spec.name: spec
    for spec in (
        SourceSpec("ct-head-a", "pydicom", "693_UNCI.dcm", "ct-head", "CT"),
        SourceSpec("ct-head-b", "pydicom", "J2K_pixelrep_mismatch.dcm", "ct-head", "CT"),
        SourceSpec("ct-abdomen", "pydicom", "explicit_VR-UN.dcm", "ct-body", "CT"),
        SourceSpec("ct-spine", "pydicom", "CT_small.dcm", "ct-body", "CT"),
        SourceSpec("mr-head", "pydicom", "MR_small.dcm", "mr-brain", "MR"),
        SourceSpec("mr-head-cine", "pydicom", "emri_small.dcm", "mr-brain", "MR"),
        SourceSpec("mr-shoulder", "pydicom", "MR2_UNCI.dcm", "mr-shoulder", "MR"),
        SourceSpec(
            "mr-abdomen", "pydicom", "MR-SIEMENS-DICOM-WithOverlays.dcm", "mr-abdomen", "MR"
        ),
        SourceSpec("us-renal", "pydicom", "US1_UNCR.dcm", "us-doppler", "US"),
        SourceSpec("us-echo-doppler", "pydicom", "color-pl.dcm", "us-doppler", "US"),
        SourceSpec("us-obstetric", "pydicom", "OBXXXX1A.dcm", "us-obstetric", "US"),
        SourceSpec("us-abdomen", "pydicom", "gdcm-US-ALOKA-16.dcm", "us-abdomen", "US"),
        SourceSpec("us-echo-a", "pydicom", "color3d_jpeg_baseline.dcm", "us-cardiac", "US", 40),
        SourceSpec("us-echo-b", "pydicom", "examples_ybr_color.dcm", "us-cardiac", "US"),
        SourceSpec("cr-chest", "pydicom", "RG1_UNCI.dcm", "cr-chest", "CR"),
        SourceSpec("cr-tibia", "pydicom", "RG3_UNCI.dcm", "cr-extremity", "CR"),
        SourceSpec("nm-bone", "pydicom", "JPEG2000_UNC.dcm", "nm-bone", "NM"),
        SourceSpec("mr-brain-volume", "nibabel", "anatomical.nii", "mr-brain", "MR"),
        SourceSpec("fmri-a", "nibabel", "example4d.nii.gz", "fmri-epi", "MR"),
        SourceSpec("fundus", "skimage", "retina.jpg", "fundus", "OP"),
        SourceSpec("histology", "skimage", "ihc.png", "histology", "SM"),
    )
}


def source_path(spec: SourceSpec) -> Path:
    """The installed file of a source; DataError naming the package when it is missing."""
    try:
        if spec.package == "pydicom":
            from pydicom.data import get_testdata_file

            found = get_testdata_file(spec.file, download=False)
            path = Path(found) if found else None
        elif spec.package == "nibabel":
            import nibabel

            path = Path(nibabel.__file__).parent / "tests" / "data" / spec.file
        else:
            import skimage.data

            path = Path(skimage.data.data_dir) / spec.file
    except ImportError as exc:
        raise DataError(f"source {spec.name} needs the {spec.package} package; install it") from exc
    if path is None or not path.is_file():
        hint = "pydicom-data" if spec.package == "pydicom" else spec.package
        raise DataError(
            f"source {spec.name}: {spec.file} is not installed; install {hint} (pip install "
            f"{hint}) to build the real-image federation"
        )
    return path


@functools.cache
def source_frames(name: str) -> tuple[np.ndarray, ...]:
    """The display frames of source `name` (read-only uint8 arrays, at most _MAX_SIDE px)."""
    spec = SOURCES[name]
    path = source_path(spec)
    first = decode_file(path)
    count = first.frames if spec.frames is None else min(spec.frames, first.frames)
    picks = np.linspace(0, first.frames - 1, count).round().astype(int) if first.frames > 1 else [0]
    frames = []
    for index in picks:
        pixels = decode_file(path, frame=int(index)).pixels
        frames.append(_shrink(_grey_if_colourless(pixels)))
    for frame in frames:
        frame.flags.writeable = False
    return tuple(frames)


def _grey_if_colourless(pixels: np.ndarray) -> np.ndarray:
    """(h, w, 3) -> (h, w) when the three channels are equal (decode replicates grey)."""
    if (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all():
        return np.ascontiguousarray(pixels[..., 0])
    return pixels


def _shrink(pixels: np.ndarray) -> np.ndarray:
    height, width = pixels.shape[:2]
    scale = _MAX_SIDE / max(height, width)
    if scale >= 1:
        return pixels
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))
