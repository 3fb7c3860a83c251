"""Pure aggregation of center replies: encoder agreement, k-FED seeding, merged sums.

No Flower and no I/O here, so each step is tested on hand-made replies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from sklearn.cluster import KMeans

from feddel.common.curation.kmeans import ClusterStats, weighted_kmeans_plusplus
from feddel.common.privacy.cells import suppress_small_cells
from feddel.common.wire.protocol import InventoryReply, SeedReply, lloyd_layout, unpack
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


def global_mean_image(inventories: Mapping[int, InventoryReply]) -> np.ndarray | None:
    """Sum of images / count over the centers that reported them: the context-free predictor
    of MAE PVI (docs/science.md 2). None when no center reported (all below min-count)."""
    count = sum(reply.image_count for reply in inventories.values())
    if count == 0:
        return None
    total = np.sum([r.image_sum for r in inventories.values() if r.image_count], axis=0)
    return total / count


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


def lloyd_merge(total: np.ndarray, k: int, d: int, min_count: int) -> ClusterStats:
    """One Lloyd round's statistics from the unmasked secure sum of the centers' packed
    (count, sum, sqdist) vectors; aggregate cells under min-count are discarded."""
    parts = unpack(lloyd_layout(k, d), total)
    count = np.rint(parts["count"]).astype(np.int64)
    return suppress_small_cells(ClusterStats(count, parts["sum"], parts["sqdist"]), min_count)
