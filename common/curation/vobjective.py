"""What a selection optimizes: an estimate of the V-information it offers (docs/science.md 2).

OptiDEL selects to maximize predictive V-information I_V(X -> Y) = H_V(Y | null) - H_V(Y | X):
diverse samples raise the first term, hard samples are those the model does not yet explain.
FedDEL's y is a sample's global cluster and t_i = log2 g_x(y_i) <= 0 the current encoder's
log-likelihood of it (common/curation/local.py; cluster PVI_i = t_i - log2 pi_{y_i}). For a
selection S
with n_j samples in cluster j (q_j = n_j / |S|) and T_j = sum of t_i over those samples:

    diversity  D = H(q) = -sum_j q_j log2 q_j    H_V(Y | null) on S (null model fit to S), <= log2 k
    hardness   A = -(sum_j T_j) / |S|            H_V(Y | X) on S under the current model, >= 0
    extracted  I = D - A                         I_V(X -> Y) on S: what the model already extracts
    objective  V = D + w * A                     (bits; w = hardness_weight, 1 by default)

Why D + A: after pre-training on S, I_V on S is at most D (reached when every cluster label is
explained); A = D - I is the part of that bound the current model has not learned yet, the
headroom that training on S can fill. Both are in bits on [0, log2 k].

Why t and not the full PVI in A: with the global prior pi, D + mean(-PVI) = mean(-t) - KL(q || pi),
which penalizes spreading a selection evenly over clusters when pi is unbalanced, the opposite of
diversity. The prior part of PVI is what D accounts for; A keeps PVI's conditional part.

Every term is a function of the per-cluster (n_j, T_j): a center sends both as (k,) vectors
(securely summed like the other per-cluster statistics), or the coordinator derives them from
merged (k, bins) histograms of t (bin midpoints: A is then off by at most half a bin width).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from feddel.common.errors import ConfigError, DataError


class ClusterAggregates(NamedTuple):
    counts: np.ndarray  # (k,) float64 selected samples per cluster
    t_sums: np.ndarray  # (k,) float64 sum of t = log2 g_x(y) over them (bits, <= 0)


@dataclass(frozen=True)
class VEstimate:
    """The objective of one selection and its terms, in bits (see the module docstring)."""

    size: float  # |S|
    diversity: float  # D = H(q)
    hardness: float  # A = mean(-t)
    extracted: float  # I = D - A
    objective: float  # V = D + w * A


def aggregates_from_histograms(hist: np.ndarray, edges: np.ndarray) -> ClusterAggregates:
    """(n_j, T_j) from (k, bins) counts of t on `edges` (bins + 1,), e.g. curation.pvi_edges(k);
    every sample is placed at its bin's midpoint."""
    H = np.asarray(hist, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    if H.ndim != 2 or e.shape != (H.shape[1] + 1,) or not (np.diff(e) > 0).all():
        raise DataError(
            f"histograms of shape {H.shape} need {H.shape[-1] + 1} increasing edges; "
            f"got shape {e.shape}"
        )
    return ClusterAggregates(H.sum(axis=1), H @ ((e[:-1] + e[1:]) / 2.0))


def planned_histograms(
    hist: np.ndarray, threshold_bins: np.ndarray, fractions: np.ndarray
) -> np.ndarray:
    """The part of merged (k, bins) candidate histograms that a FedDEL plan selects: every bin
    below a cluster's threshold bin and that fraction of the threshold bin (its expectation;
    centers round the boundary bin, common/curation/selection.py (apply_plan))."""
    H = np.asarray(hist, dtype=np.float64)
    thresholds = np.asarray(threshold_bins)
    share = np.asarray(fractions, dtype=np.float64)
    if H.ndim != 2 or thresholds.shape != (H.shape[0],) or share.shape != thresholds.shape:
        raise DataError(
            f"histograms {H.shape}, threshold bins {thresholds.shape} and fractions "
            f"{share.shape} must be (k, bins), (k,) and (k,)"
        )
    bins = np.arange(H.shape[1])
    weight = (bins[None, :] < thresholds[:, None]).astype(np.float64)
    weight += (bins[None, :] == thresholds[:, None]) * share[:, None]
    return H * weight


def v_objective(aggregates: ClusterAggregates, hardness_weight: float = 1.0) -> VEstimate:
    """The objective from per-cluster aggregates (merged over centers).

    Counts must be >= 0 with a positive total; clip noisy (privacy-noised) counts at 0 first.
    """
    counts = np.asarray(aggregates.counts, dtype=np.float64)
    t_sums = np.asarray(aggregates.t_sums, dtype=np.float64)
    if counts.ndim != 1 or t_sums.shape != counts.shape:
        raise DataError(f"counts {counts.shape} and t_sums {t_sums.shape} must both be (k,)")
    if not (np.isfinite(counts).all() and np.isfinite(t_sums).all()):
        raise DataError("counts and t_sums must be finite")
    if (counts < 0).any() or counts.sum() <= 0:
        bad = np.flatnonzero(counts < 0).tolist()
        raise DataError(
            f"counts must be >= 0 with a positive total (negative in clusters {bad}, "
            f"total {counts.sum():g}); an empty selection has no objective"
        )
    _check_weight(hardness_weight)
    size = float(counts.sum())
    q = counts[counts > 0] / size
    diversity = float(-(q * np.log2(q)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0
    hardness = float(-t_sums.sum() / size)
    return VEstimate(
        size, diversity, hardness, diversity - hardness, diversity + hardness_weight * hardness
    )


def _check_weight(weight: float) -> None:
    if not math.isfinite(weight) or weight < 0:
        raise ConfigError(f"hardness_weight={weight!r} must be a finite number >= 0")
