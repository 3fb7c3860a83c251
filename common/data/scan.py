"""A center's image folder: which files are images, which decode, which are copies, which masks.

`scan_center` is the one place that decides what a center's pool is. It walks the folder
read-only, hashes every candidate (the sample id is content-based, so renaming or moving a file
does not change it), decodes every candidate fully so that corrupt files are found before any
round starts, collapses byte-identical copies into one sample and pairs images with masks.

Layout rules (the same at every depth):
- hidden files and folders are skipped;
- folders named `masks` hold masks, never pool images; folders named `test` hold the held-out
  labeled split, which must never enter the curation pool (both case-insensitive);
- the mask of `<dir>/<stem>.<ext>` is `<dir>/../masks/<stem>.<any image ext>` (the `masks`
  folder beside the image's folder), or `<dir>/masks/...` for images at the center's root;
- a candidate is a file with an image extension (NIfTI volumes: .nii, .nii.gz), or a file with
  no or an unknown extension whose bytes carry the DICOM marker; everything else is counted as
  ignored;
- a file with several frames (a multi-frame DICOM, a NIfTI volume) gives one sample per frame,
  with the id sha256(file hash : frame) so it stays stable; masks pair with single frames only;
- every sample names its series, the group of frames one acquisition made (it stays at the
  center): a DICOM's SeriesInstanceUID, a volume's or multi-frame file's own path, and for
  other images the folder plus the file name without its trailing number (slice_001.png,
  slice_002.png, ... are one series).
Folder symlinks are not followed (no cycles). A file symlink whose target lies inside the
center's folder is read like a file; one that leads outside it is never opened (it could make
the center read, embed and train on any file of the machine) and is counted in
`Inventory.outside_links`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import statistics
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from feddel.common.data.decode import (
    MAX_PIXELS,
    DecodedImage,
    UnreadableImage,
    decode_file,
    has_dicom_magic,
    load_image,
    load_mask,
)
from feddel.common.data.volume import NIFTI_SUFFIXES, is_nifti
from feddel.common.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "Inventory",
    "Sample",
    "Unreadable",
    "UnreadableImage",
    "load_image",
    "load_mask",
    "locator",
    "scan_center",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm"}
RESERVED_DIRS = {"masks", "test"}  # compared lower-case
MASKS_DIR = "masks"
SAMPLE_ID_HEX = 16
CHECK_SIZE = 64  # the scan decodes every file to check it; a large one only this small

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Sample:
    """One unique, decodable image of the pool (a frame of the first file of its duplicate
    group)."""

    sample_id: str  # 16 hex chars: sha256 of the file bytes (of "hash:frame" for a frame)
    file: str  # posix path relative to the center root
    mask: str | None  # relative path of the matched mask, or None
    width: int
    height: int
    modality: str  # "PNG", "JPEG", "TIFF", "BMP", "DICOM:<Modality>" or "NIFTI"
    frame: int | None = None  # the frame of a multi-frame file, None for a single image
    series: str = ""  # the acquisition it belongs to (module docstring); never leaves a center

    @property
    def locator(self) -> str:
        """The file, or `file#frame` for a frame of a multi-frame file (a display name)."""
        return locator(self.file, self.frame)


def locator(file: str, frame: int | None) -> str:
    """How reports and evaluation name a sample: its file, `file#frame` for one frame of many."""
    return file if frame is None else f"{file}#{frame}"


@dataclass(frozen=True)
class Unreadable:
    file: str  # posix path relative to the center root
    reason: str  # short and groupable, e.g. "zero-byte file"


@dataclass
class Inventory:
    """What `scan_center` found: the pool (`samples`) and everything that did not make it."""

    root: Path
    samples: list[Sample]  # one per unique content (and frame), sorted by file and frame
    duplicates: dict[str, list[str]]  # content id -> all files (sorted, >= 2) with that content
    unreadable: list[Unreadable]  # sorted by file
    ignored: int  # non-image files skipped
    outside_links: int = 0  # symlinks leading outside the folder: skipped, never opened

    @property
    def n_files(self) -> int:
        """Image candidates: readable files (copies included) plus unreadable ones."""
        return self.n_readable + len(self.unreadable)

    @property
    def n_readable(self) -> int:
        """Files that decoded, byte-identical copies included."""
        return len({sample.file for sample in self.samples}) + self.n_duplicate_files

    @property
    def n_duplicate_files(self) -> int:
        """Extra copies beyond the first file of each duplicate group."""
        return sum(len(files) - 1 for files in self.duplicates.values())

    @property
    def n_masks(self) -> int:
        """Samples with a matched mask."""
        return sum(sample.mask is not None for sample in self.samples)

    def modalities(self) -> dict[str, int]:
        """Samples per modality, most common first."""
        return dict(Counter(sample.modality for sample in self.samples).most_common())

    def unreadable_reasons(self) -> dict[str, int]:
        """Unreadable files per reason, most common first."""
        return dict(Counter(item.reason for item in self.unreadable).most_common())

    def size_stats(self) -> dict[str, int] | None:
        """{min,median,max}_{width,height} over the samples (median_low), None when empty."""
        if not self.samples:
            return None
        stats: dict[str, int] = {}
        for axis in ("width", "height"):
            values = [getattr(sample, axis) for sample in self.samples]
            stats[f"min_{axis}"] = min(values)
            stats[f"median_{axis}"] = statistics.median_low(values)
            stats[f"max_{axis}"] = max(values)
        return stats


@dataclass(frozen=True)
class _Checked:
    """One candidate after hashing and decoding (worker output)."""

    file: str
    digest: str
    width: int = 0
    height: int = 0
    modality: str = ""
    frames: int = 1
    series: str = ""
    reason: str | None = None  # set when unreadable


def scan_center(
    root: str | Path,
    progress: Progress | None = None,
    *,
    workers: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> Inventory:
    """Scan a center's folder read-only: candidates, content ids, decode check, copies, masks.

    `progress(done, total)` is called after each candidate is decoded. `workers` threads decode
    in parallel (PIL and hashlib release the GIL); default min(4, cores). The result does not
    depend on `workers`. Raises DataError when `root` is missing, a file, or has no images.
    """
    root = _check_root(root)
    threads = min(4, os.cpu_count() or 1) if workers is None else workers
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise DataError(f"workers={workers!r} must be a positive integer (decoding threads)")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise DataError(f"max_pixels={max_pixels!r} must be a positive integer")
    candidates, ignored, outside, masks = _walk(root)
    if not candidates:
        links = f", {outside} links leading outside the folder skipped" if outside else ""
        raise DataError(
            f"no images found under {root} (looked for "
            f"{', '.join(sorted(ext.lstrip('.') for ext in IMAGE_EXTENSIONS))}, "
            f"NIfTI ({', '.join(NIFTI_SUFFIXES)}) and DICOM, "
            f"outside hidden, masks/ and test/ folders; {ignored} other files skipped{links}); "
            "pass the folder that holds the center's images"
        )
    checked = _check_all(root, candidates, progress, threads, max_pixels)
    return _assemble(root, checked, ignored, outside, masks)


def _check_root(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(
            f"data folder {path} does not exist; pass the folder that holds the center's images"
        )
    if not path.is_dir():
        raise DataError(
            f"data folder {path} is a file, not a folder; pass the folder that holds the "
            "center's images"
        )
    return path


def _walk(root: Path) -> tuple[list[str], int, int, dict[str, dict[str, str]]]:
    """Sorted candidates, ignored count, outside-link count, and {folder holding a masks/:
    {stem: mask}}, all relative to root."""
    candidates: list[str] = []
    masks: dict[str, dict[str, str]] = {}
    ignored = outside = 0
    real_root = root.resolve()
    for folder, dirs, files in os.walk(root, onerror=_walk_error):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in [d for d in dirs if d.lower() == MASKS_DIR]:
            index = masks.setdefault(here.relative_to(root).as_posix(), {})
            for stem, mask in _mask_index(root, here / name, real_root).items():
                index.setdefault(stem, mask)
        dirs[:] = [d for d in dirs if d.lower() not in RESERVED_DIRS]
        for name in files:
            path = here / name
            if name.startswith("."):
                continue
            if _leads_outside(path, real_root):
                outside += 1
            elif not path.is_file():  # a pipe, socket or dangling link: never opened
                ignored += 1
            elif _is_candidate(path):
                candidates.append(path.relative_to(root).as_posix())
            else:
                ignored += 1
    if outside:
        log.warning("%s: skipped %d symlink(s) leading outside the folder", root, outside)
    return sorted(candidates), ignored, outside, masks


def _leads_outside(path: Path, real_root: Path) -> bool:
    """True when `path`, through a symlink of its own or of a folder above it (a `masks`
    folder linked elsewhere), resolves to a place outside `real_root`. Found from the links
    alone: the target is never opened."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError):  # a loop: not readable, and so not an image either
        return False
    return not target.is_relative_to(real_root)


def _walk_error(error: OSError) -> None:
    log.warning("skipped unreadable folder %s: %s", error.filename, error.strerror)


def _mask_index(root: Path, folder: Path, real_root: Path) -> dict[str, str]:
    """{stem: relative path} of the image files in one masks folder (first by name wins)."""
    index: dict[str, str] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if path.is_file() and not _leads_outside(path, real_root):
            index.setdefault(path.stem, path.relative_to(root).as_posix())
    return index


def _is_candidate(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_EXTENSIONS or is_nifti(path):
        return True
    try:
        return has_dicom_magic(path)
    except OSError:
        return False


def _check_one(root: Path, file: str, max_pixels: int) -> _Checked:
    path = root / file
    try:
        digest = _sha256(path)
    except OSError as exc:
        return _Checked(file, "", reason=f"cannot open file ({exc.strerror or exc})")
    try:
        decoded = decode_file(path, max_pixels, reduce_to=CHECK_SIZE)
    except UnreadableImage as exc:
        return _Checked(file, digest, reason=exc.reason)
    return _Checked(
        file,
        digest,
        decoded.width,
        decoded.height,
        decoded.modality,
        decoded.frames,
        series_of(file, decoded),
    )


def series_of(file: str, decoded: DecodedImage) -> str:
    """The series a file's frames belong to (see the module docstring); local to the center."""
    if decoded.series:
        return f"dicom:{decoded.series}"
    if decoded.frames > 1 or is_nifti(file):
        return f"file:{file}"
    folder, _, name = file.rpartition("/")
    stem = name.split(".")[0].rstrip("0123456789").rstrip("_-. ")
    return f"folder:{folder}/{stem or '#'}"


def frame_sample_id(digest: str, frame: int) -> str:
    """The stable id of frame `frame` of the file whose sha256 is `digest`."""
    return hashlib.sha256(f"{digest}:{frame}".encode()).hexdigest()[:SAMPLE_ID_HEX]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_all(
    root: Path, files: list[str], progress: Progress | None, threads: int, max_pixels: int
) -> list[_Checked]:
    """Hash and decode every candidate; results in the order of `files`."""
    results: list[_Checked] = [_Checked(file, "") for file in files]
    for done, (index, item) in enumerate(_checked(root, files, threads, max_pixels), start=1):
        results[index] = item
        if progress:
            progress(done, len(files))
    return results


def _checked(
    root: Path, files: list[str], threads: int, max_pixels: int
) -> Iterator[tuple[int, _Checked]]:
    """(index, result) as each file finishes; on an interrupt, queued files are cancelled."""
    if threads == 1:
        for index, file in enumerate(files):
            yield index, _check_one(root, file, max_pixels)
        return
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="feddel-scan")
    try:
        futures = {pool.submit(_check_one, root, f, max_pixels): i for i, f in enumerate(files)}
        for future in as_completed(futures):
            yield futures[future], future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _assemble(
    root: Path,
    checked: list[_Checked],
    ignored: int,
    outside: int,
    masks: dict[str, dict[str, str]],
) -> Inventory:
    """Group readable files by content (the first file, sorted, is the sample) and pair masks."""
    groups: dict[str, list[_Checked]] = {}
    unreadable: list[Unreadable] = []
    for item in checked:  # sorted by file
        if item.reason is not None:
            unreadable.append(Unreadable(item.file, item.reason))
        else:
            groups.setdefault(item.digest[:SAMPLE_ID_HEX], []).append(item)
    samples = [
        sample
        for content, (first, *_) in groups.items()
        for sample in _samples(content, first, masks)
    ]
    samples.sort(key=lambda sample: (sample.file, -1 if sample.frame is None else sample.frame))
    duplicates = {
        sample_id: [item.file for item in items]
        for sample_id, items in groups.items()
        if len(items) > 1
    }
    inventory = Inventory(root, samples, duplicates, unreadable, ignored, outside)
    log.info(
        "%s: %d files, %d samples, %d copies, %d unreadable, %d ignored",
        root,
        inventory.n_files,
        len(samples),
        inventory.n_duplicate_files,
        len(unreadable),
        ignored,
    )
    return inventory


def _samples(content: str, item: _Checked, masks: dict[str, dict[str, str]]) -> list[Sample]:
    """The samples of one readable file: itself, or one per frame of a multi-frame file."""
    if item.frames == 1:
        mask = _find_mask(item.file, masks)
        return [
            Sample(
                content, item.file, mask, item.width, item.height, item.modality, None, item.series
            )
        ]
    return [
        Sample(
            frame_sample_id(item.digest, frame),
            item.file,
            None,
            item.width,
            item.height,
            item.modality,
            frame,
            item.series,
        )
        for frame in range(item.frames)
    ]


def _find_mask(file: str, masks: dict[str, dict[str, str]]) -> str | None:
    """The mask in the `masks` folder beside the image's folder (at the root: inside it)."""
    image = Path(file)
    holder = image.parent.parent  # Path(".").parent is Path("."): root images use root/masks
    return masks.get(holder.as_posix(), {}).get(image.stem)
