"""A center's pool (common/data/pool.py) and its copy in the center's state (client/state.py):
quality features computed in batches are those of one image at a time, and a pool read from
the state is read again when its files change."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from feddel.client.state import CenterState
from feddel.common.curation.quality import (
    QualityConfig,
    detect_disruptive,
    features_batch,
    frame_features,
)
from feddel.common.data.pool import FEATURE_BATCH, decode_pass, prepare_center, quality_group
from feddel.common.data.scan import load_image, scan_center
from feddel.common.errors import DataError
from feddel.common.models.embed import EncoderSpec
from feddel.common.models.embedcache import EmbeddingCache

SIZE = 32


def _write_center(root: Path, images: int, seed: int = 0) -> Path:
    """Smooth gradients with a bright blob each (so every feature varies), a few blank frames,
    and one truncated PNG."""
    rng = np.random.default_rng(seed)
    folder = root / "images"
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:48, 0:48] / 47.0
    for i in range(images):
        a, b, c = rng.uniform(0.2, 1.0, size=3)
        cy, cx = rng.uniform(0.2, 0.8, size=2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.01)
        base = 255 * np.clip(0.5 * (a * yy + b * xx) + c * blob, 0, 1)
        if i % 17 == 5:
            base = np.zeros_like(base)  # blank: flagged
        rgb = np.stack([base, 0.8 * base, 0.6 * base], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"frame_{i:03d}.png")
    good = (folder / "frame_000.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    return root


def test_decode_pass_in_batches_flags_as_one_image_at_a_time(tmp_path):
    """Features are computed FEATURE_BATCH images at a time; the flags are those of features
    computed image by image (within float32 rounding, 1e-6)."""
    root = _write_center(tmp_path / "center", FEATURE_BATCH + 11)
    samples = scan_center(root).samples
    passed = decode_pass(root, samples, SIZE, QualityConfig())
    assert len(samples) > FEATURE_BATCH + 1  # two batches, the last one partial
    failed = [i for i, s in enumerate(samples) if s.file == "images/truncated.png"]
    assert passed.failed == failed  # the truncated file is skipped and counted
    kept = [s for i, s in enumerate(samples) if i not in failed]
    one_by_one = np.stack([frame_features(load_image(root / s.file, SIZE)) for s in kept])
    batched = np.concatenate(
        [
            features_batch(np.stack([load_image(root / s.file, SIZE) for s in part]))
            for part in (kept[i : i + FEATURE_BATCH] for i in range(0, len(kept), FEATURE_BATCH))
        ]
    )
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-6, atol=1e-6)
    groups = [quality_group(s) for s in kept]
    series = [s.series or s.sample_id for s in kept]
    expected = detect_disruptive(one_by_one, QualityConfig(), groups, series).disruptive
    np.testing.assert_array_equal(np.delete(passed.disruptive, failed), expected)
    blank = [i for i, s in enumerate(samples) if s.file.endswith(("005.png", "022.png"))]
    assert passed.disruptive[blank].all() and passed.disruptive.sum() < len(samples) / 4


@pytest.fixture(scope="module")
def saved_pool(tmp_path_factory):
    base = tmp_path_factory.mktemp("pool")
    root = _write_center(base / "center", 20, seed=1)
    spec = EncoderSpec(image_size=SIZE)
    state = CenterState(base / "state")
    pool = prepare_center(root, state.path, spec)
    state.save_pool("run", pool, spec)
    return state, pool, spec


def test_a_pool_is_read_once_while_its_files_are_unchanged(saved_pool):
    state, pool, _ = saved_pool
    first = CenterState(state.path).load_pool("run")
    assert CenterState(state.path).load_pool("run") is first
    assert first.sample_ids == pool.sample_ids
    np.testing.assert_array_equal(first.disruptive, pool.disruptive)


def test_a_pool_saved_again_is_read_again(saved_pool):
    state, pool, spec = saved_pool
    before = state.load_pool("run")
    flipped = np.logical_not(pool.disruptive)
    state.save_pool("run", _with_flags(pool, flipped), spec)
    after = state.load_pool("run")
    assert after is not before
    np.testing.assert_array_equal(after.disruptive, flipped)
    state.save_pool("run", pool, spec)
    np.testing.assert_array_equal(state.load_pool("run").disruptive, pool.disruptive)


def test_a_pool_whose_cached_embeddings_are_not_unit_rows_is_refused_with_the_fix(tmp_path):
    root = _write_center(tmp_path / "center", 12, seed=2)
    spec = EncoderSpec(image_size=SIZE)
    state = CenterState(tmp_path / "state")
    state.save_pool("run", prepare_center(root, state.path, spec), spec)
    cache = EmbeddingCache(state.path, spec)
    rows = cache.open_rows(writable=True)
    rows[3] *= 2.0  # a cache written by something else than the embedder
    rows.flush()
    del rows
    with pytest.raises(DataError, match=r"not L2-normalized \(a row's norm is off 1 by 1\); "
                                        r"delete .* and re-run the inventory phase"):  # fmt: skip
        state.load_pool("run")


def _with_flags(pool, disruptive):
    return replace(pool, disruptive=disruptive, disruption=["x" if d else "" for d in disruptive])
