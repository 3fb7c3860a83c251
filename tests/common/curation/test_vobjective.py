"""The selection objective: V = H(q) + w * mean(-t), from samples and from aggregates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from feddel.common.curation.kmeans import assign
from feddel.common.curation.local import pvi_edges
from feddel.common.curation.selection import score_histograms
from feddel.common.curation.vinfo import cluster_pvi, v_information
from feddel.common.curation.vobjective import (
    ClusterAggregates,
    VEstimate,
    aggregates_from_histograms,
    v_objective,
)
from feddel.common.errors import ConfigError, DataError

K = 4
CENTERS = np.eye(K, 8)  # four orthogonal unit centroids in 8-D
TAU = 0.5


def _t(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and t = log2 g_x(y) of rows X under CENTERS (prior-free part of cluster PVI)."""
    labels = assign(X.astype(np.float32), CENTERS).labels
    prior = np.full(K, 1.0 / K)
    return labels, cluster_pvi(X.astype(np.float32), labels, CENTERS, prior, TAU) + np.log2(prior)


def _between(j: int, other: int, alpha: float) -> np.ndarray:
    """The unit point a fraction `alpha` of the way from centroid j towards centroid `other`."""
    x = (1.0 - alpha) * CENTERS[j] + alpha * CENTERS[other]
    return x / np.linalg.norm(x)


def test_v_objective_samples_hand_case() -> None:
    est = v_objective_samples(np.array([0, 0, 1, 1]), np.array([-1.0, -1.0, -2.0, 0.0]), k=3)
    assert (est.size, est.diversity, est.hardness) == (4.0, 1.0, 1.0)
    assert est.extracted == 0.0 and est.objective == 2.0
    weighted = v_objective_samples(np.array([2, 2]), np.array([-0.5, -1.5]), k=3, hardness_weight=3)
    assert (weighted.diversity, weighted.hardness, weighted.objective) == (0.0, 1.0, 3.0)


def test_v_objective_aggregates_match_per_sample_reference() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 8, 300)
    t = -rng.uniform(0, 3, 300)
    parts = [cluster_aggregates(labels[s], t[s], 8) for s in np.array_split(np.arange(300), 3)]
    merged = ClusterAggregates(*(np.sum(arrays, axis=0) for arrays in zip(*parts, strict=True)))
    est, ref = v_objective(merged, 0.7), v_objective_samples(labels, t, 8, 0.7)
    for name in ("size", "diversity", "hardness", "extracted", "objective"):
        assert getattr(est, name) == pytest.approx(getattr(ref, name), abs=1e-12)


def test_v_objective_extracted_is_mean_pvi_under_the_selections_own_prior() -> None:
    X = np.stack([_between(0, 1, 0.1), _between(0, 2, 0.4), _between(1, 3, 0.3), CENTERS[2]])
    labels, t = _t(X)
    own_prior = np.bincount(labels, minlength=K) / len(labels)
    pvi = cluster_pvi(X.astype(np.float32), labels, CENTERS, own_prior, TAU)
    assert v_objective_samples(labels, t, K).extracted == pytest.approx(v_information(pvi))


def test_v_objective_rises_when_hard_duplicates_become_diverse_hard_samples() -> None:
    hard = np.stack([_between(j, (j + 1) % K, 0.45) for j in range(K)])  # near a boundary
    easy = CENTERS.copy()
    duplicates = np.repeat(hard[:1], 4, axis=0)  # four copies of one hard sample
    labels_dup, t_dup = _t(duplicates)
    labels_div, t_div = _t(hard)
    labels_easy, t_easy = _t(easy)
    assert labels_div.tolist() == [0, 1, 2, 3] and labels_dup.tolist() == [0] * 4
    dup, div = v_objective_samples(labels_dup, t_dup, K), v_objective_samples(labels_div, t_div, K)
    assert dup.diversity == 0.0 and div.diversity == pytest.approx(2.0)  # log2 of 4 clusters
    assert div.hardness == pytest.approx(dup.hardness) and dup.hardness > 0.5
    assert div.objective == pytest.approx(dup.objective + 2.0)
    easy_est = v_objective_samples(labels_easy, t_easy, K)  # diverse but easy: lower
    assert easy_est.diversity == pytest.approx(2.0) and easy_est.objective < div.objective
    via_aggregates = v_objective(cluster_aggregates(labels_div, t_div, K))
    assert via_aggregates.objective == pytest.approx(div.objective)


def test_aggregates_from_histograms_are_within_half_a_bin() -> None:
    rng = np.random.default_rng(1)
    k, bins = 6, 16
    labels = rng.integers(0, k, 500)
    t = -rng.uniform(0, math.log2(k), 500)
    edges = pvi_edges(k, bins)
    approx = aggregates_from_histograms(score_histograms(t, labels, k, edges), edges)
    exact = cluster_aggregates(labels, t, k)
    np.testing.assert_array_equal(approx.counts, exact.counts)
    a, b = v_objective(approx), v_objective(exact)
    assert a.diversity == b.diversity
    assert abs(a.hardness - b.hardness) <= (edges[1] - edges[0]) / 2
    assert a.hardness != b.hardness  # midpoints really are an approximation


def test_v_objective_validates_its_inputs() -> None:
    with pytest.raises(DataError, match=r"negative in clusters \[1\]"):
        v_objective(ClusterAggregates(np.array([2.0, -1.0]), np.array([-1.0, 0.0])))
    with pytest.raises(DataError, match="empty selection"):
        v_objective(ClusterAggregates(np.zeros(3), np.zeros(3)))
    with pytest.raises(DataError, match=r"counts \(2,\) and t_sums \(3,\)"):
        v_objective(ClusterAggregates(np.ones(2), np.zeros(3)))
    with pytest.raises(ConfigError, match=r"hardness_weight=-1"):
        v_objective(ClusterAggregates(np.ones(2), -np.ones(2)), hardness_weight=-1)
    with pytest.raises(DataError, match="need 5 increasing edges"):
        aggregates_from_histograms(np.ones((2, 4)), np.arange(4.0))


# References: the objective computed from samples directly, without histograms.


def cluster_aggregates(labels: np.ndarray, log_gx: np.ndarray, k: int) -> ClusterAggregates:
    """(n_j, T_j) of samples: labels (n,) in [0, k), log_gx (n,) = t."""
    t, y = np.asarray(log_gx, dtype=np.float64), np.asarray(labels)
    counts = np.bincount(y, minlength=k).astype(np.float64)
    return ClusterAggregates(counts, np.bincount(y, weights=t, minlength=k))


def v_objective_samples(
    labels: np.ndarray, log_gx: np.ndarray, k: int, hardness_weight: float = 1.0
) -> VEstimate:
    """The objective from the selected samples' labels (n,) and t = log_gx (n,) directly."""
    t, y = np.asarray(log_gx, dtype=np.float64), np.asarray(labels)
    diversity = 0.0
    for j in np.unique(y):
        share = float(np.mean(y == j))
        diversity -= share * math.log2(share)
    hardness = float(np.mean(-t))
    return VEstimate(
        float(t.size),
        diversity,
        hardness,
        diversity - hardness,
        diversity + hardness_weight * hardness,
    )
