"""Pure aggregation of center replies: encoder agreement, k-FED seeding, merged sums.

No Flower and no I/O here, so each step is tested on hand-made replies.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np
from sklearn.cluster import KMeans

from common.kmeans import weighted_kmeans_plusplus
from common.protocol import InventoryReply, SeedReply
from server.broadcast import RoundFailed


def encoder_outliers(inventories: Mapping[int, InventoryReply]) -> dict[int, str]:
    """Centers whose encoder (fingerprint, dim) differs from the majority, with the reason.

    Mixing embeddings of different encoders would make every distance meaningless, so the
    minority is refused by name; ties go to the encoder of the lowest node id.
    """
    if not inventories:
        return {}
    keys = {node: (reply.fingerprint, reply.dim) for node, reply in inventories.items()}
    votes = Counter(keys[node] for node in sorted(keys))
    majority = max(votes, key=lambda key: (votes[key], -min(n for n in keys if keys[n] == key)))
    return {
        node: (
            f"encoder {key[0]} (dim {key[1]}) differs from the majority's {majority[0]} "
            f"(dim {majority[1]}); every center must embed with the same model, weights and size"
        )
        for node, key in keys.items()
        if key != majority
    }


def global_mean_image(inventories: Mapping[int, InventoryReply]) -> np.ndarray | None:
    """Sum of images / count over the centers that reported them: the context-free predictor
    of MAE PVI (SCIENCE.md 2). None when no center reported (all below min-count)."""
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
