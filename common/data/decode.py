"""Decode one image file (PNG/JPEG/BMP/TIFF, DICOM or NIfTI) to 8-bit RGB, by content, read-only.

Every format ends as the same thing the encoder and the quality metrics expect: an (h, w, 3)
uint8 RGB array. The rules that get it there are fixed so that a center's pool does not depend on
how a scanner exported its files:

- grayscale is replicated to three channels; RGBA/LA/P with transparency are composited on black;
- 16- and 32-bit grayscale (I;16, I, F) is min-max scaled to 0..255 by the image's own range (a
  constant image is scaled by the full 16-bit range instead);
- a file may hold several frames (a multi-frame DICOM, a NIfTI volume): `frame` picks one,
  None the middle one;
- DICOM: palette colour through its LUT; monochrome
  through the modality LUT (rescale slope/intercept) and the VOI LUT or window when present, then
  min-max scaled, and MONOCHROME1 (high = dark) inverted so that bright is always dense tissue;
  YBR colour is converted to RGB by pydicom;
- NIfTI (.nii, .nii.gz, by name: gzip has no NIfTI marker): slices along the acquisition axis,
  windowed as common/data/volume.py says.

The format is read from the bytes, never the extension: a PNG named .jpg decodes as a PNG. EXIF
orientation is not applied, so a mask stays aligned with its image's stored pixel grid. How much
memory a decode may take, and how a large image is decoded reduced: common/data/budget.py.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.pixels import pixel_array as dicom_pixel_array
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from feddel.common.data.budget import (
    FULL_SIZE_BYTES,
    MAX_DECODE_BYTES,
    MAX_PIXELS,
    reduce_array,
    reduce_image,
    reduction,
    shared_budget,
    stored_bytes_per_pixel,
)
from feddel.common.data.volume import VolumeError, is_nifti, nifti_frames, nifti_slice
from feddel.common.errors import DataError

DICOM_MAGIC = b"DICM"
DICOM_MAGIC_OFFSET = 128
_PIXEL_ELEMENTS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_FORMAT_NAMES = {"MPO": "JPEG"}  # multi-picture JPEGs (some cameras) are JPEGs to a user

REASON_ZERO_BYTES = "zero-byte file"
REASON_CORRUPT = "truncated or corrupt image data"
REASON_UNKNOWN_FORMAT = "not a recognized image format"
REASON_NO_PIXELS = "DICOM without pixel data"
REASON_CORRUPT_DICOM = "truncated or corrupt DICOM data"
REASON_CORRUPT_NIFTI = "truncated or corrupt NIfTI data"


class UnreadableImage(DataError):
    """A file that should be an image but cannot be decoded; `reason` is short and groupable."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self) -> tuple[type[UnreadableImage], tuple[str, str]]:
        # DataLoader workers pickle exceptions; the default would call __init__(message).
        return (UnreadableImage, (self.path, self.reason))


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image: pixels (height, width, 3) uint8 RGB and where they came from."""

    pixels: np.ndarray
    modality: str  # "PNG", "JPEG", "TIFF", "BMP", ..., "DICOM:<Modality>" or "NIFTI"
    stored_size: tuple[int, int] | None = None  # (width, height) in the file, when reduced
    frames: int = 1  # frames the file holds (multi-frame DICOM, NIfTI slices)
    series: str = ""  # DICOM SeriesInstanceUID, "" when the file names none

    @property
    def width(self) -> int:
        """Width as stored in the file (the pixels may be a reduced copy)."""
        return self.stored_size[0] if self.stored_size else int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return self.stored_size[1] if self.stored_size else int(self.pixels.shape[0])


def has_dicom_magic(path: str | os.PathLike[str]) -> bool:
    """True when the file carries the DICOM Part 10 preamble marker ("DICM" at byte 128)."""
    with open(path, "rb") as handle:
        handle.seek(DICOM_MAGIC_OFFSET)
        return handle.read(len(DICOM_MAGIC)) == DICOM_MAGIC


def decode_file(
    path: str | os.PathLike[str],
    max_pixels: int = MAX_PIXELS,
    *,
    reduce_to: int | None = None,
    frame: int | None = None,
) -> DecodedImage:
    """Decode one frame of an image file to RGB uint8 (see the module docstring for the rules).

    `reduce_to`: the side the caller will resize to; an image far larger is then decoded
    reduced (common/data/budget.py), and `width`/`height` still report the stored size.
    `frame` (0-based) picks a frame of a multi-frame file, None its middle one; a single-frame
    file has only frame 0.
    Raises UnreadableImage (never anything else for a bad file) when the bytes cannot be decoded,
    the frame does not exist, or the image has more than `max_pixels` pixels or more than
    MAX_DECODE_BYTES of stored pixels, before allocating them.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UnreadableImage(path, REASON_ZERO_BYTES)
        if is_nifti(path):
            return _decode_nifti(path, max_pixels, frame)
        if has_dicom_magic(path):
            return _decode_dicom(path, max_pixels, reduce_to, force=False, frame=frame)
        try:
            decoded = _decode_pil(path, max_pixels, reduce_to)
        except UnreadableImage as exc:
            if exc.reason == REASON_UNKNOWN_FORMAT and path.suffix.lower() == ".dcm":
                # DICOM without preamble
                return _decode_dicom(path, max_pixels, reduce_to, force=True, frame=frame)
            raise
        _check_frame(path, frame, 1)
        return decoded
    except OSError as exc:  # the file itself: permissions, vanished, I/O error
        raise UnreadableImage(path, f"cannot open file ({exc.strerror or exc})") from exc


def resize_square(pixels: np.ndarray, size: int, resample: Image.Resampling) -> np.ndarray:
    """(h, w[, c]) uint8 -> (size, size[, c]) uint8.

    Aspect ratio is not preserved: ViT inputs are square and every center must feed the encoder
    the same geometry; stretching keeps the whole field of view (cropping would drop lesions at
    the border, padding would waste patches on black).
    """
    return np.asarray(Image.fromarray(pixels).resize((size, size), resample))


def load_image(
    path: str | Path, size: int, max_pixels: int = MAX_PIXELS, frame: int | None = None
) -> np.ndarray:
    """Decode (one frame, see decode_file) and resize to (size, size, 3) uint8 RGB (PIL bilinear
    with antialiasing).

    Raises UnreadableImage naming the file when it cannot be decoded.
    """
    _check_size(size)
    pixels = decode_file(path, max_pixels, reduce_to=size, frame=frame).pixels
    return resize_square(pixels, size, Image.Resampling.BILINEAR)


def load_mask(path: str | Path, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a segmentation mask to (size, size) bool, nearest-neighbour resized.

    A pixel is foreground when its brightest channel is above half of the mask's maximum, so
    0/1, 0/255 and JPEG-compressed (noisy) masks all give the same answer; all-zero is empty.
    """
    _check_size(size)
    gray = decode_file(path, max_pixels, reduce_to=size).pixels.max(axis=2)
    peak = int(gray.max())
    binary = (gray > peak / 2) if peak > 0 else np.zeros_like(gray, dtype=bool)
    resized = resize_square(binary.astype(np.uint8) * 255, size, Image.Resampling.NEAREST)
    return resized > 0


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise DataError(f"image size {size!r} must be a positive integer (pixels per side)")


def _check_frame(path: Path, frame: int | None, frames: int) -> int:
    """The 0-based frame to decode: `frame`, or the middle one when None."""
    index = frames // 2 if frame is None else frame
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < frames:
        raise UnreadableImage(path, f"no frame {frame!r} (the file holds {frames})")
    return index


def _too_large(path: Path, width: int, height: int, max_pixels: int) -> UnreadableImage:
    return UnreadableImage(
        path, f"too large ({width}x{height} > {max_pixels} pixels; downscale it)"
    )


def _decode_cost(path: Path, width: int, height: int, bytes_per_pixel: int, factor: int) -> int:
    """Bytes a decode holds: the stored pixels, plus full-size conversions when not reduced.
    Refuses a file whose stored pixels alone exceed MAX_DECODE_BYTES."""
    stored = width * height * bytes_per_pixel
    if stored > MAX_DECODE_BYTES:
        raise UnreadableImage(
            path,
            f"too large to decode ({width}x{height} at {bytes_per_pixel} bytes a pixel > "
            f"{MAX_DECODE_BYTES // 10**6} MB; downscale it)",
        )
    return stored if factor > 1 else max(stored, width * height * FULL_SIZE_BYTES)


# --- PIL formats ------------------------------------------------------------------------------


def _decode_pil(path: Path, max_pixels: int, reduce_to: int | None) -> DecodedImage:
    with _bad_data(path, REASON_UNKNOWN_FORMAT):  # UnidentifiedImageError and plugin errors
        image = _open_pil(path, max_pixels)
    with image:
        stored = image.size
        if image.width * image.height > max_pixels:
            raise _too_large(path, image.width, image.height, max_pixels)
        if reduce_to is not None and image.format == "JPEG":
            _draft(image, reduce_to)
        factor = reduction(*image.size, reduce_to)
        bytes_per_pixel = stored_bytes_per_pixel(image.mode)
        cost = _decode_cost(path, image.width, image.height, bytes_per_pixel, factor)
        modality = _FORMAT_NAMES.get(image.format or "", image.format or "unknown")
        with shared_budget().hold(cost):
            with _bad_data(path, REASON_CORRUPT):
                image.load()
            pixels = _pil_to_rgb(_reduced(image, factor, path), path)
        return DecodedImage(pixels, modality, stored if pixels.shape[1::-1] != stored else None)


def _open_pil(path: Path, max_pixels: int) -> Image.Image:
    """Image.open (lazy: header only) once the header's size is within `max_pixels`, so that
    PIL's own bomb check (a warning on the user's terminal from 89 Mpx, an error from 179 Mpx)
    only sees images this module would decode anyway."""
    width, height = _header_size(path)
    if width * height > max_pixels:
        raise _too_large(path, width, height, max_pixels)
    try:
        return Image.open(path)
    except Image.DecompressionBombError as exc:  # only when max_pixels is above PIL's limit
        raise _too_large(path, width, height, max_pixels) from exc


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) read by the format plugin alone, without PIL's bomb check in Image.open."""
    Image.init()
    with open(path, "rb") as handle:
        prefix = handle.read(16)
        for name in Image.ID:
            factory, accept = Image.OPEN[name]
            if accept is not None and not accept(prefix):
                continue
            handle.seek(0)
            try:
                return factory(handle, str(path)).size
            except Exception:  # not this format; try the next one as Image.open does
                continue
    return (0, 0)


def _draft(image: Image.Image, reduce_to: int) -> None:
    """Have a JPEG decode at 1/2, 1/4 or 1/8 scale in its inverse DCT, for a fraction of the
    work, when a small image is asked for: the largest scale that keeps the shorter side at
    least twice `reduce_to` (as `reduction` does for other formats), whatever the image's size.
    A 720x576 video frame for a 64 px encoder decodes at 1/4 scale, about 3x faster."""
    shrink = min(image.size) // (2 * reduce_to)
    if shrink >= 2:
        image.draft(image.mode, (image.width // shrink, image.height // shrink))


def _reduced(image: Image.Image, factor: int, path: Path) -> Image.Image:
    if factor == 1:
        return image
    try:
        return reduce_image(image, factor)
    except ValueError as exc:  # a mode PIL cannot convert or average (16-bit colour TIFF)
        raise UnreadableImage(path, f"unsupported pixel mode {image.mode}") from exc


def _pil_to_rgb(image: Image.Image, path: Path) -> np.ndarray:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _gray_to_rgb(_scale_to_uint8(np.asarray(image), full_range=65535))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        return (rgba[..., :3] * rgba[..., 3:] // 255).astype(np.uint8)
    try:
        return np.asarray(image.convert("RGB"))
    except ValueError as exc:  # a mode PIL cannot convert (e.g. 16-bit colour TIFF)
        raise UnreadableImage(path, f"unsupported pixel mode {image.mode}") from exc


# --- DICOM ------------------------------------------------------------------------------------


def _decode_dicom(
    path: Path, max_pixels: int, reduce_to: int | None, force: bool, frame: int | None
) -> DecodedImage:
    with _bad_data(path, REASON_UNKNOWN_FORMAT if force else REASON_CORRUPT_DICOM):
        ds = pydicom.dcmread(path, defer_size="64 KB", force=force)
    if not any(name in ds for name in _PIXEL_ELEMENTS) or "Rows" not in ds:
        raise UnreadableImage(path, REASON_NO_PIXELS)
    with _bad_data(path, REASON_CORRUPT_DICOM):  # malformed values: '1A' frames, ...
        from_file = not force and "TransferSyntaxUID" in getattr(ds, "file_meta", {})
        _set_transfer_syntax(ds)
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = max(1, int(ds.get("NumberOfFrames") or 1))
        modality = f"DICOM:{ds.get('Modality') or 'unknown'}"
        series = str(ds.get("SeriesInstanceUID") or "")
        sample_bytes = int(ds.get("SamplesPerPixel") or 1) * -(-int(ds.BitsAllocated) // 8)
    if rows * columns > max_pixels:
        raise _too_large(path, columns, rows, max_pixels)
    index = _check_frame(path, frame, frames)
    factor = reduction(columns, rows, reduce_to)
    cost = _decode_cost(path, columns, rows, sample_bytes, factor)
    _check_decoder(path, ds)
    palette = str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR"
    with _bad_data(path, REASON_CORRUPT_DICOM), shared_budget().hold(cost):
        # From the path, pydicom reads only the frame it decodes; a raw file (no preamble or no
        # transfer syntax) needs the dataset, and so loads its whole pixel element.
        values = dicom_pixel_array(path if from_file else ds, index=index)
        if factor > 1:  # on the stored values; palette indices are picked, not averaged
            values = reduce_array(values, factor, average=not palette)
        pixels = _dicom_to_rgb(values, ds)
    stored = (columns, rows) if factor > 1 else None
    return DecodedImage(pixels, modality, stored, frames, series)


def _set_transfer_syntax(ds: pydicom.Dataset) -> None:
    """Give a raw dataset (no preamble or no syntax) the uncompressed syntax it was read with."""
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian
            if implicit
            else ExplicitVRLittleEndian
            if little
            else ExplicitVRBigEndian
        )
    ds.file_meta = meta


def _check_decoder(path: Path, ds: pydicom.Dataset) -> None:
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise UnreadableImage(
            path,
            f"unsupported DICOM compression ({syntax.name}); install pylibjpeg and its plugins",
        )


def _dicom_to_rgb(frame: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
    if frame.ndim == 3:  # colour (YBR already converted to RGB by pydicom)
        if frame.dtype == np.uint8:
            return np.ascontiguousarray(frame[..., :3])
        return _scale_to_uint8(frame[..., :3], full_range=None)
    values = apply_voi_lut(apply_modality_lut(frame, ds), ds)
    gray = _scale_to_uint8(values, full_range=None)
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return _gray_to_rgb(gray)


# --- NIfTI ------------------------------------------------------------------------------------


def _decode_nifti(path: Path, max_pixels: int, frame: int | None) -> DecodedImage:
    with _bad_data(path, REASON_CORRUPT_NIFTI):
        try:
            frames, (height, width) = nifti_frames(path, max_pixels)
            if height * width > max_pixels:
                raise _too_large(path, width, height, max_pixels)
            gray = nifti_slice(path, _check_frame(path, frame, frames), max_pixels)
        except VolumeError as exc:
            raise UnreadableImage(path, str(exc)) from exc
    return DecodedImage(_gray_to_rgb(gray), "NIFTI", frames=frames)


# --- shared helpers ---------------------------------------------------------------------------


@contextmanager
def _bad_data(path: Path, reason: str) -> Iterator[None]:
    """Map whatever a third-party decoder raises on bad bytes to UnreadableImage(reason).

    PIL and pydicom raise many exception types (ValueError, SyntaxError, struct.error, OSError
    without errno, ...) on damaged files; a scan over a hospital's archive must not stop on one.
    OS-level failures (an errno: permissions, I/O) propagate for decode_file to report.
    """
    try:
        yield
    except UnreadableImage:
        raise
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise UnreadableImage(path, reason) from exc


# --- shared pixel arithmetic ------------------------------------------------------------------


def _scale_to_uint8(values: np.ndarray, full_range: int | None) -> np.ndarray:
    """Min-max scale any numeric array to uint8; a constant array maps by `full_range` (or 0).
    Non-finite values (NaN, inf) read as 0 for the range and are black."""
    low, high = float(np.min(values)), float(np.max(values))
    if not (math.isfinite(low) and math.isfinite(high)):
        finite = np.isfinite(values)
        scaled = _scale_to_uint8(np.where(finite, values, 0.0), full_range)
        return np.where(finite, scaled, 0).astype(np.uint8)
    if high > low:
        scaled = (values.astype(np.float32) - low) * (255.0 / (high - low))
    elif full_range:
        scaled = np.full(values.shape, low * 255.0 / full_range, dtype=np.float32)
    else:
        scaled = np.zeros(values.shape, dtype=np.float32)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)
