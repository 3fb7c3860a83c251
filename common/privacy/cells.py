"""The min-count rule for what a center sends alone: its k-FED local centroids.

Following NVFlare's site filters, no local centroid a center proposes describes fewer than
`min_count` samples: small local clusters are merged into their nearest neighbour. (Secure
sums follow the same rule across centers: common/curation/lloyd.py sizes each cell first.)
"""

from __future__ import annotations

import numpy as np

from feddel.common.curation.kmeans import local_kmeans
from feddel.common.errors import ConfigError


def _check_min_count(min_count: int) -> None:
    if not isinstance(min_count, int | np.integer) or min_count < 1:
        raise ConfigError(f"min_count={min_count!r} must be an integer >= 1")


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
