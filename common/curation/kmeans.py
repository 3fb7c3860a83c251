"""Federated k-means: per-center sufficient statistics, their exact merge, k-means++ seeding.

A center runs `assign` and `cluster_stats` on its own embeddings and sends only the statistics;
the server merges them (`merge_stats`) and runs the loop of common/curation/lloyd.py, which the
centralized reference runs over a list of shards, so both paths share every line of arithmetic.

Exactness: Lloyd over shards equals Lloyd over their concatenation bit for bit, whatever the shard
sizes, the chunk sizes or the order in which centers reply, because
- `assign` is row-deterministic. BLAS picks kernels by matrix shape, so a row's float32 score can
  depend on the rows batched with it; the fast float32 matmul therefore decides a label only when
  the gap to the runner-up exceeds a rounding bound, and the other rows (rare) and every squared
  distance are computed row by row in float64.
- `cluster_stats` sums values rounded to the grid 2**-30, so float64 addition is exact and
  order-free while each |sum| < 2**23 (unit-norm embeddings: under 8 million members per
  cluster); beyond that it degrades to ordinary float64 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
from sklearn.cluster import KMeans

from feddel.common.errors import ConfigError, DataError, ProtocolError

_GRID = 2.0**30  # cluster_stats rounds to multiples of 1/_GRID (see the module docstring)
_ROW_BLOCK = 8192  # rows per float64 sub-block: temporaries stay ~ _ROW_BLOCK * max(d, k) * 8 B
_UNIT_ROUNDOFF = float(np.finfo(np.float32).eps) / 2
LOCAL_INITS = 3  # k-means++ restarts of a center's local k-means (the best inertia wins)


class Assignment(NamedTuple):
    labels: np.ndarray  # (n,) int32: nearest center, ties -> lowest index
    sqdist: np.ndarray  # (n,) float32: squared Euclidean distance to that center


class ClusterStats(NamedTuple):
    """What a center reports for one Lloyd round; additive over centers."""

    count: np.ndarray  # (k,) int64 members per cluster
    sum: np.ndarray  # (k, d) float64 sum of member embeddings
    sqdist: np.ndarray  # (k,) float64 sum of members' squared distances to their center

    @property
    def inertia(self) -> float:
        return float(self.sqdist.sum())


class LocalClusters(NamedTuple):
    centers: np.ndarray  # (k', d) float64 means of the local clusters
    counts: np.ndarray  # (k',) int64 members of each (every count >= 1)


def check_embeddings(X: np.ndarray, name: str = "X") -> np.ndarray:
    """Return X (n >= 1, d >= 1) as an array without copying (np.memmap stays a memmap)."""
    if not isinstance(X, np.ndarray):
        X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{name} has shape {X.shape}; expected a non-empty (n, d) embedding matrix")
    if not np.issubdtype(X.dtype, np.floating):
        raise DataError(f"{name} has dtype {X.dtype}; expected float embeddings")
    return X


def check_labels(labels: np.ndarray, n: int, k: int, name: str = "labels") -> np.ndarray:
    """Return labels as an int64 (n,) array, every value in [0, k)."""
    arr = np.asarray(labels)
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{name} has shape {arr.shape} and dtype {arr.dtype}; expected ({n},) ints")
    if n and (arr.min() < 0 or arr.max() >= k):
        raise DataError(f"{name} range [{arr.min()}, {arr.max()}] must lie in [0, {k - 1}] (k={k})")
    return arr.astype(np.int64, copy=False)


def check_centers(centers: np.ndarray, d: int, name: str = "centers") -> np.ndarray:
    """Return centers as a finite float64 (k, d) array with k >= 1."""
    arr = np.asarray(centers, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != d:
        raise DataError(f"{name} has shape {arr.shape}; expected (k, {d}) with k >= 1")
    if not np.isfinite(arr).all():
        raise DataError(f"{name} contain NaN or inf values")
    return arr


def _check_chunk(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size={chunk_size!r} must be an integer >= 1")


def assign(X: np.ndarray, centers: np.ndarray, chunk_size: int = 65536) -> Assignment:
    """Nearest center of each row of X (n, d), read `chunk_size` rows at a time.

    Labels come from float32 scores ||c||^2 - 2 x.c (one matmul per chunk) where the winner is
    certain, else from float64 distances (ties -> lowest index); sqdist is ||x - c_label||^2
    reduced per row in the precision of X (no cancellation, never negative). Extra memory
    ~ chunk_size * (k + d) * 4 bytes.
    """
    X = check_embeddings(X)
    C = check_centers(centers, X.shape[1])
    _check_chunk(chunk_size)
    n = X.shape[0]
    labels = np.empty(n, dtype=np.int32)
    sqdist = np.empty(n, dtype=np.float32)
    C32 = C.astype(np.float32)
    cc = np.einsum("ij,ij->i", C, C)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        chunk = np.asarray(X[start:stop])
        if not np.isfinite(chunk).all():
            raise DataError(f"X rows {start}..{stop - 1} contain NaN or inf; re-embed them")
        labels[start:stop] = _nearest(chunk, C, C32, cc)
        same_precision = C if chunk.dtype == np.float64 else C32
        sqdist[start:stop] = _row_sqdist(chunk, same_precision, labels[start:stop])
    return Assignment(labels, sqdist)


def _nearest(chunk: np.ndarray, C: np.ndarray, C32: np.ndarray, cc: np.ndarray) -> np.ndarray:
    """Labels for one chunk; rows whose float32 winner is not certain are redone in float64."""
    x32 = chunk.astype(np.float32, copy=False)
    scores = x32 @ C32.T
    scores *= -2.0
    scores += cc.astype(np.float32)
    labels = scores.argmin(axis=1)
    if C.shape[0] == 1:
        return labels
    top2 = np.partition(scores, 1, axis=1)[:, :2]
    gap = top2[:, 1] - top2[:, 0]
    # Worst-case error of one float32 score (input casts, dot product of length d, the adds),
    # doubled for slack; a gap above 2 bounds means the true winner is the float32 winner.
    cmax = math.sqrt(float(cc.max()))
    xnorm = 1.01 * np.sqrt(np.einsum("ij,ij->i", x32, x32))
    bound = 2.0 * (C.shape[1] + 8) * _UNIT_ROUNDOFF * (2.0 * xnorm * cmax + cmax**2)
    unsure = np.flatnonzero(gap <= 2.0 * bound)
    if unsure.size:
        limit = top2[unsure, 0].astype(np.float64) + 2.0 * bound[unsure].astype(np.float64)
        labels[unsure] = _nearest_float64(chunk[unsure], C, scores[unsure], limit)
    return labels


def _nearest_float64(
    x: np.ndarray, C: np.ndarray, scores: np.ndarray, limit: np.ndarray
) -> np.ndarray:
    """Labels (m,) of rows x (m, d) from float64 distances (ties -> lowest index), computed only
    to the centers whose float32 score is <= limit (m,): any other center's score exceeds the
    winner's by more than the float32 error bound, so it cannot win in float64 either."""
    rows, cols = np.nonzero(scores.astype(np.float64) <= limit[:, None])
    dist = np.empty(rows.size)
    for lo in range(0, rows.size, _ROW_BLOCK):
        r, c = rows[lo : lo + _ROW_BLOCK], cols[lo : lo + _ROW_BLOCK]
        diff = x[r].astype(np.float64) - C[c]
        dist[lo : lo + r.size] = (diff * diff).sum(axis=1)
    order = np.lexsort((cols, dist, rows))
    first = np.flatnonzero(np.diff(rows[order], prepend=-1))
    return cols[order[first]]


def _row_sqdist(chunk: np.ndarray, C: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """||x - c_label||^2 per row in the precision of C; a per-row reduction, so row-exact."""
    out = np.empty(chunk.shape[0], dtype=np.float32)
    for lo in range(0, chunk.shape[0], _ROW_BLOCK):
        hi = lo + _ROW_BLOCK
        diff = chunk[lo:hi] - C[labels[lo:hi]]
        diff *= diff
        out[lo:hi] = diff.sum(axis=1)
    return out


def cluster_stats(
    X: np.ndarray, assignment: Assignment, k: int, chunk_size: int = 65536
) -> ClusterStats:
    """Per-cluster count, sum and squared-distance sum of X (n, d) under `assignment`."""
    X = check_embeddings(X)
    _check_chunk(chunk_size)
    n, d = X.shape
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"k={k!r} must be an integer >= 1")
    labels = check_labels(assignment.labels, n, k)
    sq = np.asarray(assignment.sqdist, dtype=np.float64)
    if sq.shape != (n,):
        raise DataError(f"assignment.sqdist has shape {sq.shape}; expected ({n},)")
    sums = np.zeros((k, d))
    step = min(chunk_size, _ROW_BLOCK)
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        order = np.argsort(labels[lo:hi], kind="stable")
        grid_values = np.asarray(X[lo:hi], dtype=np.float64)[order]
        grid_values *= _GRID
        np.rint(grid_values, out=grid_values)
        sorted_labels = labels[lo:hi][order]
        starts = np.flatnonzero(np.diff(sorted_labels, prepend=-1))
        # per-cluster segment sums, O(rows * d) whatever k; integer-valued: exact in any order
        sums[sorted_labels[starts]] += np.add.reduceat(grid_values, starts, axis=0)
    sqsum = np.bincount(labels, weights=np.rint(sq * _GRID), minlength=k)
    count = np.bincount(labels, minlength=k).astype(np.int64)
    return ClusterStats(count, sums / _GRID, sqsum / _GRID)


UNIT_TOLERANCE = 1e-3  # |norm - 1| of an embedding row beyond which it is not "unit"


def check_unit_rows(X: np.ndarray, name: str = "embeddings", fix: str = "") -> None:
    """Raise DataError unless every row has norm 1: the federated statistics rely on it (the
    Lloyd round sends no squared distances, `unit_row_stats`; the noise is scaled for it).
    Reads X in blocks of _ROW_BLOCK rows (a memory-mapped cache is never copied whole)."""
    per_block = [0.0]
    for lo in range(0, len(X), _ROW_BLOCK):
        block = np.asarray(X[lo : lo + _ROW_BLOCK], dtype=np.float32)
        squared = np.einsum("nd,nd->n", block, block)
        per_block.append(float(np.max(np.abs(np.sqrt(squared) - 1.0))))
    worst = float(np.max(per_block))  # NaN if any row holds one
    if not worst <= UNIT_TOLERANCE:
        raise DataError(
            f"{name} are not L2-normalized (a row's norm is off 1 by {worst:.3g})"
            + (f"; {fix}" if fix else "")
        )


def unit_row_stats(count: np.ndarray, sums: np.ndarray, centers: np.ndarray) -> ClusterStats:
    """Cluster statistics of unit-norm rows from their counts and sums alone: for ||x|| = 1,
    the squared distances of a cell to its center c add up to n (1 + ||c||^2) - 2 c . S. So a
    Lloyd round needs no per-cell squared distances on the wire, and their noise (4x the
    sums', for a sensitivity of 4) no longer decides which centers the loop keeps."""
    count = np.asarray(count, dtype=np.int64)
    sums = np.asarray(sums, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    if sums.shape != centers.shape or count.shape != (len(centers),):
        raise ProtocolError(
            f"counts {count.shape} and sums {sums.shape} do not fit centers {centers.shape}"
        )
    spread = count * (1.0 + np.einsum("kd,kd->k", centers, centers))
    sqdist = spread - 2.0 * np.einsum("kd,kd->k", centers, sums)
    return ClusterStats(count, sums, np.maximum(sqdist, 0.0))


def merge_stats(stats: Iterable[ClusterStats]) -> ClusterStats:
    """Add the statistics of several centers (exact; independent of their order)."""
    items = list(stats)
    if not items:
        raise ProtocolError("merge_stats got no statistics; at least one center must reply")
    k, d = items[0].sum.shape
    for i, item in enumerate(items):
        if item.sum.shape != (k, d) or item.count.shape != (k,) or item.sqdist.shape != (k,):
            raise ProtocolError(
                f"statistics #{i} have k={item.count.shape[0]}, d={item.sum.shape[-1]}; "
                f"expected k={k}, d={d} like #0"
            )
    count = np.sum([s.count for s in items], axis=0, dtype=np.int64)
    total = np.sum([s.sum for s in items], axis=0, dtype=np.float64)
    sqdist = np.sum([s.sqdist for s in items], axis=0, dtype=np.float64)
    return ClusterStats(count, total, sqdist)


def weighted_kmeans_plusplus(
    points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """Count-weighted k-means++ (k-FED seeding) over the union of local centroids.

    points (m, d), weights (m,) >= 0 (member counts). The first center is drawn with probability
    proportional to weight, each next one proportional to weight * D^2 (D: distance to the
    nearest chosen center), greedily keeping the best of 2 + ln(k) draws as scikit-learn does.
    Returns (k, d) float64.
    """
    P = np.asarray(points, dtype=np.float64)
    if P.ndim != 2:
        raise DataError(f"points have shape {P.shape}; expected (m, d) local centroids")
    P = check_centers(P, P.shape[1], "points")
    w = np.asarray(weights, dtype=np.float64)
    m = P.shape[0]
    if w.shape != (m,) or not np.isfinite(w).all() or (w < 0).any():
        raise DataError(f"weights must be {m} finite values >= 0; got shape {w.shape}")
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"k={k!r} must be an integer >= 1")
    if m < k:
        raise DataError(f"k-means++ needs at least k={k} points; got m={m} local centroids")
    if np.count_nonzero(w) < k:
        raise DataError(f"only {np.count_nonzero(w)} of m={m} points have weight > 0; need k={k}")
    trials = 2 + int(math.log(k))
    norms = np.einsum("ij,ij->i", P, P)
    chosen = [int(_draw(w, 1, rng)[0])]
    closest = _sqdist_to(P, norms, np.array(chosen))[0]
    for _ in range(1, k):
        potential = w * closest
        if potential.sum() <= 0.0:  # the rest coincide with chosen centers: fall back to weight
            potential = np.where(np.isin(np.arange(m), chosen), 0.0, w)
        candidates = _draw(potential, trials, rng)
        cand_d2 = _sqdist_to(P, norms, candidates)
        best = int(np.argmin((w * np.minimum(closest, cand_d2)).sum(axis=1)))
        chosen.append(int(candidates[best]))
        closest = np.minimum(closest, cand_d2[best])
    return P[chosen].copy()


def _sqdist_to(P: np.ndarray, norms: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(rows), m) squared distances from P[rows] to every point of P, clipped at 0."""
    d2 = norms[rows, None] + norms[None, :] - 2.0 * (P[rows] @ P.T)
    return np.maximum(d2, 0.0)


def _draw(potential: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices drawn with probability proportional to `potential` (zeros are never drawn)."""
    cumulative = np.cumsum(potential)
    picks = np.searchsorted(cumulative, rng.random(size) * cumulative[-1], side="right")
    return np.minimum(picks, potential.size - 1)


def local_kmeans(
    X: np.ndarray, k: int, seed: int, fit_size: int = 65536, chunk_size: int = 65536
) -> LocalClusters:
    """A center's local centroids for k-FED seeding: the best of LOCAL_INITS scikit-learn
    KMeans fits, each started from our k-means++ (`weighted_kmeans_plusplus`, seeded).

    Fits on at most `fit_size` rows drawn with `seed`, then assigns all of X to count members
    and reports their means; k' = min(k, n) before clusters left without members are dropped.
    The seeding is ours because scikit-learn's k-means++ re-converts float32 rows to float64
    at every step: on a 65k-row center it took 90% of the fit.
    """
    X = check_embeddings(X)
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"k={k!r} must be an integer >= 1")
    if not isinstance(fit_size, int) or fit_size < 1:
        raise ConfigError(f"fit_size={fit_size!r} must be an integer >= 1")
    n = X.shape[0]
    rows = np.arange(n)
    if n > fit_size:
        rows = np.sort(np.random.default_rng(seed).choice(n, fit_size, replace=False))
    fit = np.asarray(X[rows], dtype=np.float32)
    rng, weights, best = np.random.default_rng(seed), np.ones(len(fit)), None
    for _ in range(LOCAL_INITS):
        init = weighted_kmeans_plusplus(fit, weights, min(k, n), rng)
        model = KMeans(n_clusters=len(init), init=init, n_init=1, random_state=seed).fit(fit)
        if best is None or model.inertia_ < best.inertia_:
            best = model
    centers = best.cluster_centers_.astype(np.float64)
    stats = cluster_stats(X, assign(X, centers, chunk_size), centers.shape[0], chunk_size)
    used = stats.count > 0
    return LocalClusters(stats.sum[used] / stats.count[used, None], stats.count[used])
