"""A center's embedding cache: resumable, memory-mapped, keyed by encoder fingerprint.

Layout of `<state_dir>/embeddings/<fingerprint>/`:
- `embeddings.npy`  float32 (n, d), row i = sample `ids.txt[i]` (a .npy readers can memory-map)
- `ids.txt`         sample ids, one per line, in row order
- `done.npz`        `done` bool (n,): rows computed and flushed; `ids_sha256`: hash of ids.txt
- `spec.json`       the resolved EncoderSpec, its fingerprint and the embedding dim

Crash safety: rows are flushed to disk before `done.npz` is atomically replaced, so a kill never
marks an unflushed row done. `done.npz` names the ids.txt it belongs to; a cache whose files
disagree (a kill in the middle of a re-layout) is discarded and recomputed, never trusted.
One writer per cache directory at a time. Rows made under different precisions (fp32 or bf16
autocast, see common/models/embed.py) may mix in one cache; they agree to cosine > 0.9999.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from feddel.common.data.scan import Sample
from feddel.common.errors import DataError
from feddel.common.io import atomic_write_bytes, atomic_write_text, write_json
from feddel.common.models.embed import (
    EncoderSpec,
    Progress,
    build_encoder,
    encoder_fingerprint,
    iter_embed_files,
    pick_device,
)

logger = logging.getLogger(__name__)

_COPY_CHUNK = 65536  # rows copied at a time when the sample list changes
# torch's RNG is process-wide: a seeded random init (build_encoder) on one thread and a draw on
# another (a second init, or a DataLoader's base seed) interleave, and the "same" encoder gets
# other weights on every center that embeds at the same time (the in-process engine handles
# centers on threads). Threads take turns to build and embed.
_TORCH_RNG = threading.Lock()


class FailedSample(NamedTuple):
    sample_id: str
    reason: str


class CachedEmbeddings(NamedTuple):
    ids: list[str]  # the embedded samples, in the order given (failed ones left out)
    embeddings: np.ndarray  # (len(ids), d) float32 L2-normalized, read-only (memmap when whole)
    computed: int  # rows embedded by this call
    reused: int  # rows taken from the cache
    failed: list[FailedSample]


class _Layout(NamedTuple):
    ids: list[str]
    done: np.ndarray  # (n,) bool
    ids_sha256: str


class EmbeddingCache:
    """The cache directory of one encoder (by fingerprint) under a center's state directory."""

    def __init__(self, state_dir: Path, spec: EncoderSpec) -> None:
        self.spec = spec
        self.fingerprint = encoder_fingerprint(spec)
        self.path = Path(state_dir) / "embeddings" / self.fingerprint

    @property
    def _rows(self) -> Path:
        return self.path / "embeddings.npy"

    def open_rows(self, writable: bool = False) -> np.memmap:
        """The (n, d) rows memory-mapped, read-only unless `writable`."""
        return np.load(self._rows, mmap_mode="r+" if writable else "r")

    def layout(self) -> _Layout | None:
        """The stored ids and done mask, or None when absent or inconsistent (then recomputed)."""
        ids_file, done_file = self.path / "ids.txt", self.path / "done.npz"
        if not (ids_file.is_file() and done_file.is_file() and self._rows.is_file()):
            return None
        text = ids_file.read_text(encoding="utf-8")
        with np.load(done_file, allow_pickle=False) as marker:
            done, ids_hash = marker["done"], str(marker["ids_sha256"])
        ids = text.splitlines()
        rows = self.open_rows().shape[0]
        if ids_hash != _sha256(text) or not len(ids) == len(done) == rows:
            logger.warning(
                "embedding cache %s is inconsistent (interrupted re-layout); recomputing it",
                self.path,
            )
            return None
        return _Layout(ids, done.astype(bool), ids_hash)

    def read(self) -> CachedEmbeddings:
        """Every computed row, opened read-only (no encoder needed)."""
        layout = self.layout()
        if layout is None:
            raise DataError(f"no embedding cache at {self.path}; run the embed step first")
        return _result(
            layout, self.open_rows(), computed=0, reused=int(layout.done.sum()), failed=[]
        )

    def dim(self) -> int:
        return int(self.open_rows().shape[1])

    def prepare(self, ids: list[str], dim: int) -> _Layout:
        """Make the files hold rows for `ids` (in that order), keeping every computed row."""
        old = self.layout()
        if old is not None and old.ids == ids:
            return old
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(
            self.path / "spec.json",
            {"spec": self.spec.to_dict(), "fingerprint": self.fingerprint, "dim": dim},
        )
        done = np.zeros(len(ids), dtype=bool)
        tmp = self.path / ".embeddings.npy.new"
        new_rows = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.float32, shape=(len(ids), dim)
        )
        if old is not None:
            position = {sample_id: i for i, sample_id in enumerate(old.ids) if old.done[i]}
            dst = np.array([i for i, s in enumerate(ids) if s in position], dtype=np.int64)
            src = np.array([position[ids[i]] for i in dst], dtype=np.int64)
            old_rows = self.open_rows()
            for start in range(0, len(dst), _COPY_CHUNK):
                part = slice(start, start + _COPY_CHUNK)
                new_rows[dst[part]] = old_rows[src[part]]
            done[dst] = True
        new_rows.flush()
        del new_rows
        # Marker first: until ids.txt is replaced too, it names an ids list that is not there,
        # so a kill anywhere in between leaves a cache that layout() discards, never mixes.
        text = "".join(f"{sample_id}\n" for sample_id in ids)
        layout = _Layout(ids, done, _sha256(text))
        self.mark_done(layout)
        tmp.replace(self._rows)
        atomic_write_text(self.path / "ids.txt", text)
        return layout

    def mark_done(self, layout: _Layout) -> None:
        """Atomically record which rows are done; call only after those rows were flushed."""
        buffer = io.BytesIO()
        np.savez(buffer, done=layout.done, ids_sha256=np.array(layout.ids_sha256))
        atomic_write_bytes(self.path / "done.npz", buffer.getvalue())


def embed_center(
    samples: Sequence[Sample],
    root: Path,
    spec: EncoderSpec,
    state_dir: Path,
    batch_size: int = 64,
    progress: Progress | None = None,
    encoder: torch.nn.Module | None = None,
    precision: str = "auto",
    device: str | None = None,
    num_workers: int | None = None,
) -> CachedEmbeddings:
    """Embed a center's samples through the cache: only rows not cached yet are computed.

    Rows follow `samples`; a sample cached under this encoder (by id, even from an older sample
    list) is never recomputed. Each batch is flushed then marked done, so an interrupted call
    resumes where it stopped and yields rows bit-identical to an uninterrupted run. `encoder`
    (optional) must be `build_encoder(spec)`, possibly moved to a device; it is built only when
    rows are missing. `progress(done, total)` is called after each persisted batch.
    """
    ids = [sample.sample_id for sample in samples]
    _check_ids(ids)
    cache = EmbeddingCache(state_dir, spec)
    if (cached := _all_cached(cache, ids)) is not None:  # no torch at all
        return cached
    failed: list[FailedSample] = []
    with _TORCH_RNG:
        if (cached := _all_cached(cache, ids)) is not None:  # another thread just made them
            return cached
        if encoder is None:
            encoder = build_encoder(spec).to(pick_device(device))
        layout = cache.prepare(ids, encoder.num_features)
        reused = int(layout.done.sum())
        todo = np.flatnonzero(~layout.done)
        rows, done = cache.open_rows(writable=True), layout.done.copy()
        paths = [Path(root) / samples[i].file for i in todo]
        frames = [samples[i].frame for i in todo]
        for batch in iter_embed_files(
            encoder, paths, spec.image_size, batch_size, num_workers, precision, frames
        ):
            rows[todo[batch.indices]] = batch.embeddings
            rows.flush()
            done[todo[batch.indices]] = True
            cache.mark_done(layout._replace(done=done))
            failed.extend(FailedSample(ids[todo[f.index]], f.reason) for f in batch.failed)
            if progress is not None:
                progress(int(done.sum()) + len(failed), len(ids))
        del rows
        layout = layout._replace(done=done)
    if failed:
        logger.warning(
            "%d of %d images could not be embedded, e.g. %s", len(failed), len(ids), failed[0]
        )
    computed = int(layout.done.sum()) - reused
    return _result(layout, cache.open_rows(), computed, reused, failed)


def _check_ids(ids: list[str]) -> None:
    seen: set[str] = set()
    for sample_id in ids:
        if not sample_id or "\n" in sample_id or sample_id != sample_id.strip():
            raise DataError(f"sample id {sample_id!r} is empty or has surrounding whitespace")
        if sample_id in seen:
            raise DataError(f"sample id {sample_id} appears twice; ids must be unique per center")
        seen.add(sample_id)


def _all_cached(cache: EmbeddingCache, ids: list[str]) -> CachedEmbeddings | None:
    """The rows for `ids` when every one is cached (re-laid out if the list changed)."""
    existing = cache.layout()
    if existing is None or not set(ids) <= _done_ids(existing):
        return None
    layout = cache.prepare(ids, cache.dim())
    return _result(layout, cache.open_rows(), 0, int(layout.done.sum()), [])


def _done_ids(layout: _Layout) -> set[str]:
    return {sample_id for sample_id, done in zip(layout.ids, layout.done, strict=True) if done}


def _result(
    layout: _Layout, rows: np.ndarray, computed: int, reused: int, failed: list[FailedSample]
) -> CachedEmbeddings:
    if layout.done.all():
        return CachedEmbeddings(list(layout.ids), rows, computed, reused, failed)
    keep = np.flatnonzero(layout.done)
    subset = np.asarray(rows[keep])
    subset.flags.writeable = False
    return CachedEmbeddings([layout.ids[i] for i in keep], subset, computed, reused, failed)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
