"""Server-side merges on hand-made replies, and the coordinator's k-means against centralized."""

import numpy as np
import pytest

from feddel.common.curation.kmeans import (
    assign,
    cluster_stats,
    unit_row_stats,
    weighted_kmeans_plusplus,
)
from feddel.common.curation.lloyd import PooledSource, lloyd_rounds
from feddel.common.curation.methods import FEDDEL
from feddel.common.curation.selection import HISTOGRAM_BINS
from feddel.common.privacy.cells import seed_proposal
from feddel.common.privacy.noise import noisy_means
from feddel.common.wire.protocol import InventoryReply, SeedReply
from feddel.server.curation.aggregate import (
    encoder_outliers,
    lloyd_stats,
    mean_image,
    merged_scores,
    moments_centers,
    seed_centers,
)
from feddel.simulations.benchmarks.synthetic import video_shards

NOISE = 0.05  # the round's default noise-sigma
MIN_COUNT = 10


def _inventory(fingerprint="aaaa", dim=8, samples=20):
    return InventoryReply(
        center="c", files=samples, samples=samples, unreadable=0, duplicate_files=0, disruptive=0,
        dim=dim, fingerprint=fingerprint,
    )  # fmt: skip


def test_encoder_outliers_names_the_minority_encoder_and_dimension():
    replies = {1: _inventory(), 2: _inventory(), 3: _inventory("bbbb", dim=16)}
    outliers = encoder_outliers(replies)
    assert list(outliers) == [3]
    assert "bbbb (dim 16) differs from the majority's aaaa (dim 8)" in outliers[3]


def test_encoder_outliers_accepts_a_unanimous_federation():
    assert encoder_outliers({1: _inventory(), 2: _inventory()}) == {}


def test_mean_image_divides_the_summed_images_by_their_count_or_is_none_under_min_count():
    parts = {"count": np.array([40.0]), "image_sum": np.full((2, 2, 3), 60.0)}
    np.testing.assert_allclose(mean_image(parts, 10), np.full((2, 2, 3), 1.5))
    assert mean_image({**parts, "count": np.array([9.0])}, 10) is None


def test_lloyd_stats_round_noisy_counts_to_non_negative_integers():
    centers = np.array([[0.6, 0.0, 0.0], [0.0, 0.0, 1.0]])
    parts = {"count": np.array([10.4, -0.7]), "sum": np.array([[6.0, 1, 1], [0.0, 0, 3]])}
    stats = lloyd_stats(parts, centers)
    assert stats.count.tolist() == [10, 0] and stats.count.dtype == np.int64
    # 10 x (1 + 0.36) - 2 x 0.6 x 6 = 6.4; an empty cell's "-6" is clipped to 0
    assert stats.sqdist == pytest.approx([6.4, 0.0])


def test_unit_row_stats_equal_the_squared_distances_of_unit_rows():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((200, 16))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    centers = X[:5] * 0.9
    exact = cluster_stats(X, assign(X, centers), 5)
    derived = unit_row_stats(exact.count, exact.sum, centers)
    np.testing.assert_allclose(derived.sqdist, exact.sqdist, rtol=1e-6)  # float32 rows
    assert derived.count.tolist() == exact.count.tolist()


def test_moments_centers_spread_over_the_gaussian_of_the_moments():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(-3, 0.3, (300, 2)), rng.normal(3, 0.3, (300, 2))])
    parts = {"count": np.array([600.0]), "sum": X.sum(axis=0), "outer": X.T @ X}
    centers = moments_centers(parts, 2, np.random.default_rng(1))
    assert centers.shape == (2, 2)
    assert sorted(np.sign(centers[:, 0])) == [-1.0, 1.0]  # one on each side of the mean


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


class NoisySums(PooledSource):
    """What the coordinator's secure sums give: exact counts, sums carrying the round's
    noise (N(0, sigma^2) per value), squared distances derived from them (`lloyd_stats`)."""

    def __init__(self, shards, rng, sigma):
        super().__init__(shards)
        self.rng, self.sigma = rng, sigma

    def stats(self, cells, open_cells):
        exact = super().stats(cells, open_cells)
        noise = self.rng.normal(0.0, self.sigma, exact.sum.shape)
        parts = {"count": exact.count, "sum": exact.sum + noise}
        return lloyd_stats(parts, cells[open_cells])


def federated_kmeans(shards, k, k_local=8, seed=0, sigma=NOISE):
    """The coordinator's k-means as run_round runs it, minus the network: noisy k-FED local
    centroids, the coordinator's seeding, the Lloyd loop over noisy secure sums."""
    replies = {}
    for node, shard in enumerate(shards):
        centroids, counts = seed_proposal(shard, k_local, MIN_COUNT, seed)
        noisy = noisy_means(bytes([node]) * 32, b"seed", centroids, counts, sigma)
        replies[node] = SeedReply(centroids=noisy, counts=counts)
    rng = np.random.default_rng(seed)
    init = seed_centers(replies, k, rng)
    source = NoisySums(shards, np.random.default_rng(seed + 1), sigma)
    return lloyd_rounds(source, init, 20, 1e-4, rng, min_count=MIN_COUNT, k=k)


def centralized_kmeans(X, k, min_count, seed):
    """k-means on the pooled rows: k-means++, then the same loop (exact statistics)."""
    rng = np.random.default_rng(seed)
    init = weighted_kmeans_plusplus(X, np.ones(len(X)), k, rng)
    return lloyd_rounds(PooledSource([X]), init, 20, 1e-4, rng, min_count=min_count).result


def _inertia(X, centers):
    return float(assign(X, centers).sqdist.astype(np.float64).sum())


@pytest.mark.parametrize(("sigma", "mean", "worst"), [(0.0, 1.0, 1.3), (NOISE, 1.05, 1.45)])
def test_federated_kmeans_on_small_uneven_federations_matches_centralized_under_min_count(
    sigma, mean, worst
):
    """12 federations of 3-6 centers holding 5-60 video-like frames each, k=8, min-count 10:
    k clusters of 10 cannot all exist, so the reference is centralized k-means under the same
    rule (k-means++ from 5 seeds, the same loop, averaged). Measured without noise: mean ratio
    0.95, worst 1.25; with the default noise 1.00 and 1.40 (noise changes which local optimum
    a 100-sample federation ends in). Each run ends at the means of its best cells."""
    ratios = []
    for index in range(12):
        rng = np.random.default_rng(100 + index)
        shards = video_shards(rng.integers(5, 61, rng.integers(3, 7)), 64, 100 + index, 12)
        X = np.concatenate(shards)
        run = federated_kmeans(shards, 8, sigma=sigma)
        assert run.stats.inertia == min(run.result.inertia_history)  # best kept
        central = np.mean([_inertia(X, centralized_kmeans(X, 8, MIN_COUNT, s).centers)
                           for s in range(5)])  # fmt: skip
        ratios.append(_inertia(X, run.result.centers) / central)
    print("federated / centralized (same min-count):", np.round(ratios, 3).tolist())
    assert np.mean(ratios) <= mean and max(ratios) <= worst


def test_federated_kmeans_on_demo_like_embeddings_within_5_percent_of_centralized():
    """6,000 video-like unit embeddings (d=192, 64 modes) over 31 centers of heavy-tailed
    sizes, k=32: centralized k-means (k-means++, Lloyd, no min-count) against the federated
    path with the default noise and min-count. Measured: 1.02."""
    rng = np.random.default_rng(5)
    sizes = (rng.lognormal(0.0, 1.0, 31) * 150).astype(int) + 20
    shards = video_shards(sizes, 192, 3, 64)
    X = np.concatenate(shards)
    federated = _inertia(X, federated_kmeans(shards, 32).result.centers)
    central = _inertia(X, centralized_kmeans(X, 32, 1, 0).centers)
    print(f"federated / centralized k-means inertia: {federated / central:.4f}")
    assert federated <= 1.05 * central


@pytest.mark.parametrize("noise", [0.0, NOISE])
def test_federated_kmeans_on_heterogeneous_gaussian_centers_within_2_percent(noise):
    """31 centers of heavy-tailed sizes, each seeing only 2-4 of 10 Gaussian modes (rows
    L2-normalized, as the centers' embeddings are)."""
    rng = np.random.default_rng(7)
    modes = rng.normal(scale=4.0, size=(10, 16))
    shards = []
    for size in np.maximum((rng.pareto(1.2, 31) + 1) * 60, 20).astype(int):
        seen = rng.choice(10, size=rng.integers(2, 5), replace=False)
        rows = modes[rng.choice(seen, size)] + rng.normal(size=(size, 16))
        shards.append(rows / np.linalg.norm(rows, axis=1, keepdims=True))
    X = np.concatenate(shards)
    federated = _inertia(X, federated_kmeans(shards, 10, sigma=noise).result.centers)
    central = min(_inertia(X, centralized_kmeans(X, 10, 1, s).centers) for s in range(3))
    assert federated <= 1.02 * central


def test_dp_noise_on_the_score_sums_never_plans_more_than_a_cluster_holds():
    """With dp-epsilon every summed count carries noise, the zeros centers send for clusters
    under min-count too. A round failed at random in its select phase ("ranked_fractions must
    be in [0, 1]"): the noise on a closed cluster's histogram row was added to its candidates,
    so its quota exceeded them; and a noisy count past the series' share above a cluster's
    candidates made the water-filling fail. Both are clipped where the sums are unpacked."""
    k, bins = 3, HISTOGRAM_BINS
    open_rows = np.array([True, True, False])
    rows = np.zeros((k, bins))
    rows[0, :4] = [9.6, 10.2, 11.4, 8.7]  # 40 candidates, with noise
    rows[1, -1] = 3.2  # 3 candidates, all past their series' share
    rows[2] = np.full(bins, 2.4)  # a closed cluster: zeros plus noise, 0.4 x bins in all
    parts = {
        "candidates": np.array([40.3, 12.6, 4.2]),
        "beyond_share": np.array([0.0, 7.8, 1.1]),  # noise: 8 past the share of 3 candidates
        "eta_survivors": np.zeros(k),
    }
    merged = merged_scores(parts, {"histograms": rows}, open_rows, 0.98)
    assert not merged.histograms[2].any()
    np.testing.assert_array_equal(merged.beyond_share, [0, 3, 0])
    np.testing.assert_array_equal(merged.unbinned, [0, 0, 4])
    for budget in (5, 20, 47):
        plan = FEDDEL.plan(merged, budget, 0.05)
        assert ((plan.ranked() >= 0) & (plan.ranked() <= 1)).all(), plan.ranked()
        assert (plan.quotas <= merged.histograms.sum(axis=1) + merged.unbinned).all()
