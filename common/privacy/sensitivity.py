"""What one image can change in each secure sum of a round, and what a release of it costs.

The coordinator plans a round's noise from these sensitivities (server/curation/privacy.py);
a center with its own budget (`max-dp-epsilon`, common/privacy/policy.py) charges each release
it makes against them (client/budget.py). Both read this one table, so the two accounts agree.
"""

from __future__ import annotations

import math

from feddel.common.curation.local import ETA_GRID

Part = tuple[float, str, float]  # (sensitivity, sigma kind: "count" or "noise", sigma multiple)


def release_parts(phase: str, image_size: int, reports_survivors: bool) -> list[Part]:
    """(sensitivity, sigma kind, sigma multiple) of each part of a phase's secure sum: its L2
    change when one image is added to or removed from one center, and which request sigma
    (x multiple) it gets."""
    counts = 1.0
    if phase == "score":  # its candidate count and its count past its series' share
        survivors = len(ETA_GRID) if reports_survivors else 0
        counts = math.sqrt(2.0 + survivors)  # one image may survive at every eta
    parts = [(counts, "count", 1.0)]
    if phase == "lloyd":  # sums of unit embeddings (squared distances follow from them)
        parts += [(1.0, "noise", 1.0)]
    elif phase == "moments":  # sum of unit embeddings; of their outer products (norm 1)
        parts += [(1.0, "noise", 1.0), (1.0, "noise", 1.0)]
    elif phase == "mean_image":
        parts += [(255.0 * math.sqrt(3.0) * image_size, "noise", 1.0)]
    return parts


def release_sigmas(
    parts: list[Part], noise_sigma: float, count_sigma: float
) -> list[tuple[float, float]]:
    """(sensitivity, sigma) of each part of a release whose sum carries these two sigmas, as
    common/privacy/accountant.py counts them."""
    sigma = {"count": count_sigma, "noise": noise_sigma}
    return [(delta, sigma[kind] * times) for delta, kind, times in parts]
