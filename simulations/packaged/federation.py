"""`build_packaged_federation`: seven hospitals' folders of real medical images, with truth.

The layout is fixed (`CENTERS`); the seed draws the views, the defects and the copies. Each
center mixes the modalities a hospital of its kind holds, in the formats it would export:
DICOM series (one file per slice, sharing a SeriesInstanceUID), multi-frame DICOM (a cine), NIfTI
volumes (verbatim from nibabel, and a second fMRI run written here with damaged slices), folders
of PNG slices or cine frames, JPEG photographs. About 7% of each center's samples carry a
defect (frames.DEFECTS), about 3% are exact copies in `exports/` folders, and one file is
truncated. `<center>/truth.csv` names, per sample (`file`, or `file#frame` for one frame of a
multi-frame file): its series, semantic mode, modality, defect ("" when clean), the sample it
copies and whether it is corrupt. Truth is for evaluation only; curation never reads it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from feddel.common.data.decode import decode_file
from feddel.common.errors import ConfigError
from feddel.common.io import atomic_write_bytes, write_csv, write_json
from feddel.simulations.packaged.frames import TILE_CROP, VIEW_CROP, apply_defect, fit, view
from feddel.simulations.packaged.sources import SOURCES, source_frames, source_path
from feddel.simulations.packaged.writers import (
    dicom_bytes,
    jpeg_bytes,
    nifti_gz_bytes,
    png_bytes,
    uid,
)
from feddel.simulations.synth.federation import prepare_output

GENERATOR_VERSION = "packages-1.0"
TRUTH_COLUMNS = ("file", "series", "mode", "modality", "disruptive", "duplicate_of", "corrupt")
DEFECT_RATE = 0.07  # of each center's samples
COPY_RATE = 0.03
CORRUPT_CENTER = "center-01"
MIN_SIZE, MAX_SIZE = 32, 256
_CORRUPT_KEEP = 0.6  # fraction of the bytes a truncated file keeps
_US_DEFECTS = ("no-contact", "no-contact", "blur")
_OTHER_DEFECTS = ("blank", "blur", "blur", "saturated")

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Item:
    """One acquisition a center holds. `how`: views (of one image), tiles (of one slide),
    sequence (every frame of a multi-frame source), copy (the package file verbatim), run2 (the
    second volume of a 4-D source, written as its own NIfTI). `fmt`: dicom (one file per
    frame), cine (one multi-frame DICOM), png, jpeg, or nifti."""

    source: str
    path: str  # a folder for one-file-per-frame formats, else the file
    how: str
    fmt: str
    count: int = 0  # views or tiles


CENTERS: tuple[tuple[str, tuple[Item, ...]], ...] = (
    (
        "center-01",  # university radiology: DICOM series
        (
            Item("ct-head-a", "ct/head-1", "views", "dicom", 18),
            Item("ct-abdomen", "ct/abdomen-1", "views", "dicom", 14),
            Item("mr-head-cine", "mr/emri_small.dcm", "copy", "cine"),
            Item("mr-shoulder", "mr/shoulder-1", "views", "dicom", 12),
            Item("cr-chest", "cr/chest-1", "views", "dicom", 12),
        ),
    ),
    (
        "center-02",  # neuroimaging research: NIfTI volumes and PNG slices
        (
            Item("mr-brain-volume", "volumes/anatomical.nii", "copy", "nifti"),
            Item("fmri-a", "volumes/example4d.nii.gz", "copy", "nifti"),
            Item("fmri-a", "volumes/example4d_run2.nii.gz", "run2", "nifti"),
            Item("mr-brain-volume", "slices/anatomical", "sequence", "png"),
            Item("mr-head", "slices/mr-small", "views", "png", 8),
        ),
    ),
    (
        "center-03",  # cardiology: ultrasound cine and Doppler
        (
            Item("us-echo-a", "echo/cine-a.dcm", "sequence", "cine"),
            Item("us-echo-b", "echo/cine-b", "sequence", "png"),
            Item("us-echo-doppler", "doppler/echo-1", "views", "dicom", 10),
            Item("us-renal", "doppler/renal-1", "views", "dicom", 10),
        ),
    ),
    (
        "center-04",  # women's health and general ultrasound, a few radiographs
        (
            Item("us-obstetric", "us/ob-1", "views", "dicom", 16),
            Item("us-abdomen", "us/abdomen-1", "views", "dicom", 14),
            Item("cr-tibia", "xray/tibia-1", "views", "png", 12),
        ),
    ),
    (
        "center-05",  # ophthalmology and pathology: colour photographs and slides
        (
            Item("fundus", "fundus/patient-1", "views", "jpeg", 24),
            Item("histology", "pathology/slide-1", "tiles", "png", 36),
        ),
    ),
    (
        "center-06",  # community hospital: a bit of everything
        (
            Item("ct-spine", "ct/spine-1", "views", "dicom", 10),
            Item("ct-head-b", "ct/head-2", "views", "dicom", 12),
            Item("mr-abdomen", "mr/abdomen-1", "views", "dicom", 12),
            Item("nm-bone", "nm/bone-1", "views", "png", 8),
            Item("cr-chest", "xray/chest-2", "views", "png", 12),
        ),
    ),
    (
        "center-07",  # small clinic
        (
            Item("us-renal", "us/renal-2", "views", "dicom", 6),
            Item("cr-tibia", "xray/tibia-2", "views", "png", 4),
            Item("fundus", "fundus/patient-2", "views", "jpeg", 6),
            Item("mr-head", "mr/head-2", "views", "dicom", 6),
        ),
    ),
)


@dataclass
class _Frames:
    """An item's frames before writing, with the defect of each ("" when clean)."""

    item: Item
    frames: list[np.ndarray]
    defects: list[str]


def build_packaged_federation(
    out: Path, seed: int = 0, size: int = 64, progress: Progress | None = None
) -> dict:
    """Write the real-image federation to `out` and return federation.json's content.

    Same arguments -> the same files. `out` must be empty, missing, or a federation written
    here with the same arguments (then it is rewritten).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed={seed!r} must be a non-negative integer")
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"size={size!r} must be an integer in [{MIN_SIZE}, {MAX_SIZE}] pixels")
    out = Path(out)
    args = {"generator_version": GENERATOR_VERSION, "centers": len(CENTERS), "scale": "packages"}
    prepare_output(out, {**args, "seed": seed, "size": size})
    summaries = []
    for done, (name, items) in enumerate(CENTERS, start=1):
        rng = np.random.default_rng(np.random.SeedSequence([seed, done]))
        summaries.append(_write_center(out / name, name, items, size, rng))
        if progress is not None:
            progress(done, len(CENTERS))
    content = {
        **args,
        "source": "packages",
        "seed": seed,
        "size": size,
        "centers": summaries,
        "total_pool": sum(s["pool"] for s in summaries),
    }
    write_json(out / "federation.json", content)
    return content


def _write_center(folder: Path, name: str, items: tuple[Item, ...], size: int, rng) -> dict:
    planned = [_frames(item, size, rng) for item in items]
    _assign_defects(planned, rng)
    rows: list[list[str]] = []
    for plan in planned:
        rows.extend(_write_item(folder, name, plan, size))
    rows.extend(_write_copies(folder, rows, rng))
    if name == CORRUPT_CENTER:
        rows.append(_write_corrupt(folder, name, planned, size, rng))
    rows.sort(key=lambda row: row[0])
    write_csv(folder / "truth.csv", TRUTH_COLUMNS, rows)
    return {
        "name": name,
        "pool": len(rows),
        "test": 0,
        "disruptive": sum(bool(row[4]) for row in rows),
        "duplicates": sum(bool(row[5]) for row in rows),
        "corrupt": sum(row[6] == "1" for row in rows),
        "modes": dict(sorted(Counter(row[2] for row in rows).items())),
        "modalities": dict(sorted(Counter(row[3] for row in rows).items())),
    }


def _frames(item: Item, size: int, rng: np.random.Generator) -> _Frames:
    """The item's frames at `size` px (uint8), or its raw slices for a run2 volume; none for a
    verbatim copy (its frames are counted when it is written)."""
    source = source_frames(item.source) if item.how != "copy" else ()
    if item.how in ("views", "tiles"):
        crop = VIEW_CROP if item.how == "views" else TILE_CROP
        middle = source[len(source) // 2]
        frames = [view(middle, size, rng, crop) for _ in range(item.count)]
    elif item.how == "sequence":
        frames = [fit(frame, size) for frame in source]
    elif item.how == "run2":
        volume = np.asanyarray(nib.load(source_path(SOURCES[item.source])).dataobj)[..., 1]
        frames = [volume[:, :, z].astype(np.float32) for z in range(volume.shape[2])]
    else:
        frames = []
    return _Frames(item, frames, [""] * len(frames))


def _assign_defects(planned: list[_Frames], rng: np.random.Generator) -> None:
    """Ruin about DEFECT_RATE of the center's samples, drawn among the frames written here."""
    total = sum(len(p.frames) or _copy_frames(p.item) for p in planned)
    slots = [(i, j) for i, p in enumerate(planned) for j in range(len(p.frames))]
    count = min(len(slots), max(1, round(DEFECT_RATE * total)))
    for pick in rng.choice(len(slots), size=count, replace=False):
        i, j = slots[pick]
        plan = planned[i]
        ultrasound = SOURCES[plan.item.source].modality == "US"
        kind = str(rng.choice(_US_DEFECTS if ultrasound else _OTHER_DEFECTS))
        plan.defects[j] = kind
        if plan.item.how == "run2":
            plan.frames[j] = _volume_defect(plan.frames[j], kind)
        else:
            plan.frames[j] = apply_defect(plan.frames[j], kind, rng)


def _volume_defect(values: np.ndarray, kind: str) -> np.ndarray:
    """A defect on a raw volume slice (before the reader's window): nothing, smeared, or so
    bright that the volume's window clips it."""
    if kind == "blank":
        return np.zeros_like(values)
    if kind == "blur":
        return ndimage.gaussian_filter(values, 2.0 * values.shape[0] / 64)
    return values * 4.0


def _copy_frames(item: Item) -> int:
    return decode_file(source_path(SOURCES[item.source])).frames


def _write_item(folder: Path, center: str, plan: _Frames, size: int) -> list[list[str]]:
    item = plan.item
    spec = SOURCES[item.source]
    series = f"{center}:{item.path}"
    target = folder / item.path

    def row(locator: str, defect: str) -> list[str]:
        return [locator, series, spec.mode, spec.modality, defect, "", "0"]

    if item.how == "copy":
        atomic_write_bytes(target, source_path(spec).read_bytes())
        frames = _copy_frames(item)
        return [row(item.path if frames == 1 else f"{item.path}#{f}", "") for f in range(frames)]
    if item.fmt == "nifti":
        volume = np.stack(plan.frames, axis=2).astype(np.int16)
        atomic_write_bytes(target, nifti_gz_bytes(volume, (2.0, 2.0, 2.2)))
        return [row(f"{item.path}#{z}", d) for z, d in enumerate(plan.defects)]
    if item.fmt == "cine":
        series_uid = uid(series)
        data = dicom_bytes(plan.frames, spec.modality, series_uid, 0, center)
        atomic_write_bytes(target, data)
        return [row(f"{item.path}#{f}", d) for f, d in enumerate(plan.defects)]
    rows = []
    for index, (frame, defect) in enumerate(zip(plan.frames, plan.defects, strict=True)):
        file = f"{item.path}/{_frame_name(item, index)}"
        atomic_write_bytes(
            folder / file, _encode(item, spec.modality, series, frame, index, center)
        )
        rows.append(row(file, defect))
    return rows


def _frame_name(item: Item, index: int) -> str:
    stem = {"views": "view", "tiles": "tile"}.get(item.how, "slice")
    suffix = {"dicom": "dcm", "png": "png", "jpeg": "jpg"}[item.fmt]
    return f"{stem}_{index:03d}.{suffix}"


def _encode(
    item: Item, modality: str, series: str, frame: np.ndarray, index: int, center: str
) -> bytes:
    if item.fmt == "dicom":
        return dicom_bytes([frame], modality, uid(series), index, center)
    return jpeg_bytes(frame) if item.fmt == "jpeg" else png_bytes(frame)


def _write_copies(folder: Path, rows: list[list[str]], rng: np.random.Generator) -> list[list[str]]:
    """Exact copies of about COPY_RATE of the single-frame files, in an `exports/` folder beside
    the original's folder (`ct/exports/head-1_view_003.dcm`)."""
    singles = [row for row in rows if "#" not in row[0]]
    count = min(len(singles), round(COPY_RATE * len(rows)))
    copies = []
    for pick in sorted(rng.choice(len(singles), size=count, replace=False)):
        original = singles[pick]
        top, _, rest = original[0].partition("/")
        copy = f"{top}/exports/{rest.replace('/', '_')}"
        atomic_write_bytes(folder / copy, (folder / original[0]).read_bytes())
        copies.append([copy, *original[1:5], original[0], "0"])
    return copies


def _write_corrupt(
    folder: Path, center: str, planned: list[_Frames], size: int, rng: np.random.Generator
) -> list[str]:
    """One more slice of the center's first DICOM series, cut short as an interrupted copy is."""
    plan = next(p for p in planned if p.item.fmt == "dicom")
    spec = SOURCES[plan.item.source]
    series = f"{center}:{plan.item.path}"
    index = len(plan.frames)
    frame = view(source_frames(plan.item.source)[0], size, rng, VIEW_CROP)
    data = dicom_bytes([frame], spec.modality, uid(series), index, center)
    file = f"{plan.item.path}/{_frame_name(plan.item, index)}"
    atomic_write_bytes(folder / file, data[: int(len(data) * _CORRUPT_KEEP)])
    return [file, series, spec.mode, spec.modality, "", "", "1"]
