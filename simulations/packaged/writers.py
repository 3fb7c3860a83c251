"""Bytes of the formats a hospital exports: PNG, JPEG, DICOM (a series of single-frame files or
one multi-frame file) and NIfTI. Same pixels and ids -> same bytes (no clocks, no random UIDs)."""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

JPEG_QUALITY = 92


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def uid(*parts: object) -> str:
    """A DICOM UID derived from `parts` (the same parts, the same UID)."""
    return generate_uid(entropy_srcs=[str(part) for part in parts])


def dicom_bytes(
    frames: list[np.ndarray], modality: str, series_uid: str, instance: int, study: str
) -> bytes:
    """One DICOM file (Secondary Capture, 8-bit, uncompressed) holding `frames`: grey (h, w) as
    MONOCHROME2, colour (h, w, 3) as RGB; more than one frame makes a multi-frame object."""
    first = frames[0]
    colour = first.ndim == 3
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid(series_uid, instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid(study)
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientID = study
    ds.InstanceNumber = instance + 1
    ds.Rows, ds.Columns = int(first.shape[0]), int(first.shape[1])
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(np.stack(frames)).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def nifti_gz_bytes(volume: np.ndarray, zooms: tuple[float, float, float]) -> bytes:
    """A NIfTI-1 volume (x, y, z), gzipped without a timestamp so the bytes are reproducible."""
    image = nib.Nifti1Image(volume, np.diag([*zooms, 1.0]))
    image.header.set_zooms(zooms)
    return gzip.compress(image.to_bytes(), mtime=0)
