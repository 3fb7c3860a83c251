import numpy as np
import pytest

from feddel.common.curation.kmeans import ClusterStats
from feddel.common.errors import DataError
from feddel.common.privacy.cells import (
    add_gaussian_noise,
    merge_small_clusters,
    suppress_small_cells,
    suppress_small_counts,
)


def test_suppress_small_cells_leaves_no_cell_under_min_count():
    rng = np.random.default_rng(0)
    count = rng.integers(0, 25, 200)
    stats = ClusterStats(count, rng.random((200, 3)) * count[:, None], rng.random(200) * count)
    out = suppress_small_cells(stats, 10)
    assert ((out.count == 0) | (out.count >= 10)).all()
    small = count < 10
    assert not out.sum[small].any() and not out.sqdist[small].any()
    np.testing.assert_array_equal(out.count[~small], count[~small])
    np.testing.assert_array_equal(out.sum[~small], stats.sum[~small])
    assert stats.count.tolist() == count.tolist()  # the input is not modified


def test_suppress_small_counts_zeroes_whole_rows_of_histograms():
    hist = np.array([[3, 4, 2], [1, 0, 1], [10, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(
        suppress_small_counts(hist, 9), [[3, 4, 2], [0, 0, 0], [10, 0, 0], [0, 0, 0]]
    )
    np.testing.assert_array_equal(
        suppress_small_counts(np.array([0, 3, 10, 50]), 10), [0, 0, 10, 50]
    )
    with pytest.raises(DataError, match="counts must be"):
        suppress_small_counts(np.array([1.5, 2.0]), 2)


def test_add_gaussian_noise_is_zero_mean_with_sigma_std():
    values = np.full(200_000, 5.0)
    noisy = add_gaussian_noise(values, 2.0, np.random.default_rng(1))
    assert abs((noisy - values).mean()) < 0.02  # 3 standard errors is 0.013
    assert (noisy - values).std() == pytest.approx(2.0, rel=0.01)
    assert (values == 5.0).all()


def test_add_gaussian_noise_off_returns_identical_copy():
    values = np.array([1, 2, 3], dtype=np.int64)
    out = add_gaussian_noise(values, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(out, values)
    assert out.dtype == values.dtype and out is not values


def test_merge_small_clusters_by_hand():
    centers = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    merged, counts = merge_small_clusters(centers, np.array([30, 3, 12]), min_count=10)
    # the 3-member cluster at x=1 joins its nearest (x=0): (0*30 + 1*3) / 33
    np.testing.assert_allclose(merged, [[3 / 33, 0.0], [10.0, 0.0]])
    assert counts.tolist() == [33, 12]


def test_merge_small_clusters_keeps_every_sample_and_the_overall_mean():
    rng = np.random.default_rng(0)
    centers, counts = rng.normal(size=(12, 4)), rng.integers(1, 15, 12)
    merged, sizes = merge_small_clusters(centers, counts, min_count=10)
    assert sizes.sum() == counts.sum() and (sizes >= 10).all()
    np.testing.assert_allclose(merged.T @ sizes, centers.T @ counts)


def test_merge_small_clusters_reports_nothing_below_min_count_in_total():
    merged, sizes = merge_small_clusters(np.ones((2, 3)), np.array([4, 5]), min_count=10)
    assert merged.shape == (0, 3) and sizes.size == 0
