"""Server-side merges on hand-made replies."""

import numpy as np

from common.protocol import InventoryReply, SeedReply
from server.aggregate import encoder_outliers, global_mean_image, seed_centers


def _inventory(fingerprint="aaaa", dim=8, samples=20, image_count=20, value=1.0):
    return InventoryReply(
        center="c", files=samples, samples=samples, unreadable=0, duplicate_files=0, disruptive=0,
        dim=dim, fingerprint=fingerprint, image_count=image_count,
        image_sum=np.full((2, 2, 3), value * image_count),
    )  # fmt: skip


def test_encoder_outliers_names_the_minority_encoder_and_dimension():
    replies = {1: _inventory(), 2: _inventory(), 3: _inventory("bbbb", dim=16)}
    outliers = encoder_outliers(replies)
    assert list(outliers) == [3]
    assert "bbbb (dim 16) differs from the majority's aaaa (dim 8)" in outliers[3]


def test_encoder_outliers_accepts_a_unanimous_federation():
    assert encoder_outliers({1: _inventory(), 2: _inventory()}) == {}


def test_global_mean_image_is_count_weighted_and_skips_suppressed_centers():
    replies = {
        1: _inventory(samples=30, image_count=30, value=1.0),
        2: _inventory(samples=10, image_count=10, value=3.0),
        3: _inventory(samples=5, image_count=0, value=100.0),
    }
    np.testing.assert_allclose(global_mean_image(replies), np.full((2, 2, 3), 1.5))
    assert global_mean_image({3: replies[3]}) is None


def test_seed_centers_draws_k_distinct_local_centroids_weighted_by_count():
    rng = np.random.default_rng(0)
    replies = {
        1: SeedReply(centroids=np.array([[0.0, 0.0], [10.0, 0.0]]), counts=np.array([50, 20])),
        2: SeedReply(centroids=np.array([[0.0, 10.0]]), counts=np.array([30])),
        3: SeedReply(centroids=np.zeros((0, 2)), counts=np.zeros(0, dtype=np.int64)),
    }
    centers = seed_centers(replies, k=3, rng=rng)
    assert centers.shape == (3, 2)
    assert {tuple(c) for c in centers} == {(0.0, 0.0), (10.0, 0.0), (0.0, 10.0)}
    assert seed_centers(replies, k=10, rng=rng).shape == (3, 2)
