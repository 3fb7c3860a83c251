"""The resumable per-center embedding cache: reuse, resume after a kill, layout changes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import feddel.common.models.embedcache as embedcache
from feddel.common.data.scan import Sample
from feddel.common.errors import DataError
from feddel.common.models.embed import EncoderSpec, build_encoder, encoder_fingerprint
from feddel.common.models.embedcache import EmbeddingCache, embed_center

SPEC = EncoderSpec("vit_tiny_patch16_224", 32, seed=4)
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def center(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Sample]]:
    """A folder of 10 small RGB images and their samples (ids s0..s9)."""
    root = tmp_path_factory.mktemp("center")
    rng = np.random.default_rng(0)
    samples = []
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / f"{i}.png")
        samples.append(
            Sample(
                sample_id=f"s{i}", file=f"{i}.png", mask=None, width=40, height=40, modality="rgb"
            )
        )
    return root, samples


class Counter:
    """An encoder whose forward passes are counted (images seen)."""

    def __init__(self) -> None:
        self.encoder = build_encoder(SPEC)
        self.images = 0
        self.encoder.register_forward_hook(self._count)

    def _count(self, module: torch.nn.Module, args: tuple[torch.Tensor, ...], out: object) -> None:
        self.images += args[0].shape[0]


class Stop(Exception):
    pass


def _stop_after(batches: int):
    calls = []

    def progress(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == batches:
            raise Stop

    return progress


def test_embed_center_resume_computes_only_the_rest(center, tmp_path: Path) -> None:
    root, samples = center
    first = Counter()
    with pytest.raises(Stop):
        embed_center(
            samples,
            root,
            SPEC,
            tmp_path,
            batch_size=3,
            encoder=first.encoder,
            progress=_stop_after(2),
        )
    assert first.images == 6
    second = Counter()
    resumed = embed_center(samples, root, SPEC, tmp_path, batch_size=3, encoder=second.encoder)
    assert second.images == 4 and (resumed.computed, resumed.reused) == (4, 6)
    fresh = embed_center(samples, root, SPEC, tmp_path / "fresh", batch_size=3)
    assert resumed.ids == fresh.ids == [s.sample_id for s in samples]
    assert np.array_equal(resumed.embeddings, fresh.embeddings)


def test_embed_center_resumes_after_sigkill(center, tmp_path: Path) -> None:
    """A real kill (no cleanup, no exception handling) after two persisted batches."""
    root, samples = center
    script = textwrap.dedent(f"""
        import os, signal
        from feddel.common.data.scan import Sample
        from feddel.common.models.embed import EncoderSpec
        from feddel.common.models.embedcache import embed_center
        samples = [Sample(sample_id=f"s{{i}}", file=f"{{i}}.png", mask=None, width=40,
                          height=40, modality="rgb") for i in range(10)]
        def progress(done, total):
            if done >= 6:
                os.kill(os.getpid(), signal.SIGKILL)
        embed_center(samples, {str(root)!r}, EncoderSpec(**{SPEC.to_dict()!r}), {str(tmp_path)!r},
                     batch_size=3, progress=progress, num_workers=0)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    counter = Counter()
    resumed = embed_center(samples, root, SPEC, tmp_path, batch_size=3, encoder=counter.encoder)
    assert counter.images == 4 and resumed.reused == 6
    fresh = embed_center(samples, root, SPEC, tmp_path / "fresh", batch_size=3)
    assert np.array_equal(resumed.embeddings, fresh.embeddings)


def test_embed_center_changed_sample_list_reuses_rows(center, tmp_path: Path) -> None:
    root, samples = center
    embed_center(samples[:6], root, SPEC, tmp_path)
    counter = Counter()
    changed = [samples[9], *samples[4:8][::-1]]  # s0..s3 removed, s6..s9 new or moved
    result = embed_center(changed, root, SPEC, tmp_path, encoder=counter.encoder)
    assert result.ids == ["s9", "s7", "s6", "s5", "s4"]
    assert (result.computed, result.reused, counter.images) == (3, 2, 3)
    fresh = embed_center(samples, root, SPEC, tmp_path / "fresh")
    order = [int(s[1:]) for s in result.ids]
    # The rows came from batches of other sizes than `fresh`'s: a float32 forward differs by
    # BLAS blocking (1.75e-6 on one value of 960 was seen on a clean clone); a wrong or moved
    # row differs by ~0.1 (unit rows of 192 values)
    np.testing.assert_allclose(result.embeddings, fresh.embeddings[order], atol=1e-5)
    ids_file = EmbeddingCache(tmp_path, SPEC).path / "ids.txt"
    assert ids_file.read_text().split() == result.ids


def test_embed_center_fully_cached_builds_no_encoder(center, tmp_path: Path, monkeypatch) -> None:
    root, samples = center
    first = embed_center(samples, root, SPEC, tmp_path)
    monkeypatch.setattr(embedcache, "build_encoder", lambda spec: pytest.fail("encoder built"))
    again = embed_center(samples[::-1], root, SPEC, tmp_path)  # reordered: re-laid out, copied
    assert (again.computed, again.reused) == (0, 10)
    assert np.array_equal(again.embeddings, first.embeddings[::-1])


def test_embed_center_returns_read_only_memmap(center, tmp_path: Path) -> None:
    root, samples = center
    result = embed_center(samples[:4], root, SPEC, tmp_path)
    assert isinstance(result.embeddings, np.memmap) and not result.embeddings.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        result.embeddings[0, 0] = 1.0
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-5)
    stored = EmbeddingCache(tmp_path, SPEC).read()
    assert stored.ids == result.ids and not stored.embeddings.flags.writeable


def test_embedding_cache_directory_per_fingerprint(center, tmp_path: Path) -> None:
    root, samples = center
    other = EncoderSpec(SPEC.model, SPEC.image_size, seed=SPEC.seed + 1)
    a = embed_center(samples[:3], root, SPEC, tmp_path)
    b = embed_center(samples[:3], root, other, tmp_path)
    assert b.computed == 3 and not np.allclose(a.embeddings, b.embeddings)
    dirs = sorted(p.name for p in (tmp_path / "embeddings").iterdir())
    assert dirs == sorted([encoder_fingerprint(SPEC), encoder_fingerprint(other)])
    meta = (EmbeddingCache(tmp_path, other).path / "spec.json").read_text()
    assert f'"seed": {other.seed}' in meta and encoder_fingerprint(other) in meta


def test_embed_center_unreadable_sample_is_reported_and_left_out(center, tmp_path: Path) -> None:
    root, samples = center
    (tmp_path / "data").mkdir()
    for s in samples[:4]:
        (tmp_path / "data" / s.file).write_bytes((root / s.file).read_bytes())
    (tmp_path / "data" / "2.png").write_bytes(b"truncated")
    result = embed_center(samples[:4], tmp_path / "data", SPEC, tmp_path / "state")
    assert result.ids == ["s0", "s1", "s3"] and [f.sample_id for f in result.failed] == ["s2"]
    assert result.embeddings.shape == (3, 192) and not result.embeddings.flags.writeable
    retry = embed_center(samples[:4], tmp_path / "data", SPEC, tmp_path / "state")
    assert (retry.computed, retry.reused, len(retry.failed)) == (0, 3, 1)


def test_embedding_cache_inconsistent_files_are_recomputed(center, tmp_path: Path) -> None:
    root, samples = center
    first = embed_center(samples[:4], root, SPEC, tmp_path)
    ids_file = EmbeddingCache(tmp_path, SPEC).path / "ids.txt"
    ids_file.write_text("s3\ns2\ns1\ns0\n")  # as if killed between renames of a re-layout
    counter = Counter()
    again = embed_center(samples[:4], root, SPEC, tmp_path, encoder=counter.encoder)
    assert counter.images == 4 and again.reused == 0
    assert np.array_equal(again.embeddings, first.embeddings)


def test_embed_center_rejects_duplicate_ids(center, tmp_path: Path) -> None:
    root, samples = center
    with pytest.raises(DataError, match="s1 appears twice"):
        embed_center([samples[1], samples[1]], root, SPEC, tmp_path)
    with pytest.raises(DataError, match="no embedding cache"):
        EmbeddingCache(tmp_path, SPEC).read()
