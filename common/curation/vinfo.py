"""Pointwise V-information (PVI) of each sample, in bits (docs/science.md section 2).

PVI(x -> y) = log2 g_x(y) - log2 g_null(y). Low or negative PVI = hard for the model; the mean
PVI over a dataset estimates the predictive V-information I_V(X -> Y). Two forms:
- cluster PVI: y = the sample's global cluster, g_x = softmax(-||e - c_j||^2 / tau) over the
  global centroids, g_null = the global cluster prior (global counts / N);
- MAE PVI: under a Gaussian likelihood, (MSE_null - MSE_x) / (2 sigma^2 ln 2).
"""

from __future__ import annotations

import math

import numpy as np

from feddel.common.curation.kmeans import check_centers, check_embeddings, check_labels
from feddel.common.errors import ConfigError, DataError

_PRIOR_TOLERANCE = 1e-6


def cluster_pvi(
    X: np.ndarray,
    labels: np.ndarray,
    centers: np.ndarray,
    prior: np.ndarray,
    tau: float,
    chunk_size: int = 16384,
) -> np.ndarray:
    """Cluster PVI of each row of X (n, d) for its label; returns (n,) float64 bits.

    The softmax logits are (2 e.c_j - ||c_j||^2) / tau: the ||e||^2 term cancels, so there is
    no cancellation error, and log-sum-exp keeps it stable for any tau. Work is float64 in
    chunks of `chunk_size` rows (extra memory ~ chunk_size * (d + k) * 8 bytes).
    """
    X = check_embeddings(X)
    n, d = X.shape
    C = check_centers(centers, d)
    k = C.shape[0]
    y = check_labels(labels, n, k)
    log_prior = _log2_prior(prior, k, y)
    if not math.isfinite(tau) or tau <= 0:
        raise ConfigError(f"tau={tau!r} must be a finite number > 0")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size={chunk_size!r} must be an integer >= 1")
    cc = np.einsum("ij,ij->i", C, C)
    out = np.empty(n, dtype=np.float64)
    for lo in range(0, n, chunk_size):
        hi = min(lo + chunk_size, n)
        logits = np.asarray(X[lo:hi], dtype=np.float64) @ C.T
        logits *= 2.0
        logits -= cc
        logits /= tau
        top = logits.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        chosen = logits[np.arange(hi - lo), y[lo:hi]]
        out[lo:hi] = (chosen - log_norm) / math.log(2.0) - log_prior[y[lo:hi]]
    return out


def _log2_prior(prior: np.ndarray, k: int, labels: np.ndarray) -> np.ndarray:
    """log2 of a validated prior (k,): finite, >= 0, sums to 1, > 0 for every used label."""
    p = np.asarray(prior, dtype=np.float64)
    if p.shape != (k,) or not np.isfinite(p).all() or (p < 0).any():
        raise DataError(f"prior has shape {p.shape}; expected {k} finite values >= 0")
    if abs(p.sum() - 1.0) > _PRIOR_TOLERANCE:
        raise DataError(f"prior sums to {p.sum():.8f}; it must sum to 1 (global counts / N)")
    used = np.unique(labels)
    if (p[used] <= 0).any():
        bad = used[p[used] <= 0].tolist()
        raise DataError(f"prior is 0 for cluster(s) {bad} that have samples; use global counts")
    with np.errstate(divide="ignore"):
        return np.log2(p)


def mae_pvi(mse_x: np.ndarray, mse_null: np.ndarray, sigma2: float) -> np.ndarray:
    """MAE PVI per sample: (MSE_null - MSE_x) / (2 sigma^2 ln 2), bits, shape of the inputs.

    mse_x: the MAE's reconstruction error of the masked patches given the visible ones;
    mse_null: the error of the context-free prediction (the global mean image); sigma2: the
    variance of the Gaussian likelihood.
    """
    a = np.asarray(mse_x, dtype=np.float64)
    b = np.asarray(mse_null, dtype=np.float64)
    if a.shape != b.shape:
        raise DataError(f"mse_x has shape {a.shape} but mse_null has {b.shape}; they must match")
    for name, values in (("mse_x", a), ("mse_null", b)):
        if not np.isfinite(values).all() or (values < 0).any():
            raise DataError(f"{name} must hold finite values >= 0 (mean squared errors)")
    if not math.isfinite(sigma2) or sigma2 <= 0:
        raise ConfigError(f"sigma2={sigma2!r} must be a finite number > 0")
    return (b - a) / (2.0 * sigma2 * math.log(2.0))


def v_information(pvi: np.ndarray) -> float:
    """Dataset-level V-information estimate: the mean PVI (bits)."""
    values = np.asarray(pvi, dtype=np.float64)
    if values.size == 0 or not np.isfinite(values).all():
        raise DataError(f"pvi must be a non-empty array of finite values; got {values.size}")
    return float(values.mean())
