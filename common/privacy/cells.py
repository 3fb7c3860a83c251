"""What a center applies to its statistics before they leave: min-count suppression, noise.

Suppression follows NVFlare's site filters: no reported cell describes fewer than `min_count`
samples. It is exact (deterministic) and costs the server nothing but the suppressed members;
Gaussian noise is optional and off by default, because it breaks the exact federated = pooled
equivalence of k-means.
"""

from __future__ import annotations

import math

import numpy as np

from feddel.common.curation.kmeans import ClusterStats, local_kmeans
from feddel.common.errors import ConfigError, DataError


def _check_min_count(min_count: int) -> None:
    if not isinstance(min_count, int | np.integer) or min_count < 1:
        raise ConfigError(f"min_count={min_count!r} must be an integer >= 1")


def _check_sigma(sigma: float) -> None:
    if not math.isfinite(sigma) or sigma < 0:
        raise ConfigError(f"noise_sigma={sigma!r} must be a finite number >= 0")


def suppress_small_cells(stats: ClusterStats, min_count: int) -> ClusterStats:
    """Zero every cluster with 0 < count < min_count (its count, sum and sqdist); a new copy.

    The server then sees the cluster as empty from this center: its members are left out of the
    mean, and a cluster empty everywhere is re-seeded by `update_centers`.
    """
    _check_min_count(min_count)
    small = (stats.count > 0) & (stats.count < min_count)
    count = np.where(small, 0, stats.count).astype(np.int64)
    total = np.where(small[:, None], 0.0, stats.sum)
    sqdist = np.where(small, 0.0, stats.sqdist)
    return ClusterStats(count, total, sqdist)


def suppress_small_counts(counts: np.ndarray, min_count: int) -> np.ndarray:
    """Zero each cluster whose total is under min_count; a new int64 array of the same shape.

    counts: (k,) per-cluster counts, or (k, bins) per-cluster histograms where a row is one
    cluster. A reported histogram row aggregates >= min_count members, but a single bin of it
    may hold fewer: bins locate scores only to the bin width, and the server learns no ids.
    """
    _check_min_count(min_count)
    c = np.asarray(counts)
    if c.ndim not in (1, 2) or not np.issubdtype(c.dtype, np.integer) or (c < 0).any():
        raise DataError(f"counts must be a (k,) or (k, bins) array of counts >= 0; got {c.shape}")
    totals = c if c.ndim == 1 else c.sum(axis=1)
    small = totals < min_count
    return np.where(small if c.ndim == 1 else small[:, None], 0, c).astype(np.int64)


def add_gaussian_noise(values: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """values + N(0, sigma^2) elementwise, as a new float64 array; sigma == 0: an exact copy."""
    _check_sigma(sigma)
    arr = np.asarray(values)
    if sigma == 0.0:
        return arr.copy()
    return arr.astype(np.float64) + rng.normal(0.0, sigma, arr.shape)


def merge_small_clusters(
    centers: np.ndarray, counts: np.ndarray, min_count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge every cluster under `min_count` members into its nearest cluster (count-weighted
    mean, exact), smallest first, until all have >= min_count; nothing when the total is less.

    A center's local centroids for k-FED seeding are then all means of >= min_count samples,
    and, unlike dropping small clusters, every sample still weighs in the seeding: dropping
    them left whole regions of the data without a seed (demo, seed 1: 1.6x the inertia).
    centers: (m, d), counts: (m,) -> (m', d), (m',).
    """
    _check_min_count(min_count)
    C = np.asarray(centers, dtype=np.float64).copy()
    n = np.asarray(counts, dtype=np.int64).copy()
    keep = n > 0
    C, n = C[keep], n[keep]
    if n.sum() < min_count:
        return np.zeros((0, C.shape[1] if C.ndim == 2 else 0)), np.zeros(0, dtype=np.int64)
    while len(n) > 1 and n.min() < min_count:
        small = int(np.argmin(n))
        others = np.flatnonzero(np.arange(len(n)) != small)
        target = others[np.argmin(((C[others] - C[small]) ** 2).sum(axis=1))]
        C[target] = (C[target] * n[target] + C[small] * n[small]) / (n[target] + n[small])
        n[target] += n[small]
        C, n = np.delete(C, small, axis=0), np.delete(n, small)
    return C, n


def seed_proposal(
    X: np.ndarray, k_local: int, min_count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A center's k-FED seed reply: local k-means on its rows X (n, d), small clusters merged
    (`merge_small_clusters`), padded to (k_local, d) centroids and (k_local,) counts with zero
    rows, so neither the reply's size nor its shape tells how many clusters there were."""
    centroids = np.zeros((k_local, X.shape[1]))
    counts = np.zeros(k_local, dtype=np.int64)
    if len(X) >= min_count:
        local = local_kmeans(X, min(k_local, len(X)), seed)
        merged, sizes = merge_small_clusters(local.centers, local.counts, min_count)
        centroids[: len(sizes)] = merged
        counts[: len(sizes)] = sizes
    return centroids, counts
