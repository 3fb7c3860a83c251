"""One curation round's per-center computation, shared by the centralized and federated runs.

A center holds unit-norm embeddings X (n, d). Given global centroids it assigns, drops outliers
and near-duplicates, scores each candidate by cluster PVI, and summarizes the scores as
per-cluster histograms. Given a plan it selects. The centralized reference calls the same
functions on every center in one process; the Flower client calls them one phase at a time.
Nothing here decides what may leave a center: that is `common/privacy/cells.py` and the protocol.

Scores: cluster PVI (docs/science.md 2) = log2 g_x(y) - log2 pi_y with g_x = softmax(-d^2 / tau).
Within a cluster the prior is constant, so ranking by PVI equals ranking by t = log2 g_x(y);
because every sample is assigned to its nearest centroid, g_x(y) >= 1/k and t lies in
[-log2 k, 0]. Histograms are therefore taken over t on fixed edges that every center can compute
from k alone, with no data-dependent range to agree on.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from feddel.common.curation.kmeans import assign
from feddel.common.curation.selection import (
    HISTOGRAM_BINS,
    ClusterPlan,
    apply_plan,
    cosine_distance_to_centroid,
    meddel_survivors_by_eta,
    near_duplicate_mask,
    outlier_mask,
    plan_from_histograms,
    score_edges,
    score_histograms,
    water_fill,
    within_series_share,
)
from feddel.common.curation.vinfo import cluster_pvi

DEDUP_POOL_LIMIT = 50_000
# Across series, two samples are near-duplicates only when the encoder can hardly tell them
# apart (a re-export, a resave): with the random-init encoder 5% of the pairs of *different*
# modes of the real-image federation lie above cos 0.99, and a center-wide threshold of 0.98
# cost FedDEL whole modes there.
CROSS_SERIES_ETA = 0.999
# MedDEL picks eta for the budget from this grid. It spans every cosine, so a budget down to one
# sample per cluster is reachable: a trained encoder spreads a cluster so far that eta 0.5 still
# kept 12% of the demo federation (the grid used to start there).
ETA_GRID = np.round(np.arange(-1.0, 1.0001, 0.01), 2)


class CenterScores(NamedTuple):
    """Per-sample results of the score phase at one center (never sent anywhere)."""

    labels: np.ndarray  # (n,) int32 global cluster of each sample
    sqdist: np.ndarray  # (n,) float32 squared distance to that centroid
    outlier: np.ndarray  # (n,) bool: cosine distance to centroid > eps
    duplicate: np.ndarray  # (n,) bool: near-duplicate of a harder kept sample (cos > eta)
    pvi: np.ndarray  # (n,) float64 cluster PVI in bits (low = hard)
    log_gx: np.ndarray  # (n,) float64 t = log2 g_x(y), the histogram variable (0 past a series'
    # share of the budget, see score_center)
    candidate: np.ndarray  # (n,) bool: eligible, not outlier, not duplicate
    beyond_share: np.ndarray | None = None  # (n,) bool: a candidate past its series' share


def pvi_edges(k: int, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Fixed histogram edges over t = log2 g_x(y) in [-log2 k, 0] (see module docstring)."""
    return score_edges(-math.log2(k) if k > 1 else -1.0, 0.0, bins)


def auto_tau(inertia: float, count: int) -> float:
    """Softmax temperature = mean squared distance to the assigned centroid.

    With a fixed tau the softmax is either flat (tau too large: every t near -log2 k) or one-hot
    (too small); scaling by the data's own spread keeps t informative for any encoder.
    """
    return max(inertia / max(count, 1), 1e-12)


def smoothed_prior(counts: np.ndarray) -> np.ndarray:
    """Global cluster prior pi = (count + 1) / (N + k): add-one so clusters whose every cell
    was suppressed for privacy still have a finite PVI."""
    counts = np.asarray(counts, dtype=np.float64)
    return (counts + 1.0) / (counts.sum() + counts.size)


def score_center(
    X: np.ndarray,
    eligible: np.ndarray,
    centers: np.ndarray,
    prior: np.ndarray,
    *,
    tau: float,
    eps: float,
    eta: float,
    keep: str,
    series: np.ndarray | None = None,
    series_share: float = 0.0,
) -> CenterScores:
    """Assign, drop outliers and near-duplicates among the eligible, and score by cluster PVI.

    X: (n, d) unit rows; eligible: (n,) bool (e.g. not disruptive); centers: (k, d);
    prior: (k,) global cluster prior. `series` (n,) codes (the center's own grouping of its
    samples into acquisitions, common/data/scan.py) make near-duplicates a matter of one series:
    cos > eta within a series, cos > max(eta, CROSS_SERIES_ETA) across series; without them the
    whole center is one series. `series_share` > 0 then marks the candidates beyond their
    series' share of the budget (`within_series_share`) and moves them to the easy end of the
    score range (t = 0): they still count, so the budget can still be filled and every cluster
    keeps its size for the privacy floor, but the coordinator gives quotas to the candidates
    within their share first (`plan_feddel`), and a cluster takes them only after all of those,
    so the slices of one volume or the frames of one cine cannot fill the budget while other
    series wait.
    """
    assignment = assign(X, centers)
    labels, sqdist = assignment.labels, assignment.sqdist
    pvi = cluster_pvi(X, labels, centers, prior, tau)
    log_gx = pvi + np.log2(prior[labels])
    outlier = ~outlier_mask(cosine_distance_to_centroid(X, labels, centers), eps) & eligible
    kept = eligible & ~outlier
    duplicate = np.zeros(len(labels), dtype=bool)
    passes: list[tuple[float, np.ndarray | None]] = [(eta, None)]  # one series: the center
    if series is not None:  # within each series, then across them
        passes = [(eta, np.asarray(series)), (max(eta, CROSS_SERIES_ETA), None)]
    for threshold, within in passes:
        index = np.flatnonzero(kept & ~duplicate)
        if index.size:
            survivors = near_duplicate_mask(
                X, dedup_cells(labels[index]), threshold, hardness=-pvi[index], keep=keep,
                groups=None if within is None else within[index], rows=index,
            )  # fmt: skip
            duplicate[index[~survivors]] = True
    candidate = kept & ~duplicate
    beyond = np.zeros(len(labels), dtype=bool)
    if series is not None and series_share > 0:
        within = within_series_share(series, candidate, eligible, -pvi, series_share, keep)
        beyond = candidate & ~within
        log_gx = np.where(beyond, 0.0, log_gx)
    return CenterScores(labels, sqdist, outlier, duplicate, pvi, log_gx, candidate, beyond)


def dedup_cells(labels: np.ndarray) -> np.ndarray:
    """Cells within which a center removes near-duplicates: its whole pool up to
    DEDUP_POOL_LIMIT samples, else its clusters (SemDeDup's blocking).

    Frames of one video can fall on both sides of a cluster boundary, and those are exactly the
    hard samples the selection prefers; deduplicating per cluster only would keep one frame per
    side. A center may compare all of its own samples, so it does, while that stays cheap
    (O(n * kept * d)); above the limit it falls back to per-cluster cells.
    """
    if len(labels) <= DEDUP_POOL_LIMIT:
        return np.zeros(len(labels), dtype=labels.dtype)
    return labels


def beyond_share_counts(scores: CenterScores, k: int) -> np.ndarray:
    """(k,) candidates per cluster past their series' share (they sit in the last histogram bin)."""
    beyond = scores.beyond_share
    if beyond is None:
        return np.zeros(k, dtype=np.int64)
    return np.bincount(scores.labels[scores.candidate & beyond], minlength=k).astype(np.int64)


def candidate_histograms(scores: CenterScores, k: int, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """(k, bins) counts of candidate scores per cluster: the only form in which scores travel."""
    mask = scores.candidate
    return score_histograms(scores.log_gx[mask], scores.labels[mask], k, pvi_edges(k, bins))


def meddel_survivors(
    X: np.ndarray, scores: CenterScores, eligible: np.ndarray, keep: str
) -> np.ndarray:
    """Survivor counts of MedDEL's eps + eta dedup for every eta of ETA_GRID (score once,
    threshold many), so the server can pick the eta that hits the target retention."""
    kept = eligible & ~scores.outlier
    index = np.flatnonzero(kept)
    if index.size == 0:
        return np.zeros(len(ETA_GRID), dtype=np.int64)
    return meddel_survivors_by_eta(
        X, scores.labels[index], ETA_GRID, keep=keep, hardness=-scores.pvi[index], rows=index
    )


def select_feddel(
    scores: CenterScores,
    sample_ids: list[str],
    plans: list[ClusterPlan],
    edges: np.ndarray,
    seed: int,
) -> np.ndarray:
    """Apply the per-cluster plan (threshold bin + boundary fraction) to the candidates."""
    selected = np.zeros(len(sample_ids), dtype=bool)
    index = np.flatnonzero(scores.candidate)
    if index.size:
        chosen = apply_plan(
            scores.log_gx[index],
            scores.labels[index],
            [sample_ids[i] for i in index],
            edges,
            plans,
            seed,
        )
        selected[index[chosen]] = True
    return selected


def select_meddel(
    X: np.ndarray, scores: CenterScores, eligible: np.ndarray, eta: float, keep: str
) -> np.ndarray:
    """MedDEL's selection: everything that survives eps outlier removal and the eta dedup."""
    kept = eligible & ~scores.outlier
    selected = np.zeros(len(kept), dtype=bool)
    index = np.flatnonzero(kept)
    if index.size:
        survivors = near_duplicate_mask(
            X, scores.labels[index], eta, hardness=-scores.pvi[index], keep=keep, rows=index
        )
        selected[index[survivors]] = True
    return selected


def plan_feddel(
    histograms: np.ndarray,
    budget_total: int,
    beyond_share: np.ndarray | None = None,
    unbinned: np.ndarray | None = None,
) -> tuple[np.ndarray, list[ClusterPlan]]:
    """Server side: water-fill the budget over clusters by their candidate counts, then turn each
    cluster's quota into a threshold on its merged histogram (hardest bins first).

    histograms: (k, bins) merged candidate counts; beyond_share: (k,) of them past their series'
    share (in the last bin). Those are water-filled only with what the others leave, so the
    budget goes first to clusters whose candidates come from many series. unbinned: (k,)
    candidates of the clusters that have no histogram (fewer than min-count candidates: a
    federated round never asks for their histograms). They share the budget like the others, so
    a small cluster (on real images often a whole rare mode) is not left out; each center
    applies their quota as a ranked fraction of its own candidates, hardest first. Returns
    (quotas (k,), plans).
    """
    small = np.zeros(len(histograms), np.int64) if unbinned is None else np.asarray(unbinned)
    totals = histograms.sum(axis=1) + small
    beyond = np.zeros_like(totals) if beyond_share is None else np.asarray(beyond_share)
    quotas = water_fill(totals - beyond, budget_total)
    rest = budget_total - int(quotas.sum())
    if rest > 0 and beyond.any():
        quotas = quotas + water_fill(beyond.astype(np.int64), rest)
    plans = plan_from_histograms(histograms, np.where(small > 0, 0, quotas))
    for j in np.flatnonzero((small > 0) & (quotas > 0)):
        plans[j] = ClusterPlan(int(quotas[j]), 0, 0.0, float(quotas[j]) / int(small[j]))
    return quotas, plans
