"""Pure aggregation of center replies: encoder agreement, k-FED seeding, the unmasked sums.

No Flower and no I/O here, so each step is tested on hand-made replies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from sklearn.cluster import KMeans

from feddel.common.curation.kmeans import (
    ClusterStats,
    unit_row_stats,
    weighted_kmeans_plusplus,
)
from feddel.common.curation.methods import Merged
from feddel.common.curation.selection import HISTOGRAM_BINS
from feddel.common.wire.protocol import InventoryReply, SeedReply
from feddel.server.broadcast import RoundFailed


def encoder_outliers(
    inventories: Mapping[int, InventoryReply], name: Callable[[int], str] = str
) -> dict[int, str]:
    """Centers whose encoder (fingerprint, dim) differs from the majority, with the reason.

    Mixing embeddings of different encoders would make every distance meaningless, so the
    minority is refused by name. Without a strict majority nobody can tell which encoder is
    the intended one, and the round stops (RoundFailed) naming every group.
    """
    groups: dict[tuple[str, int], list[int]] = {}
    for node in sorted(inventories, key=lambda n: (name(n), n)):
        reply = inventories[node]
        groups.setdefault((reply.fingerprint, reply.dim), []).append(node)
    if len(groups) <= 1:
        return {}
    ranked = sorted(groups.items(), key=lambda item: -len(item[1]))
    if len(ranked[0][1]) == len(ranked[1][1]):
        listing = "; ".join(
            f"{fp} (dim {dim}): {_names(nodes, name)}" for (fp, dim), nodes in ranked
        )
        raise RoundFailed(
            f"centers disagree on the encoder and no encoder has a majority ({listing}); "
            "every center must embed with the same model, weights and image size"
        )
    (fingerprint, dim), majority = ranked[0]
    return {
        node: (
            f"encoder {key[0]} (dim {key[1]}) differs from the majority's {fingerprint} "
            f"(dim {dim}) of {_names(majority, name)}; every center must embed with the same "
            "model, weights and image size"
        )
        for key, nodes in ranked[1:]
        for node in nodes
    }


def _names(nodes: list[int], name: Callable[[int], str], shown: int = 5) -> str:
    listed = ", ".join(name(node) for node in nodes[:shown])
    return listed + (f" and {len(nodes) - shown} more" if len(nodes) > shown else "")


def unique_names(names: Mapping[int, str]) -> dict[int, str]:
    """Center names by node, made unique: two SuperNodes with the same data-path folder name
    would otherwise merge into one line of the summary. Later nodes get "#2", "#3", ..."""
    seen: dict[str, int] = {}
    unique = {}
    for node in sorted(names):
        base = names[node]
        seen[base] = seen.get(base, 0) + 1
        unique[node] = base if seen[base] == 1 else f"{base}#{seen[base]}"
    return unique


def mean_image(parts: Mapping[str, np.ndarray], min_count: int) -> np.ndarray | None:
    """The federated mean image from the unmasked secure sum of (count, image sum)
    (`mean_image_layout`): the context-free predictor of MAE PVI (docs/science.md 2). None
    when fewer than min_count images were shared (no center holds that many, or none shares)."""
    count = float(parts["count"][0])
    if count < min_count:
        return None
    return np.clip(parts["image_sum"] / count, 0.0, 255.0)


def seed_centers(replies: Mapping[int, SeedReply], k: int, rng: np.random.Generator) -> np.ndarray:
    """k-FED: count-weighted k-means over the union of the centers' local centroids (rows with
    count 0 are padding). The union is small (<= centers x k-local points), so ten
    k-means++ restarts cost nothing and avoid the poor local optima a single seeding gives."""
    points = np.concatenate([reply.centroids[reply.counts > 0] for reply in replies.values()])
    weights = np.concatenate([reply.counts[reply.counts > 0] for reply in replies.values()])
    if len(points) == 0:
        raise RoundFailed(
            "no center has a local cluster with at least min-count members; "
            "lower k-local or min-count, or add data"
        )
    k = min(k, len(points))
    if k == len(points):
        return weighted_kmeans_plusplus(points, weights.astype(np.float64), k, rng)
    model = KMeans(n_clusters=k, n_init=10, random_state=int(rng.integers(2**31)))
    return model.fit(points, sample_weight=weights.astype(np.float64)).cluster_centers_


def lloyd_stats(parts: Mapping[str, np.ndarray], centers: np.ndarray) -> ClusterStats:
    """One Lloyd round's statistics from the unmasked secure sum of the centers' packed
    (count, sum) vectors (`lloyd_layout`) for the open `centers`; counts rounded (with DP they
    carry noise) and at least 0, squared distances from counts and sums (`unit_row_stats`)."""
    count = np.maximum(np.rint(parts["count"]), 0).astype(np.int64)
    return unit_row_stats(count, parts["sum"], centers)


DRAWS_PER_CENTER = 50  # Gaussian draws per wanted center in moments_centers


def moments_centers(
    parts: Mapping[str, np.ndarray], k: int, rng: np.random.Generator
) -> np.ndarray:
    """With DP, k-means starts from the federation's first two moments alone (the unmasked,
    noisy sum of count, sum and sum of outer products, `moments_layout`): k-means on draws
    from the Gaussian they describe, so the start depends on no image more than they do."""
    d = len(parts["sum"])
    count = float(parts["count"][0])
    if count < 2:
        raise RoundFailed("the federation's moments count fewer than 2 samples; add data")
    mean = parts["sum"] / count
    second = parts["outer"] / count
    cov = (second + second.T) / 2 - np.outer(mean, mean)
    values, vectors = np.linalg.eigh(cov)
    root = vectors * np.sqrt(np.clip(values, 0.0, None))
    draws = mean + rng.standard_normal((DRAWS_PER_CENTER * k, d)) @ root.T
    init = weighted_kmeans_plusplus(draws, np.ones(len(draws)), k, rng)
    model = KMeans(n_clusters=k, init=init, n_init=1, random_state=int(rng.integers(2**31)))
    return model.fit(draws).cluster_centers_


def merged_scores(
    parts: Mapping[str, np.ndarray],
    histogram_rows: Mapping[str, np.ndarray] | None,
    open_rows: np.ndarray,
    eta: float,
) -> Merged:
    """The score phase's unmasked sums (`score_layout`) and, for the clusters with min-count
    candidates (`open_rows`), their histograms (`histogram_layout`), as whole non-negative
    counts. With DP every value carries noise, the zeros that centers send for closed rows
    too: those rows are zeroed, and no cluster's count past its series' share may exceed
    its histogram's candidates."""
    k = len(open_rows)
    survivors = np.maximum(np.rint(parts["eta_survivors"]), 0)
    histograms = np.zeros((k, HISTOGRAM_BINS), dtype=np.int64)
    if histogram_rows is not None:
        noisy = np.maximum(np.rint(histogram_rows["histograms"]), 0).astype(np.int64)
        histograms = np.where(open_rows[:, None], noisy, 0)
    beyond = np.where(open_rows, np.maximum(np.rint(parts["beyond_share"]), 0), 0)
    beyond = np.minimum(beyond, histograms.sum(axis=1))
    unbinned = np.where(open_rows, 0, np.maximum(np.rint(parts["candidates"]), 0))
    return Merged(histograms, survivors, eta, beyond.astype(np.int64), unbinned.astype(np.int64))
