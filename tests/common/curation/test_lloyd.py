"""The Lloyd loop under a minimum cell size: merges, best-kept centers, local moves."""

import numpy as np
import pytest

from feddel.common.curation.kmeans import ClusterStats, assign
from feddel.common.curation.lloyd import (
    PooledSource,
    _Measured,
    cell_means,
    inertia_converged,
    lloyd,
    lloyd_rounds,
    local_move,
)
from feddel.common.errors import DataError


class Recording(PooledSource):
    """A pooled source that remembers what the loop asked, in order."""

    def __init__(self, shards):
        super().__init__(shards)
        self.calls = []

    def counts(self, cells):
        self.calls.append(("counts", len(cells)))
        return self.pooled(cells).count

    def stats(self, cells, open_cells):
        stats = self.pooled(cells[open_cells])
        self.calls.append(("stats", stats.count.copy()))
        return stats


def _blobs(rng, sizes, d=4, spread=6.0):
    means = rng.normal(0.0, spread, (len(sizes), d))
    return np.vstack([m + rng.standard_normal((n, d)) for m, n in zip(means, sizes, strict=True)])


def test_no_statistic_is_computed_for_a_cell_under_min_count():
    rng = np.random.default_rng(0)
    X = _blobs(rng, [40, 30, 3, 25, 2])
    source = Recording([X])
    init = X[[0, 40, 70, 73, 98]]  # one start in each blob: two blobs are under min-count
    run = lloyd_rounds(source, init, 20, 1e-6, rng, min_count=10)
    stats_calls = [count for kind, count in source.calls if kind == "stats"]
    assert stats_calls and all((count >= 10).all() for count in stats_calls)
    assert [kind for kind, _ in source.calls[:2]] == ["counts", "stats"]  # sized first
    assert (run.stats.count >= 10).all() and run.stats.count.sum() == len(X)


def test_the_result_is_the_means_of_the_best_cells_measured():
    """The loop returns its best measured cells moved to their means: one more Lloyd step,
    taken from statistics already released, so it never costs a round and never scores
    worse than the best centers measured."""
    rng = np.random.default_rng(1)
    X = _blobs(rng, [60, 50, 12, 9, 30, 8])
    run = lloyd_rounds(PooledSource([X]), X[rng.choice(len(X), 6)], 20, 1e-4, rng, min_count=10)
    history = run.result.inertia_history
    assert run.stats.inertia == min(history)
    np.testing.assert_allclose(run.result.centers, run.stats.sum / run.stats.count[:, None])
    pooled = float(assign(X, run.result.centers).sqdist.astype(np.float64).sum())
    assert pooled <= run.stats.inertia * (1 + 1e-9)


def test_a_center_attracting_nothing_is_dropped_and_a_split_restores_k():
    rng = np.random.default_rng(6)
    X = np.vstack([rng.normal(0, 0.1, (200, 2)), rng.normal(5, 0.1, (200, 2))])
    init = np.array([[0.0, 0.0], [0.1, 0.0], [100.0, 100.0]])  # the third attracts nothing
    result = lloyd(X, init, 20, 1e-9, np.random.default_rng(0))
    assert np.isfinite(result.centers).all() and len(result.centers) == 3
    assert (np.bincount(assign(X, result.centers).labels, minlength=3) > 0).all()


def test_no_cell_reaching_min_count_is_a_one_line_error():
    X = np.random.default_rng(2).standard_normal((15, 3))
    with pytest.raises(DataError, match="no cluster holds min-count=20 members"):
        lloyd(X, X[:3], 5, 1e-4, np.random.default_rng(0), min_count=20)


def _measured(counts, sums, sqdist):
    counts = np.asarray(counts)
    centers = np.asarray(sums, dtype=float) / counts[:, None]
    return _Measured(centers, ClusterStats(counts, np.asarray(sums, float), np.asarray(sqdist)))


def test_local_move_splits_the_widest_cluster_when_below_k():
    best = _measured([40, 25], [[40.0, 0.0], [0.0, 50.0]], [160.0, 25.0])
    moved = local_move(best, 10, 3, 0, np.random.default_rng(0))
    assert moved.shape == (3, 2)
    np.testing.assert_allclose(moved[0], [0.0, 2.0])  # the narrow cluster stays
    halves = moved[1:]
    np.testing.assert_allclose(halves.mean(axis=0), [1.0, 0.0])  # around the widest's mean
    np.testing.assert_allclose(np.linalg.norm(halves[0] - halves[1]), 2 * 0.5 * 2.0)


def test_local_move_at_k_merges_the_cheapest_pair_and_splits_the_widest():
    best = _measured(
        [30, 10, 12, 40], [[0.0, 0.0], [10.0, 0.0], [13.2, 0.0], [0.0, 400.0]],
        [30.0, 10.0, 12.0, 400.0],
    )  # fmt: skip
    moved = local_move(best, 10, 4, 0, np.random.default_rng(0))
    assert moved.shape == (4, 2)
    np.testing.assert_allclose(moved[0], [0.0, 0.0])  # untouched
    np.testing.assert_allclose(moved[1], [(10.0 + 13.2) / 22, 0.0])  # the close pair, merged
    np.testing.assert_allclose(moved[2:].mean(axis=0), [0.0, 10.0])  # the widest, split


def test_local_move_gives_up_when_no_cluster_could_hold_two_cells():
    best = _measured([15, 12], [[15.0, 0.0], [0.0, 12.0]], [3.0, 3.0])
    assert local_move(best, 10, 3, 0, np.random.default_rng(0)) is None


def test_cell_means_keep_the_center_of_a_cell_whose_noisy_count_is_small():
    stats = ClusterStats(np.array([20, 4]), np.array([[20.0, 20.0], [40.0, 0.0]]), np.zeros(2))
    centers = np.array([[0.0, 0.0], [3.0, 3.0]])
    np.testing.assert_allclose(cell_means(stats, centers, 10), [[1.0, 1.0], [3.0, 3.0]])


def test_inertia_converged_uses_relative_change():
    assert inertia_converged(100.0, 99.995, 1e-4)
    assert not inertia_converged(100.0, 99.0, 1e-4)
    assert inertia_converged(0.0, 0.0, 1e-4)
