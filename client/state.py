"""A center's state directory: what survives between phases, runs and restarts.

    <state>/embeddings/<fingerprint>/   resumable embedding cache (common/models/embedcache.py)
    <state>/runs/<run>/pool.json        phase 0: the samples, quality flags and encoder of a run
    <state>/runs/<run>/pool.npz         phase 0: per-sample flags, mean-image sum
    <state>/runs/<run>/cells.npy        phase 2: the centers of the last cell-count request
    <state>/runs/<run>/scores.npz       phase 3: per-sample labels and scores
    <state>/runs/<run>/masks.json       secure-sum contexts used, so none masks two vectors
    <state>/selection-<run>-<round>.csv phase 4: the manifest (sample id, path, cluster, score)
    <state>/events.jsonl                runs seen, manifests written, errors (feddel-center status)
    <state>/noise.key                   the secret that keys the center's noise (mode 0600)

Phases are separate messages (and, under Ray or after a restart, separate processes), so each
phase reads what it needs from here. The pool, read in every phase, is also kept in memory
(`load_pool`), keyed by the stat signature of the files it was read from: a process that
handles many phases reads it once, and a changed file is read again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from feddel.common.data.manifest import manifest_name
from feddel.common.errors import DataError, ProtocolError
from feddel.common.io import append_json_line, atomic_write_bytes, read_json_lines, write_json
from feddel.common.privacy import secagg
from feddel.common.privacy.noise import SECRET_BYTES

if TYPE_CHECKING:  # the pool's modules load torch: `feddel-center status` must start fast
    from feddel.common.curation.local import CenterScores
    from feddel.common.data.pool import CenterPool
    from feddel.common.models.embed import EncoderSpec

log = logging.getLogger(__name__)

KEPT_POOLS = 64  # pools kept in memory per process (a simulated federation holds one per center)
_POOLS: dict[Path, tuple[tuple[tuple[int, ...], ...], CenterPool]] = {}  # run dir -> pool
_POOLS_LOCK = threading.Lock()


class CenterState:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def run_dir(self, run: str) -> Path:
        return self.path / "runs" / run

    def manifest_path(self, run: str, round_: int) -> Path:
        return self.path / manifest_name(run, round_)

    # --- phase 0 output --------------------------------------------------------------------

    def save_pool(self, run: str, pool: CenterPool, spec: EncoderSpec) -> None:
        meta = {
            "name": pool.name,
            "root": str(pool.root),
            "spec": spec.to_dict(),
            "fingerprint": pool.fingerprint,
            "counts": dataclasses.asdict(pool.counts),
            "samples": [dataclasses.asdict(s) for s in pool.samples],
            "disruption": pool.disruption,
        }
        _save_npz(
            self.run_dir(run) / "pool.npz", disruptive=pool.disruptive, image_sum=pool.image_sum
        )
        write_json(self.run_dir(run) / "pool.json", meta)

    def load_pool(self, run: str) -> CenterPool:
        """The run's pool as phase 0 saved it; the same object while its files are unchanged
        (callers must not modify it)."""
        run_dir = self.run_dir(run).resolve()
        kept = _POOLS.get(run_dir)
        if kept is not None and kept[0] == _pool_signature(self.path, run_dir, kept[1]):
            return kept[1]
        pool = self._read_pool(run)
        with _POOLS_LOCK:  # centers of an in-process simulation share this process
            _POOLS.pop(run_dir, None)
            _POOLS[run_dir] = (_pool_signature(self.path, run_dir, pool), pool)
            while len(_POOLS) > KEPT_POOLS:
                _POOLS.pop(next(iter(_POOLS)))
        return pool

    def _read_pool(self, run: str) -> CenterPool:
        from feddel.common.curation.kmeans import check_unit_rows
        from feddel.common.data.pool import CenterPool, PoolCounts
        from feddel.common.data.scan import Sample
        from feddel.common.models.embed import EncoderSpec
        from feddel.common.models.embedcache import EmbeddingCache

        meta_path = self.run_dir(run) / "pool.json"
        if not meta_path.is_file():
            raise DataError(
                f"run '{run}' has no inventory at this center ({meta_path} missing); "
                "the coordinator must start the round with the inventory phase"
            )
        meta = json.loads(meta_path.read_text())
        arrays = np.load(self.run_dir(run) / "pool.npz")
        spec = EncoderSpec.from_dict(meta["spec"])
        samples = [Sample(**s) for s in meta["samples"]]
        cache = EmbeddingCache(self.path, spec)
        cached, cached_path = cache.read(), cache.path
        row = {sample_id: i for i, sample_id in enumerate(cached.ids)}
        missing = [s.sample_id for s in samples if s.sample_id not in row]
        if missing:
            raise DataError(
                f"embedding cache under {self.path} lacks {len(missing)} sample(s) of run '{run}'; "
                "re-run the inventory phase to re-embed them"
            )
        rows = np.array([row[s.sample_id] for s in samples], dtype=np.int64)
        embeddings = cached.embeddings
        if not _is_identity(rows, len(cached.ids)):
            embeddings = embeddings[rows]
        check_unit_rows(
            embeddings, f"the embeddings cached under {cached_path}",
            fix=f"delete {cached_path} and re-run the inventory phase to embed again",
        )  # fmt: skip
        return CenterPool(
            name=meta["name"],
            root=Path(meta["root"]),
            samples=samples,
            embeddings=embeddings,
            disruptive=arrays["disruptive"],
            disruption=meta["disruption"],
            fingerprint=meta["fingerprint"],
            counts=PoolCounts(**meta["counts"]),
            image_sum=arrays["image_sum"],
        )

    # --- phase 2: the centers a Lloyd round's statistics refer to --------------------------

    def save_cells(self, run: str, centers: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(centers, dtype=np.float64))
        atomic_write_bytes(self.run_dir(run) / "cells.npy", buffer.getvalue())

    def load_cells(self, run: str, digest: str) -> np.ndarray:
        """The centers of the last counts request, if they are the ones `digest` names."""
        from feddel.common.wire.protocol import centers_digest  # Flower: not for `status`

        path = self.run_dir(run) / "cells.npy"
        centers = np.load(path) if path.is_file() else None
        if centers is None or centers_digest(centers) != digest:
            raise ProtocolError(
                f"the Lloyd statistics refer to centers {digest} that this center was not asked "
                "to count last; the coordinator must ask the cell counts first"
            )
        return centers

    # --- phase 3 output --------------------------------------------------------------------

    def save_scores(self, run: str, scores: CenterScores) -> None:
        _save_npz(self.run_dir(run) / "scores.npz", **scores._asdict())

    def load_scores(self, run: str) -> CenterScores:
        from feddel.common.curation.local import CenterScores

        path = self.run_dir(run) / "scores.npz"
        if not path.is_file():
            raise DataError(f"run '{run}' was not scored at this center ({path} missing)")
        arrays = np.load(path)
        return CenterScores(**{name: arrays[name] for name in CenterScores._fields})

    # --- the run's secure-aggregation key ------------------------------------------------

    def new_secagg_key(self, run: str) -> bytes:
        """A fresh X25519 private key for this run, kept at the center only (mode 0600)."""
        private = secagg.generate_private_key()
        atomic_write_bytes(self.run_dir(run) / "secagg.key", private, mode=0o600)
        return private

    def secagg_key(self, run: str) -> bytes:
        path = self.run_dir(run) / "secagg.key"
        if not path.is_file():
            raise DataError(f"run '{run}' has no secure-aggregation key at this center ({path})")
        return path.read_bytes()

    def noise_secret(self) -> bytes:
        """The center's secret for keying its noise (common/privacy/noise.py), made once and
        kept here only (mode 0600): the same question on the same data then gets the same
        noise, in this run and after a restart, and the coordinator can never compute it."""
        path = self.path / "noise.key"
        if not path.is_file():
            atomic_write_bytes(path, os.urandom(SECRET_BYTES), mode=0o600)
        secret = path.read_bytes()
        if len(secret) != SECRET_BYTES:
            raise DataError(f"{path} holds {len(secret)} bytes, not {SECRET_BYTES}; delete it")
        return secret

    def claim_mask(self, run: str, context: bytes, values: np.ndarray) -> None:
        """Refuse to mask different values under a context already used: the same masks on
        two vectors would let the coordinator subtract them. The same values again (a
        coordinator replaying a phase after a restart) reveal nothing new and are allowed."""
        path = self.run_dir(run) / "masks.json"
        used = json.loads(path.read_text()) if path.is_file() else {}
        key = context.decode()
        digest = hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()
        if used.get(key, digest) != digest:
            raise ProtocolError(
                f"the coordinator reused secure-sum context {key!r} for different values; "
                "refused, since it would reveal their difference; rerun under a new run name, "
                "or update a coordinator that numbers its secure sums"
            )
        if key not in used:
            write_json(path, {**used, key: digest})

    # --- events for `feddel-center status` -------------------------------------------------

    def record(self, event: str, **details: Any) -> None:
        """Append one event line (a line cut short by a crash costs that line only)."""
        append_json_line(
            self.path / "events.jsonl", {"time": time.time(), "event": event, **details}
        )

    def events(self) -> list[dict[str, Any]]:
        """Every readable event, oldest first; a damaged line is skipped with a warning."""
        path = self.path / "events.jsonl"
        events, damaged = read_json_lines(path)
        for number in damaged:
            log.warning("%s line %d is damaged; skipped", path, number)
        return events


def _pool_signature(state: Path, run_dir: Path, pool: CenterPool) -> tuple[tuple[int, ...], ...]:
    """(inode, mtime, size) of every file a pool was read from: an atomic rewrite (a new file
    renamed over the old) changes the inode and the mtime. A missing file gives (-1, -1, -1),
    so the pool is read again and the usual error names the file."""
    cache = state / "embeddings" / pool.fingerprint
    files = [
        run_dir / "pool.json",
        run_dir / "pool.npz",
        cache / "ids.txt",
        cache / "embeddings.npy",
    ]
    signature = []
    for file in files:
        try:
            stat = file.stat()
        except OSError:
            signature.append((-1, -1, -1))
        else:
            signature.append((stat.st_ino, stat.st_mtime_ns, stat.st_size))
    return tuple(signature)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _is_identity(rows: np.ndarray, n: int) -> bool:
    """True when the cache rows are already in the pool's order (keep the memmap, no copy)."""
    return len(rows) == n and bool(np.array_equal(rows, np.arange(n)))
