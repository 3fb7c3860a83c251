import numpy as np

from feddel.common.privacy.cells import merge_small_clusters


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
