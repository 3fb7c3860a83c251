"""The Gaussian noise a center adds to what it shares, keyed so that it is fresh yet replayable.

Differencing defeats exact statistics: two Lloyd rounds whose sums differ by one member, or two
runs whose data differ by one image, reveal that member exactly (the TAR attack, arXiv
2511.07073). So every sum a center shares carries Gaussian noise:

- In a secure sum each of the m roster members adds N(0, sigma^2 / m): the coordinator sees
  only the total, whose noise is N(0, sigma^2) and which it cannot take apart (masks).
- A statistic a center sends alone (its k-FED local centroids) carries the whole sigma.

The noise is drawn from a PRG keyed by HMAC-SHA256(the center's secret, what is being shared):
the phase (`noise_context`), the noise scales (sigma and the roster size) and a hash of the
exact values. The coordinator does not know the secret, so to it every release of new values
carries fresh Gaussian noise, independent of everything else (as the DP accounting assumes).
Neither the run's name nor the secure sum's sequence number enters the key, on purpose: the
same values carry the same noise however often, and under whatever name, a coordinator asks
for them, so asking again and averaging gains nothing (a resumed round also selects what an
uninterrupted one would). Once one image differs, the values differ and the noise is new.

The Lloyd statistics, the sums a differencing attack targets, are keyed cell by cell
(`add_cell_noise`): a cell's noise depends on its own count and sum only, so a coordinator that
moves the other cells' centers, or reorders them, still gets this cell's same noise; only a
change of the cell's own members draws new noise.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math

import numpy as np

SECRET_BYTES = 32


def noise_context(phase: str) -> bytes:
    """What keys a release's noise besides the values and scales: its phase, nothing else
    (see the module docstring)."""
    return f"feddel/noise/{phase}".encode()


def noise_share(sigma: float, roster: int) -> float:
    """Each member's standard deviation so that the sum over `roster` members has `sigma`."""
    return sigma / math.sqrt(roster) if roster > 0 else sigma


def keyed_gaussian(
    secret: bytes, context: bytes, values: np.ndarray, scales: np.ndarray
) -> np.ndarray:
    """N(0, scales^2) elementwise, shaped like `values`, from a PRG keyed by the secret, the
    context and the exact bytes of `values` (float64) and `scales`."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    scales = np.broadcast_to(np.asarray(scales, dtype=np.float64), values.shape)
    digest = hashlib.sha256(values.tobytes() + np.ascontiguousarray(scales).tobytes()).digest()
    key = hmac.new(secret, context + b"/" + digest, hashlib.sha256).digest()
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(key, "big")))
    return rng.standard_normal(values.shape) * scales


def add_noise(secret: bytes, context: bytes, values: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """values + keyed_gaussian(...), as a new float64 array; all-zero scales: an exact copy."""
    values = np.asarray(values, dtype=np.float64)
    if not np.any(scales):
        return values.copy()
    return values + keyed_gaussian(secret, context, values, scales)


def add_cell_noise(
    secret: bytes,
    context: bytes,
    layout: dict[str, tuple[int, ...]],
    values: np.ndarray,
    scales: np.ndarray,
) -> np.ndarray:
    """add_noise for a packed vector whose every part leads with the cell axis (the Lloyd
    layout: count (k,), sum (k, d)): each cell's noise is keyed by that cell's row of every
    part, so it does not depend on the other cells or on the cell's position."""
    values = np.asarray(values, dtype=np.float64)
    scales = np.broadcast_to(np.asarray(scales, dtype=np.float64), values.shape)
    if not np.any(scales):
        return values.copy()
    cells = {shape[0] for shape in layout.values()}
    if len(cells) != 1:
        raise ValueError(f"layout {layout} does not lead every part with one cell axis")
    k = cells.pop()
    bounds = np.cumsum([0] + [math.prod(shape) for shape in layout.values()])

    def rows(vector: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [vector[a:b].reshape(k, -1) for a, b in itertools.pairwise(bounds)], axis=1
        )

    by_cell, cell_scales = rows(values), rows(scales)
    noise = np.stack(
        [keyed_gaussian(secret, context, by_cell[j], cell_scales[j]) for j in range(k)]
    ) if k else by_cell  # fmt: skip
    widths = [math.prod(shape[1:]) for shape in layout.values()]
    columns = np.cumsum([0, *widths])
    packed = [noise[:, a:b].ravel() for a, b in itertools.pairwise(columns)]
    return values + np.concatenate(packed)


def noisy_means(
    secret: bytes, context: bytes, means: np.ndarray, counts: np.ndarray, sigma: float
) -> np.ndarray:
    """Means whose sums carry N(0, sigma^2) per value: (count x mean + noise) / count, for a
    statistic a center sends alone (its local centroids). Rows with count 0 stay zero."""
    counts = np.asarray(counts, dtype=np.float64)
    sums = np.asarray(means, dtype=np.float64) * counts[:, None]
    noisy = add_noise(secret, context, sums, np.where(counts[:, None] > 0, sigma, 0.0))
    return np.divide(noisy, counts[:, None], out=np.zeros_like(noisy), where=counts[:, None] > 0)
