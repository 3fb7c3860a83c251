"""Which samples are kept: outliers, near-duplicates, the budget split, score thresholds.

Functions a center runs see only its own samples (embeddings, scores, ids); functions the server
runs see only aggregates (eligible counts, score histograms, survivor counts). Scores follow PVI:
lower = harder; negate a hardness where higher means harder.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from feddel.common.curation.kmeans import check_centers, check_embeddings, check_labels
from feddel.common.errors import ConfigError, DataError, ProtocolError

HISTOGRAM_BINS = 64
KEEP_CHOICES = ("hard", "easy")
_DEDUP_BLOCK = 1024  # candidates compared at once; the kept set is scanned 16384 rows at a time
_KEPT_BLOCK = 16384


def cosine_distance_to_centroid(
    X: np.ndarray, labels: np.ndarray, centers: np.ndarray, chunk_size: int = 16384
) -> np.ndarray:
    """1 - cos(x, c_label) for each row of X (n, d); (n,) float64. A zero vector counts as cos 0."""
    X = check_embeddings(X)
    C = check_centers(centers, X.shape[1])
    y = check_labels(labels, X.shape[0], C.shape[0])
    c_norm = np.linalg.norm(C, axis=1)
    out = np.empty(X.shape[0])
    for lo in range(0, X.shape[0], chunk_size):
        x = np.asarray(X[lo : lo + chunk_size], dtype=np.float64)
        lab = y[lo : lo + chunk_size]
        norms = np.linalg.norm(x, axis=1) * c_norm[lab]
        cos = np.einsum("ij,ij->i", x, C[lab])
        np.divide(cos, norms, out=cos, where=norms > 0)
        cos[norms == 0] = 0.0
        out[lo : lo + x.shape[0]] = 1.0 - cos
    return out


def outlier_mask(dist: np.ndarray, eps: float = 0.9) -> np.ndarray:
    """MedDEL's outlier test: keep (n,) bool = cosine distance to the centroid <= eps."""
    d = np.asarray(dist, dtype=np.float64)
    if not math.isfinite(eps) or not 0.0 < eps <= 2.0:
        raise ConfigError(f"eps={eps!r} must be in (0, 2] (a cosine distance)")
    if d.ndim != 1 or not np.isfinite(d).all():
        raise DataError(f"dist must be a 1-D array of finite distances; got shape {d.shape}")
    return d <= eps


def near_duplicate_mask(
    X: np.ndarray,
    labels: np.ndarray,
    eta: float,
    hardness: np.ndarray,
    keep: str = "hard",
    groups: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy within-cluster dedup: keep (m,) bool.

    Within each cluster (and each group x cluster when `groups` (m,) is given: a center dedups
    only its own samples), samples are visited by hardness (descending for keep="hard", so the
    harder of a near-duplicate pair survives; ascending for "easy"; ties by index) and one is
    kept iff its max cosine to the samples already kept in its cell is <= eta. Unlike SemDeDup,
    which drops a sample similar to any earlier one, a sample is only measured against survivors.
    `rows` (m,) picks the rows of X (n, d) that take part (default all, m = n); labels, hardness
    and groups have one entry per taking-part row. A center passes its memory-mapped matrix and
    the rows, so the subset is read cell by cell and never copied whole.
    Cost O(m_j * kept_j * d) per cell, in blocked float32 matmuls.
    """
    _check_eta(eta)
    cells = _ordered_cells(X, labels, hardness, keep, groups, rows)
    keep_mask = np.zeros(len(cells.rows), dtype=bool)
    for idx, E in cells:
        keep_mask[idx] = _greedy_keep(E, eta)
    return keep_mask


def meddel_survivors_by_eta(
    X: np.ndarray,
    labels: np.ndarray,
    eta_grid: Sequence[float],
    hardness: np.ndarray,
    keep: str = "hard",
    groups: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Survivors of `near_duplicate_mask` for each eta: (len(eta_grid),) int64.

    Pass the eps-survivors (`outlier_mask`) only, as `rows` or as X itself. Cells are ordered
    and normalized once, then deduplicated at every eta; a server sums the centers' counts and
    calls `pick_eta`.
    """
    grid = [float(e) for e in eta_grid]
    if not grid:
        raise ConfigError("eta_grid is empty; give at least one eta in [-1, 1]")
    for eta in grid:
        _check_eta(eta)
    counts = np.zeros(len(grid), dtype=np.int64)
    for _, E in _ordered_cells(X, labels, hardness, keep, groups, rows):
        counts += [int(_greedy_keep(E, eta).sum()) for eta in grid]
    return counts


def pick_eta(eta_grid: Sequence[float], survivors_total: Sequence[int], target: int) -> float:
    """The eta whose survivor count is closest to `target`; ties -> the higher eta."""
    grid = np.asarray(eta_grid, dtype=np.float64)
    counts = np.asarray(survivors_total, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or counts.shape != grid.shape:
        raise ProtocolError(f"{counts.size} survivor counts for {grid.size} etas; need one per eta")
    gaps = np.abs(counts - target)
    best = np.flatnonzero(gaps == gaps.min())
    return float(grid[best].max())


def _check_eta(eta: float) -> None:
    if not math.isfinite(eta) or not -1.0 <= eta <= 1.0:
        raise ConfigError(f"eta={eta!r} must be in [-1, 1] (a cosine similarity)")


class _Cells:
    """The cells of a dedup, iterable as (positions in visiting order, their unit rows)."""

    def __init__(self, X: np.ndarray, rows: np.ndarray, cell: np.ndarray, order: np.ndarray):
        self.X, self.rows, self.cell, self.order = X, rows, cell, order

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        bounds = np.flatnonzero(np.diff(self.cell[self.order])) + 1
        for idx in np.split(self.order, bounds):
            E = np.asarray(self.X[self.rows[idx]], dtype=np.float32)
            norms = np.linalg.norm(E, axis=1, keepdims=True)
            yield idx, E / np.maximum(norms, np.finfo(np.float32).tiny)


def _ordered_cells(
    X: np.ndarray,
    labels: np.ndarray,
    hardness: np.ndarray,
    keep: str,
    groups: np.ndarray | None,
    rows: np.ndarray | None,
) -> _Cells:
    """Validate, then order the taking-part rows by cell and hardness (see near_duplicate_mask)."""
    X = check_embeddings(X)
    if rows is None:
        taking_part = np.arange(X.shape[0])
    else:
        taking_part = np.asarray(rows)
        if taking_part.ndim != 1 or not np.issubdtype(taking_part.dtype, np.integer):
            raise DataError(f"rows has shape {taking_part.shape}; expected (m,) row indices")
        if taking_part.size and (taking_part.min() < 0 or taking_part.max() >= X.shape[0]):
            raise DataError(f"rows must lie in [0, {X.shape[0] - 1}] (rows of X)")
    n = taking_part.size
    y = check_labels(labels, n, int(np.max(labels)) + 1 if n else 1)
    h = np.asarray(hardness, dtype=np.float64)
    if h.shape != (n,) or not np.isfinite(h).all():
        raise DataError(f"hardness has shape {h.shape}; expected ({n},) finite values")
    if keep not in KEEP_CHOICES:
        raise ConfigError(f"keep={keep!r} must be 'hard' or 'easy'")
    cell = y
    if groups is not None:
        g = np.asarray(groups)
        if g.shape != (n,):
            raise DataError(f"groups has shape {g.shape}; expected ({n},)")
        cell = np.unique(g, return_inverse=True)[1].reshape(n) * (int(y.max()) + 1) + y
    order = np.lexsort((np.arange(n), -h if keep == "hard" else h, cell))
    return _Cells(X, taking_part, cell, order)


def _greedy_keep(E: np.ndarray, eta: float) -> np.ndarray:
    """Greedy pass over unit rows E (m, d) in order: keep iff max cos to kept rows <= eta.

    Block by block: rows covered by the bank of kept rows drop out first, so only the block's
    remaining rows are compared with each other (cheap when most rows are duplicates).
    """
    kept = np.zeros(E.shape[0], dtype=bool)
    bank = np.empty_like(E)
    n_bank = 0
    for lo in range(0, E.shape[0], _DEDUP_BLOCK):
        block = E[lo : lo + _DEDUP_BLOCK]
        ok = np.ones(block.shape[0], dtype=bool)
        for start in range(0, n_bank, _KEPT_BLOCK):
            ok &= (block @ bank[start : min(start + _KEPT_BLOCK, n_bank)].T).max(axis=1) <= eta
        alive = np.flatnonzero(ok)
        ok[alive] = _greedy_within(block[alive], eta)
        bank[n_bank : n_bank + ok.sum()] = block[ok]
        n_bank += int(ok.sum())
        kept[lo : lo + block.shape[0]] = ok
    return kept


def _greedy_within(B: np.ndarray, eta: float) -> np.ndarray:
    """The greedy pass among rows B (m, d) that no earlier kept row covers: (m,) keep.

    Only rows with a later near-duplicate can remove anything, so only they are visited.
    """
    sims = B @ B.T
    later = np.triu(sims > eta, 1)
    keep = np.ones(B.shape[0], dtype=bool)
    for i in np.flatnonzero(later.any(axis=1)):
        if keep[i]:
            keep[later[i]] = False
    return keep


def within_series_share(
    series: np.ndarray,
    candidate: np.ndarray,
    eligible: np.ndarray,
    hardness: np.ndarray,
    share: float,
    keep: str = "hard",
) -> np.ndarray:
    """(n,) bool: the candidates within their series' share, the hardest first.

    A series (`series`: (n,) codes of a volume, a cine, a DICOM series) of s eligible samples
    holds max(1, floor(share * s)) of its candidates within its share, taken hardest first
    (easiest for keep="easy"): at most its proportional share of the budget, a short series one.
    `share` = 0 puts every candidate within.
    """
    codes = np.asarray(series)
    cand = np.asarray(candidate, dtype=bool)
    n = cand.size
    if codes.shape != (n,) or np.asarray(eligible).shape != (n,) or np.shape(hardness) != (n,):
        raise DataError(f"series, eligible and hardness must have one entry per sample ({n})")
    if not math.isfinite(share) or not 0.0 <= share <= 1.0:
        raise ConfigError(f"series share={share!r} must be in [0, 1] (0 = no cap)")
    if keep not in KEEP_CHOICES:
        raise ConfigError(f"keep={keep!r} must be 'hard' or 'easy'")
    if share == 0.0 or not cand.any():
        return cand.copy()
    codes = np.unique(codes, return_inverse=True)[1].reshape(n)
    sizes = np.bincount(codes, weights=np.asarray(eligible, dtype=np.float64))
    caps = np.maximum(1, np.floor(share * sizes)).astype(np.int64)
    index = np.flatnonzero(cand)
    h = np.asarray(hardness, dtype=np.float64)[index]
    order = index[np.lexsort((index, -h if keep == "hard" else h, codes[index]))]
    first = np.searchsorted(codes[order], codes[order], side="left")
    rank = np.full(n, np.iinfo(np.int64).max)
    rank[order] = np.arange(order.size) - first
    return cand & (rank < caps[codes])


def water_fill(eligible: np.ndarray, budget: int) -> np.ndarray:
    """Split `budget` across clusters: (k,) int64 quotas, sum == min(budget, eligible.sum()).

    Every cluster gets an equal share capped by its eligible count; what the capped ones leave is
    spread again over the others. Equivalently: a water level L with quota_j = min(eligible_j, L),
    and the remainder (< number of clusters above L) goes +1 to the lowest-index clusters above L.
    """
    e = np.asarray(eligible)
    if e.ndim != 1 or e.size == 0 or not np.issubdtype(e.dtype, np.integer) or (e < 0).any():
        raise DataError(f"eligible must be a non-empty 1-D array of counts >= 0; got {e!r}")
    if not isinstance(budget, int | np.integer) or budget < 0:
        raise ConfigError(f"budget={budget!r} must be an integer >= 0")
    e = e.astype(np.int64)
    total = min(int(budget), int(e.sum()))
    s = np.sort(e)
    below = np.concatenate([[0], np.cumsum(s)[:-1]])  # sum of the clusters smaller than s[i]
    rest = np.arange(e.size, 0, -1)
    i = int(np.argmax(below + s * rest >= total))
    level = (total - int(below[i])) // int(rest[i])
    quotas = np.minimum(e, level)
    remainder = total - int(quotas.sum())
    quotas[np.flatnonzero(e > level)[:remainder]] += 1
    return quotas


def score_edges(lo: float, hi: float, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """(bins + 1,) equal-width edges on [lo, hi], shared by every center of a round."""
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"score range [{lo!r}, {hi!r}] must be finite with lo < hi")
    if not isinstance(bins, int) or bins < 1:
        raise ConfigError(f"bins={bins!r} must be an integer >= 1")
    return np.linspace(lo, hi, bins + 1)


def _bin_index(scores: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin b holds edges[b] <= s < edges[b+1] (the last also s == hi); outside values clip."""
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or not (np.diff(e) > 0).all():
        raise ProtocolError(f"histogram edges must be >= 2 increasing values; got shape {e.shape}")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or not np.isfinite(s).all():
        raise DataError(f"scores must be a 1-D array of finite values; got shape {s.shape}")
    return np.clip(np.searchsorted(e, s, side="right") - 1, 0, e.size - 2)


def score_histograms(
    scores: np.ndarray, labels: np.ndarray, k: int, edges: np.ndarray
) -> np.ndarray:
    """(k, bins) int64 counts of each cluster's scores; values outside the edges are clipped."""
    b = _bin_index(scores, edges)
    y = check_labels(labels, b.size, k)
    bins = len(edges) - 1
    return np.bincount(y * bins + b, minlength=k * bins).reshape(k, bins).astype(np.int64)


@dataclass(frozen=True)
class ClusterPlan:
    """Take every sample of a cluster in bins < threshold_bin, and this fraction of that bin;
    or, for a cluster whose histogram was never asked for (fewer candidates than min-count),
    this `ranked_fraction` of a center's candidates in it, hardest first."""

    quota: int
    threshold_bin: int
    boundary_fraction: float
    ranked_fraction: float = 0.0


def plan_from_histograms(hist: np.ndarray, quotas: np.ndarray) -> list[ClusterPlan]:
    """Per cluster, the lowest-score (hardest) bins whose expected selection equals the quota."""
    H = np.asarray(hist)
    q = np.asarray(quotas)
    if H.ndim != 2 or q.shape != (H.shape[0],):
        raise ProtocolError(f"hist {H.shape} and quotas {q.shape} must be (k, bins) and (k,)")
    over = np.flatnonzero((q < 0) | (q > H.sum(axis=1)))
    if over.size:
        j = int(over[0])
        raise ProtocolError(f"quota {q[j]} of cluster {j} is outside [0, {H[j].sum()}]")
    plans = []
    for row, quota in zip(H, q.tolist(), strict=True):
        if quota == 0:
            plans.append(ClusterPlan(0, 0, 0.0))
            continue
        cum = np.cumsum(row)
        t = int(np.searchsorted(cum, quota))
        before = int(cum[t - 1]) if t else 0
        plans.append(ClusterPlan(int(quota), t, (quota - before) / int(row[t])))
    return plans


def boundary_draw(sample_ids: Sequence[str], seed: int) -> np.ndarray:
    """(n,) float64 in [0, 1): blake2b of f"{seed}:{id}", the same wherever the sample lives."""
    draws = np.empty(len(sample_ids))
    for i, sid in enumerate(sample_ids):
        digest = hashlib.blake2b(f"{seed}:{sid}".encode(), digest_size=8).digest()
        draws[i] = (int.from_bytes(digest, "big") >> 11) / 2.0**53
    return draws


def apply_plan(
    scores: np.ndarray,
    labels: np.ndarray,
    sample_ids: Sequence[str],
    edges: np.ndarray,
    plans: Sequence[ClusterPlan],
    seed: int,
) -> np.ndarray:
    """A center's selection (n,) bool from the server's per-cluster plans.

    All samples in bins below the threshold are taken; in the threshold bin, a center holding
    n_b of the cluster's samples takes the floor(f * n_b + 0.5) with the smallest boundary_draw
    (ties by index). Each center is off by at most 1/2, so for every cluster
    |selected_j - quota_j| <= (centers holding its boundary bin) / 2, and it is exact with one.
    A cluster planned without a histogram (`ranked_fraction` > 0) is one boundary "bin" ranked
    by score instead: the floor(f * n + 0.5) lowest scores of the center's n in it, with the
    same bound.
    """
    b = _bin_index(scores, edges)
    y = check_labels(labels, b.size, len(plans))
    if len(sample_ids) != b.size:
        raise DataError(f"{len(sample_ids)} sample ids for {b.size} scores; need one per sample")
    threshold = np.array([p.threshold_bin for p in plans], dtype=np.int64)
    fraction = np.array([p.boundary_fraction for p in plans])
    selected = b < threshold[y]
    boundary = np.flatnonzero((b == threshold[y]) & (fraction[y] > 0))
    draws = boundary_draw([sample_ids[i] for i in boundary], seed)
    for j in np.unique(y[boundary]):
        in_j = y[boundary] == j
        members = boundary[in_j]
        rank = np.lexsort((members, draws[in_j]))
        take = math.floor(fraction[j] * members.size + 0.5)
        selected[members[rank[:take]]] = True
    ranked = np.array([p.ranked_fraction for p in plans])
    for j in np.flatnonzero(ranked > 0):
        members = np.flatnonzero(y == j)
        rank = np.lexsort((members, np.asarray(scores, dtype=np.float64)[members]))
        selected[members[rank[: math.floor(ranked[j] * members.size + 0.5)]]] = True
    return selected


def random_selection(sample_ids: Sequence[str], R: float, seed: int) -> np.ndarray:
    """Uniform baseline (n,) bool: keep a sample iff boundary_draw < R (no coordination needed)."""
    if not math.isfinite(R) or not 0.0 <= R <= 1.0:
        raise ConfigError(f"R={R!r} must be in [0, 1] (the retention)")
    return boundary_draw(sample_ids, seed) < R
