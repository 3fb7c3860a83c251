"""The Lloyd loop under a minimum cell size, shared by the federated round and the reference.

Each round asks a `LloydSource` twice: first only how many members each current center has
(`counts`), then, for the centers whose cell holds at least `min_count` members, every sample's
contribution (`stats`: count, sum, squared distance). A center with a smaller cell is merged
away, that is, dropped: its members join their nearest remaining center, so every statistic
ever computed describes at least min_count members, and nothing of the small cell is revealed
beyond its size. Dropping, unlike re-seeding a small cell each round (which made the inertia
oscillate, 5.0, 11.0, 17.6, 10.3, ...), only ever removes centers, so the loop settles.

Once the loop has settled, a few local moves try to do better from the best centers so far: a
cluster is split in two (when merges left fewer than k centers), or the two clusters that are
cheapest to merge are merged while the widest one is split (at k). A move that does not beat
the best centers costs rounds but nothing else: the loop keeps the best cells it measured and
returns their means (one more Lloyd step, from statistics already released), so the result
never depends on where it stopped. In the federation the source is a pair of
secure sums (server/curation/round.py); in the centralized reference it is the pooled rows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np

from feddel.common.curation.kmeans import (
    ClusterStats,
    assign,
    check_centers,
    check_embeddings,
    cluster_stats,
    merge_stats,
)
from feddel.common.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLIT_SCALE = 0.5  # a split puts two centers 0.5 RMS radii either side of the cluster's mean
MOVES = 8  # local moves tried after the loop settles (each costs a few rounds)
PATIENCE = 2  # rounds without beating the best centers before the loop counts as settled


class LloydSource(Protocol):
    """Where a Lloyd round's aggregates come from."""

    def counts(self, cells: np.ndarray) -> np.ndarray:
        """(k,) members of each center's cell."""
        ...

    def stats(self, cells: np.ndarray, open_cells: np.ndarray) -> ClusterStats:
        """Per-cell count, sum and squared distance, every sample assigned to its nearest of
        cells[open_cells] (the cells just counted, those that reached min-count)."""
        ...


class KMeansResult(NamedTuple):
    centers: np.ndarray  # (k', d) float64: the means of the best cells measured, k' <= k
    inertia_history: list[float]  # inertia of the centers each round measured
    rounds: int


class LloydRun(NamedTuple):
    result: KMeansResult
    stats: ClusterStats  # the best cells measured, whose means are result.centers


class _Measured(NamedTuple):
    centers: np.ndarray
    stats: ClusterStats


def inertia_converged(previous: float, current: float, tol: float) -> bool:
    """True when |previous - current| / previous < tol (or both are zero)."""
    if previous <= 0.0:
        return current <= 0.0
    return abs(previous - current) / previous < tol


def lloyd_rounds(
    source: LloydSource,
    init: np.ndarray,
    max_rounds: int,
    tol: float,
    rng: np.random.Generator,
    min_count: int = 1,
    k: int | None = None,
    moves: int = MOVES,
) -> LloydRun:
    """Lloyd from `init` with cells under `min_count` merged away, then up to `moves` local
    moves toward `k` centers (default: as many as `init`); at most `max_rounds` rounds; the
    means of the best cells measured."""
    _check_loop(max_rounds, tol, min_count)
    centers = np.asarray(init, dtype=np.float64)
    target = len(centers) if k is None else k
    history: list[float] = []
    best: _Measured | None = None
    stale = tried = 0
    for _ in range(max_rounds):
        counts = source.counts(centers)
        open_cells = counts >= min_count
        if not open_cells.any():
            raise DataError(
                f"no cluster holds min-count={min_count} members ({int(np.sum(counts))} samples "
                "in all); lower k or min-count, or add data"
            )
        if not open_cells.all():
            log.info("merged %d cell(s) under min-count into their neighbours", np.sum(~open_cells))
        stats = source.stats(centers, open_cells)
        centers = centers[open_cells]
        history.append(stats.inertia)
        improved = best is None or stats.inertia < best.stats.inertia * (1.0 - tol)
        if best is None or stats.inertia < best.stats.inertia:
            best = _Measured(centers, stats)
        stale = 0 if improved else stale + 1
        moved = cell_means(stats, centers, min_count)
        settled = (
            stale >= PATIENCE
            or np.array_equal(moved, centers)
            or (len(history) > 1 and inertia_converged(history[-2], history[-1], tol))
        )
        if settled:
            proposal = None if tried >= moves else local_move(best, min_count, target, tried, rng)
            if proposal is None:
                break
            tried, stale, moved = tried + 1, 0, proposal
        centers = moved
    assert best is not None  # max_rounds >= 1
    final = cell_means(best.stats, best.centers, min_count)  # one more Lloyd step, no release
    return LloydRun(KMeansResult(final, history, len(history)), best.stats)


def cell_means(stats: ClusterStats, centers: np.ndarray, min_count: int) -> np.ndarray:
    """Each center moved to the mean of its cell. A cell that holds fewer than min_count
    members here (possible only when counts carry DP noise) keeps its center: a mean of a
    few noisy members would jump anywhere."""
    count = np.asarray(stats.count, dtype=np.float64)
    sure = count >= max(min_count, 1)
    moved = np.array(centers, dtype=np.float64)
    moved[sure] = stats.sum[sure] / count[sure, None]
    return moved


def local_move(
    best: _Measured, min_count: int, k: int, attempt: int, rng: np.random.Generator
) -> np.ndarray | None:
    """Centers for one more try from the best measured ones: split a cluster in two (fewer
    than k centers), or merge the cheapest pair and split another (k centers). Only clusters
    of at least 2 x min_count members are split; attempts cycle through them widest first.
    None when no cluster can be split."""
    stats = best.stats
    means = cell_means(stats, best.centers, min_count)
    count = np.asarray(stats.count, dtype=np.float64)
    splittable = [int(j) for j in np.argsort(-stats.sqdist) if count[j] >= 2 * min_count]
    if not splittable:
        return None
    widest = splittable[attempt % len(splittable)]
    direction = rng.standard_normal(means.shape[1])
    direction /= max(float(np.linalg.norm(direction)), np.finfo(np.float64).tiny)
    offset = SPLIT_SCALE * math.sqrt(max(stats.sqdist[widest], 0.0) / count[widest]) * direction
    halves = np.stack([means[widest] + offset, means[widest] - offset])
    if len(means) < k:
        rest = np.delete(means, widest, axis=0)
        return np.concatenate([rest, halves])
    pair = _cheapest_merge(means, count, exclude=widest)
    if pair is None:
        return None
    a, b = pair
    merged = (means[a] * count[a] + means[b] * count[b]) / (count[a] + count[b])
    rest = np.delete(means, [a, b, widest], axis=0)
    return np.concatenate([rest, merged[None], halves])


def _cheapest_merge(means: np.ndarray, count: np.ndarray, exclude: int) -> tuple[int, int] | None:
    """The pair whose merge raises the inertia least: n_a n_b / (n_a + n_b) ||m_a - m_b||^2."""
    d2 = ((means[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
    cost = np.outer(count, count) / np.maximum(count[:, None] + count[None, :], 1e-12) * d2
    cost[exclude, :] = cost[:, exclude] = np.inf
    np.fill_diagonal(cost, np.inf)
    if not np.isfinite(cost).any():
        return None
    a, b = np.unravel_index(int(np.argmin(cost)), cost.shape)
    return int(a), int(b)


class PooledSource:
    """The reference's source: statistics computed directly over local shards."""

    def __init__(self, shards: Sequence[np.ndarray], chunk_size: int = 65536):
        self.shards = list(shards)
        self.chunk_size = chunk_size
        self._last: tuple[np.ndarray, ClusterStats] | None = None

    def counts(self, cells: np.ndarray) -> np.ndarray:
        return self.pooled(cells).count

    def stats(self, cells: np.ndarray, open_cells: np.ndarray) -> ClusterStats:
        return self.pooled(cells[open_cells])

    def pooled(self, centers: np.ndarray) -> ClusterStats:
        """Every shard's statistics of `centers`, merged (the last ones are reused)."""
        if self._last is not None and np.array_equal(self._last[0], centers):
            return self._last[1]
        k = len(centers)
        stats = merge_stats(
            cluster_stats(p, assign(p, centers, self.chunk_size), k, self.chunk_size)
            for p in self.shards
        )
        self._last = (np.array(centers), stats)
        return stats


def lloyd(
    shards: np.ndarray | Sequence[np.ndarray],
    init: np.ndarray,
    max_rounds: int,
    tol: float,
    rng: np.random.Generator,
    chunk_size: int = 65536,
    min_count: int = 1,
    moves: int = MOVES,
) -> KMeansResult:
    """The Lloyd loop over one matrix or a list of shards (one per center), in memory."""
    parts = [shards] if isinstance(shards, np.ndarray) else list(shards)
    if not parts:
        raise DataError("lloyd got no shards; pass at least one (n, d) matrix")
    parts = [check_embeddings(p, f"shard {i}") for i, p in enumerate(parts)]
    centers = check_centers(init, parts[0].shape[1], "init")
    source = PooledSource(parts, chunk_size)
    return lloyd_rounds(source, centers, max_rounds, tol, rng, min_count, moves=moves).result


def _check_loop(max_rounds: int, tol: float, min_count: int) -> None:
    if not isinstance(max_rounds, int) or max_rounds < 1:
        raise ConfigError(f"max_rounds={max_rounds!r} must be an integer >= 1")
    if not math.isfinite(tol) or tol < 0:
        raise ConfigError(f"tol={tol!r} must be a finite number >= 0")
    if min_count < 1:
        raise ConfigError(f"min_count={min_count!r} must be >= 1")
