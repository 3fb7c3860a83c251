import math

import numpy as np
import pytest

from feddel.common.curation.vinfo import cluster_pvi, mae_pvi, v_information
from feddel.common.errors import ConfigError, DataError

TWO_CENTERS = np.array([[1.0, 0.0], [-1.0, 0.0]])


def test_cluster_pvi_two_centers_exact_bits():
    X = np.array([[1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    # distances^2 to the centers: 0 and 4; tau = 2 -> logits 0 and -2
    pvi = cluster_pvi(X, np.array([0, 1]), TWO_CENTERS, np.array([0.25, 0.75]), tau=2.0)
    p_own = 1.0 / (1.0 + math.exp(-2.0))
    expected = [math.log2(p_own) + 2.0, math.log2(1.0 - p_own) - math.log2(0.75)]
    np.testing.assert_allclose(pvi, expected, rtol=0, atol=1e-12)


def test_cluster_pvi_is_zero_for_uniform_prior_and_equidistant_centers():
    centers = np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]])
    X = np.array([[0, 0, 1.0], [0, 0, -1.0]], dtype=np.float32)  # at distance sqrt(2) from all
    pvi = cluster_pvi(X, np.array([0, 3]), centers, np.full(4, 0.25), tau=0.3)
    np.testing.assert_allclose(pvi, 0.0, atol=1e-12)


def test_cluster_pvi_on_own_centroid_of_separated_mixture_is_minus_log2_prior():
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    prior = np.array([0.7, 0.2, 0.1])
    pvi = cluster_pvi(centers.astype(np.float32), np.arange(3), centers, prior, tau=1.0)
    np.testing.assert_allclose(pvi, -np.log2(prior), atol=1e-12)
    assert pvi[2] == pytest.approx(math.log2(10.0))  # the maximum a rare cluster can reach


def test_cluster_pvi_matches_plain_softmax_and_agrees_across_chunk_sizes():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 16)).astype(np.float32)
    centers = rng.standard_normal((5, 16))
    labels = rng.integers(0, 5, 500)
    prior = np.bincount(labels, minlength=5) / 500
    d2 = ((X.astype(np.float64)[:, None] - centers[None]) ** 2).sum(axis=2)
    probs = np.exp(-d2 / 40.0)
    probs /= probs.sum(axis=1, keepdims=True)
    expected = np.log2(probs[np.arange(500), labels]) - np.log2(prior[labels])
    pvi = cluster_pvi(X, labels, centers, prior, tau=40.0)
    np.testing.assert_allclose(pvi, expected, rtol=1e-9, atol=1e-9)
    # Another chunk size may take another BLAS kernel, which sums a row's products in another
    # order: the same to ~1e-15 relative, not bit for bit (nor across machines), so a tolerance.
    chunked = cluster_pvi(X, labels, centers, prior, 40.0, chunk_size=7)
    np.testing.assert_allclose(chunked, pvi, rtol=1e-12, atol=1e-12)


def test_cluster_pvi_stays_finite_for_tiny_tau():
    X = np.array([[0.9, 0.1]], dtype=np.float32)
    pvi = cluster_pvi(X, np.array([1]), TWO_CENTERS, np.array([0.5, 0.5]), tau=1e-6)
    assert np.isfinite(pvi).all() and pvi[0] < -1e5  # assigned to the far center: very hard


def test_cluster_pvi_validates_prior_and_tau():
    X = np.zeros((2, 2), dtype=np.float32)
    labels = np.array([0, 1])
    with pytest.raises(DataError, match=r"prior sums to 0\.90000000"):
        cluster_pvi(X, labels, TWO_CENTERS, np.array([0.5, 0.4]), 1.0)
    with pytest.raises(DataError, match=r"prior is 0 for cluster\(s\) \[1\]"):
        cluster_pvi(X, labels, TWO_CENTERS, np.array([1.0, 0.0]), 1.0)
    with pytest.raises(ConfigError, match=r"tau=0\.0 must be"):
        cluster_pvi(X, labels, TWO_CENTERS, np.array([0.5, 0.5]), 0.0)


def test_mae_pvi_hand_case_and_sign():
    pvi = mae_pvi(np.array([0.01, 0.03, 0.08]), np.array([0.05, 0.05, 0.05]), sigma2=0.01)
    np.testing.assert_allclose(pvi, [2 / math.log(2), 1 / math.log(2), -1.5 / math.log(2)])
    assert pvi[0] > pvi[1] > pvi[2]  # a larger reconstruction error = harder = lower PVI
    with pytest.raises(ConfigError, match="sigma2=0 must be"):
        mae_pvi(np.ones(2), np.ones(2), 0)
    with pytest.raises(DataError, match="mse_x has shape"):
        mae_pvi(np.ones(2), np.ones(3), 1.0)


def test_v_information_is_mean_pvi():
    assert v_information(np.array([1.0, -0.5, 2.5])) == pytest.approx(1.0)
    with pytest.raises(DataError, match="non-empty"):
        v_information(np.array([]))
