"""How much memory decoding may take: a budget per file, one for every decode at once.

A file's header can claim up to MAX_PIXELS (100 Mpx) in under a megabyte of bytes (a blank
1-bit PNG, a constant 16-bit PNG, a deflated float TIFF). Decoded naively, with full-size
conversion copies, each took 1.1-2.0 GB, and a scan's threads decoded several at once. Now:

- per file: the stored pixels (PIL keeps 1, 2 or 4 bytes a pixel by mode, DICOM its
  BitsAllocated x SamplesPerPixel) may not exceed MAX_DECODE_BYTES (400 MB, i.e. 100 Mpx
  at 4 bytes); a caller that needs a small image (embedding, quality flags, the scan's check,
  thumbnails) gets an image over REDUCED_ABOVE pixels box-averaged right after decoding, a
  strip of rows at a time (STRIP_PIXELS), so no full-size conversion copy is ever made; JPEG
  is decoded at 1/2 to 1/8 scale by its DCT (PIL's draft), DICOM reduced on its stored values.
- per batch: every decode in a process and in the DataLoader workers it forks (a scan's
  threads, an embedding's workers, the centers of an in-process simulation) draws its cost
  from one shared budget of MAX_DECODE_BYTES; a decode waits until its cost fits, except when
  nothing else is in flight (one file at the per-file limit always passes, alone).

The bound that follows: at any moment, decoding holds at most MAX_DECODE_BYTES (400 MB) of
stored pixels and full-size conversions, plus, per decode in flight, one strip being
converted (STRIP_PIXELS at up to 8 bytes: 32 MB) and its reduced image. Measured by
simulations/benchmarks/decodememory.py.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

MAX_PIXELS = 100_000_000  # one image: decoding more than this at once risks the center's memory
MAX_DECODE_BYTES = 4 * MAX_PIXELS  # stored pixels of one file, and of all decodes at once
REDUCED_ABOVE = 4_000_000  # pixels: larger images are reduced when a small image is asked for
STRIP_PIXELS = 4_000_000  # pixels converted at a time while reducing
FULL_SIZE_BYTES = 32  # per pixel: stored pixels plus the conversions of a full-size decode
_AVERAGED_AS = {"1": "L", "P": "RGBA", "PA": "RGBA", "I;16": "I", "I;16B": "I", "I;16L": "I"}


def stored_bytes_per_pixel(mode: str) -> int:
    """Bytes PIL keeps per pixel of an image in `mode` (8-bit single band, 16-bit, or 4)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def reduction(width: int, height: int, target: int | None) -> int:
    """The integer factor to shrink a (width, height) image by before a resize to `target`
    pixels a side: 1 (no reduction) up to REDUCED_ABOVE pixels or without a target; above,
    as much as keeps the shorter side at least twice the target, so the final antialiased
    resize still has pixels to filter."""
    if target is None or width * height <= REDUCED_ABOVE:
        return 1
    return max(1, min(width, height) // (2 * target))


def reduce_image(image: Image.Image, factor: int) -> Image.Image:
    """Box-average a loaded PIL image by `factor`, converting a strip of rows at a time into a
    mode that averages meaningfully (bi-level as 8-bit, palette as RGBA, 16-bit as 32-bit);
    the edge rows and columns that do not fill a box are dropped."""
    mode = _AVERAGED_AS.get(image.mode, image.mode)
    if "transparency" in image.info:
        mode = "RGBA"  # a transparent colour key only means something before averaging
    width, height = image.width // factor, image.height // factor
    reduced = Image.new(mode, (width, height))
    rows = max(1, STRIP_PIXELS // max(1, image.width * factor)) * factor
    for top in range(0, height * factor, rows):
        bottom = min(top + rows, height * factor)
        strip = image.crop((0, top, width * factor, bottom)).convert(mode)
        reduced.paste(strip.reduce(factor), (0, top // factor))
    return reduced


def reduce_array(pixels: np.ndarray, factor: int, average: bool = True) -> np.ndarray:
    """(h, w[, c]) -> (h // factor, w // factor[, c]) in the same dtype: box means (rounded
    for integers) a strip at a time, or every factor-th pixel when values are labels that
    cannot be averaged (palette indices)."""
    height, width = pixels.shape[0] // factor, pixels.shape[1] // factor
    if not average:
        return np.ascontiguousarray(pixels[: height * factor : factor, : width * factor : factor])
    out = np.empty((height, width, *pixels.shape[2:]), dtype=pixels.dtype)
    rows = max(1, STRIP_PIXELS // max(1, pixels.shape[1] * factor))
    for top in range(0, height, rows):
        strip = pixels[top * factor : min(top + rows, height) * factor, : width * factor]
        boxes = strip.reshape(-1, factor, width, factor, *pixels.shape[2:])
        means = boxes.mean(axis=(1, 3), dtype=np.float64)
        if np.issubdtype(pixels.dtype, np.integer):
            means = np.rint(means)
        out[top : top + len(means)] = means
    return out


class DecodeBudget:
    """Bytes that decodes may hold at once, shared by threads and by forked processes.

    Built on a multiprocessing condition and a shared counter, so DataLoader workers forked
    after it exists draw from the same budget as their parent; where the platform has no
    process-shared semaphores it falls back to a budget per process.
    """

    def __init__(self, limit: int = MAX_DECODE_BYTES) -> None:
        self.limit = limit
        try:
            self._condition: Any = multiprocessing.Condition()
            self._used: Any = multiprocessing.RawValue("q", 0)
            self._waiting: Any = multiprocessing.RawValue("q", 0)
        except (ImportError, OSError):  # no sem_open (some containers): per process then
            log.info("no process-shared semaphores; the decode budget is per process")
            self._condition = threading.Condition()
            self._used, self._waiting = _Counter(), _Counter()

    @property
    def in_use(self) -> int:
        """Bytes held by decodes now."""
        return int(self._used.value)

    @property
    def waiting(self) -> int:
        """Decodes waiting for their cost to fit."""
        return int(self._waiting.value)

    @contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        """Wait until `cost` bytes fit (or nothing else is in flight), hold them, give back."""
        with self._condition:
            if not self._fits(cost):
                self._waiting.value += 1
                while not self._fits(cost):
                    self._condition.wait()
                self._waiting.value -= 1
            self._used.value += cost
        try:
            yield
        finally:
            with self._condition:
                self._used.value -= cost
                self._condition.notify_all()

    def _fits(self, cost: int) -> bool:
        return self._used.value == 0 or self._used.value + cost <= self.limit


class _Counter:
    value = 0


_shared: DecodeBudget | None = None
_shared_lock = threading.Lock()


def shared_budget() -> DecodeBudget:
    """The budget of this process and of the workers it forks after the first call (call it
    before forking, as the embedding does before its DataLoader starts)."""
    global _shared
    if _shared is None:  # checked first without the lock: a child forked while a thread held
        with _shared_lock:  # it would inherit it locked
            if _shared is None:
                _shared = DecodeBudget()
    return _shared
