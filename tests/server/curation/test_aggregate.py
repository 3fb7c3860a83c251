"""Server-side merges on hand-made replies."""

import numpy as np
from sklearn.cluster import KMeans

from feddel.common.curation.kmeans import (
    assign,
    cluster_stats,
    lloyd_rounds,
    local_kmeans,
    merge_stats,
)
from feddel.common.privacy.cells import suppress_small_cells
from feddel.common.wire.protocol import InventoryReply, SeedReply
from feddel.server.curation.aggregate import encoder_outliers, global_mean_image, seed_centers


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


def test_federated_kmeans_path_reaches_centralized_inertia_on_heterogeneous_centers():
    """The coordinator's k-means exactly as run_round does it (local k-means, k-FED seeding,
    Lloyd on merged statistics with aggregate min-count suppression), minus the network,
    against pooled k-means on the same points: 31 centers of heavy-tailed sizes, each seeing
    only 2-4 of 10 modes."""
    rng = np.random.default_rng(7)
    modes = rng.normal(scale=4.0, size=(10, 16))
    shards = []
    for size in np.maximum((rng.pareto(1.2, 31) + 1) * 60, 20).astype(int):
        seen = rng.choice(10, size=rng.integers(2, 5), replace=False)
        shards.append(modes[rng.choice(seen, size)] + rng.normal(size=(size, 16)))
    replies = {}
    for node, shard in enumerate(shards):
        local = local_kmeans(shard, 8, seed=0)
        keep = local.counts >= 10
        replies[node] = SeedReply(centroids=local.centers[keep], counts=local.counts[keep])
    init = seed_centers(replies, 10, np.random.default_rng(0))

    def merged(centers):
        stats = merge_stats(cluster_stats(s, assign(s, centers), len(centers)) for s in shards)
        return suppress_small_cells(stats, 10)

    federated = lloyd_rounds(merged, init, 50, 1e-6, np.random.default_rng(0)).stats.inertia
    pooled = np.concatenate(shards)
    central = KMeans(10, n_init=3, random_state=0).fit(pooled).inertia_
    assert federated <= 1.02 * central
