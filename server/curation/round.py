"""One federated curation round, phases 0-4 of docs/design.md, as the coordinator runs it.

Each phase is one broadcast of a typed request and one merge of typed replies. The math is the
same as the centralized reference (common/curation/kmeans.py, common/curation/local.py); what
differs is that every
per-cluster statistic reaches the coordinator only as a secure sum over the centers
(common/privacy/secagg.py), and aggregate cells under min-count are discarded
(common/privacy/cells.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from feddel.common.config import CurationConfig
from feddel.common.curation.kmeans import ClusterStats, lloyd_rounds
from feddel.common.curation.local import ETA_GRID, auto_tau, pvi_edges, smoothed_prior
from feddel.common.curation.methods import Merged, Plan
from feddel.common.curation.selection import HISTOGRAM_BINS
from feddel.common.curation.vobjective import (
    VEstimate,
    aggregates_from_histograms,
    planned_histograms,
    v_objective,
)
from feddel.common.errors import ProtocolError
from feddel.common.privacy.cells import suppress_small_counts
from feddel.common.wire.protocol import (
    InventoryReply,
    InventoryRequest,
    KeysReply,
    KeysRequest,
    LloydReply,
    LloydRequest,
    ScoreReply,
    ScoreRequest,
    SeedReply,
    SeedRequest,
    SelectReply,
    SelectRequest,
    lloyd_layout,
    roster_array,
    score_layout,
    select_layout,
    unpack,
)
from feddel.server.broadcast import Broadcaster, RoundFailed
from feddel.server.curation.aggregate import (
    encoder_outliers,
    global_mean_image,
    lloyd_merge,
    seed_centers,
    unique_names,
)

if TYPE_CHECKING:  # optidel's synthesis needs torch; curation alone does not load it
    from feddel.common.models.mae import MAE
    from feddel.common.wire.trainproto import SynthesizeReply


@dataclass
class RoundResult:
    """Everything the coordinator learned in one round: aggregates only."""

    config: CurationConfig
    inventories: dict[str, InventoryReply]
    selected: dict[str, SelectReply]
    centers: np.ndarray
    stats: ClusterStats
    inertia_history: list[float]
    candidates: np.ndarray  # (k,) candidates per cluster (secure sum, small cells dropped)
    quotas: np.ndarray  # (k,)
    selected_per_cluster: np.ndarray  # (k,) secure sum
    mean_image: np.ndarray | None  # (s, s, 3) federated mean image, the MAE-PVI null predictor
    eta: float | None
    tau: float
    broadcaster: Broadcaster
    wall_s: float = 0.0
    # what the selection optimizes (feddel, optidel): V-information of candidates and selection
    v_information: dict[str, VEstimate] = field(default_factory=dict)
    synthesized: dict[str, SynthesizeReply] = field(default_factory=dict)  # optidel: counts

    @property
    def total_samples(self) -> int:
        return sum(reply.samples for reply in self.inventories.values())

    @property
    def total_selected(self) -> int:
        return sum(reply.selected for reply in self.selected.values())


def run_round(cast: Broadcaster, config: CurationConfig, round_: int = 0) -> RoundResult:
    """Phases 0-4; raises RoundFailed when fewer than min-fraction centers remain."""
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    method = config.selection_method
    mae = _synthesis_mae(config) if method.synthesizes else None  # fail before any work
    inventories = _inventory(cast, config, round_)
    _keys(cast, config)
    dim = next(iter(inventories.values())).dim
    seeds = cast.ask(
        SeedRequest(
            run=config.run_name, method=method.selection.name, k_local=config.k_local,
            min_count=config.min_count, seed=config.seed,
        ),
        SeedReply,
        check=lambda _node, reply: _expect_shape(reply.centroids, (config.k_local, dim)),
    )  # fmt: skip
    init = seed_centers(seeds, config.k, rng)
    eligible = {
        node: method.eligible_count(reply.samples, reply.disruptive)
        for node, reply in inventories.items()
    }
    lloyd = lloyd_rounds(
        lambda centers: _lloyd_stats(cast, config, centers, eligible),
        init, config.kmeans_max_rounds, config.kmeans_tol, rng,
    )  # fmt: skip
    centers, stats = lloyd.result.centers, lloyd.stats
    tau = config.tau or auto_tau(stats.inertia, int(stats.count.sum()))
    prior = smoothed_prior(stats.count)
    total = sum(inventories[n].samples for n in cast.alive if n in inventories)
    budget = math.ceil(config.budget * total)
    eta = config.eta
    histograms, survivors = _score(cast, config, centers, prior, tau, eligible, eta)
    for higher in (e for e in method.eta_ladder if e > config.eta):
        if histograms.sum() >= budget:
            break
        eta = higher  # too few candidates: the encoder packs samples closer, dedup less
        histograms, survivors = _score(cast, config, centers, prior, tau, eligible, eta)
    plan = method.plan(Merged(histograms, survivors, eta), budget, config.budget)
    per_cluster, selected = _select(cast, config, round_, plan, inventories)
    mean_image = global_mean_image(inventories)
    synthesized = {}
    if mae is not None:
        selecting = [node for node, reply in selected.items() if reply.selected > 0]
        from feddel.server.curation.synthesis import run_synthesis

        replies = run_synthesis(cast, config, mae, mean_image, selecting)
        synthesized = {cast.name(node): reply for node, reply in replies.items()}
    return RoundResult(
        config=config,
        inventories={cast.name(n): r for n, r in inventories.items() if n in selected},
        selected={cast.name(n): r for n, r in selected.items()},
        centers=centers,
        stats=stats,
        inertia_history=lloyd.result.inertia_history,
        candidates=histograms.sum(axis=1),
        quotas=plan.quotas,
        selected_per_cluster=per_cluster,
        mean_image=mean_image,
        eta=plan.eta,
        tau=tau,
        broadcaster=cast,
        wall_s=time.perf_counter() - started,
        v_information=_v_information(config, histograms, plan),
        synthesized=synthesized,
    )


def _synthesis_mae(config: CurationConfig) -> MAE:
    from feddel.server.curation.synthesis import (
        synthesis_mae,  # imports torch: only optidel rounds pay for it
    )

    return synthesis_mae(config)


def _v_information(config: CurationConfig, histograms: np.ndarray, plan: Plan) -> dict:
    """V-information (common/curation/vobjective.py) of the candidates and of the planned selection,
    from
    the merged histograms of t alone; only feddel's selection is a plan over those histograms."""
    if not config.selection_method.plans_by_histograms or histograms.sum() == 0:
        return {}
    edges = pvi_edges(len(histograms))
    chosen = planned_histograms(histograms, plan.threshold_bins, plan.fractions)
    estimates = {"candidates": histograms}
    if chosen.sum() > 0:
        estimates["selection"] = chosen
    return {
        name: v_objective(aggregates_from_histograms(hist, edges))
        for name, hist in estimates.items()
    }


def _inventory(cast: Broadcaster, config: CurationConfig, round_: int) -> dict[int, InventoryReply]:
    request = InventoryRequest(
        run=config.run_name, round=round_, model=config.model, image_size=config.image_size,
        weights=config.weights, seed=config.seed, min_count=config.min_count,
    )  # fmt: skip
    size = (config.image_size, config.image_size, 3)

    def check(node: int, reply: InventoryReply) -> None:
        cast.names[node] = reply.center  # so that a refused reply is refused by name
        _expect_shape(reply.image_sum, size)

    inventories = cast.ask(request, InventoryReply, check=check)
    cast.names.update(unique_names({node: reply.center for node, reply in inventories.items()}))
    for node, reason in encoder_outliers(inventories, cast.name).items():
        inventories.pop(node)
        cast.drop(node, "inventory", reason)
    return inventories


def _keys(cast: Broadcaster, config: CurationConfig) -> None:
    """Every center's public key. Two centers sending the same key are both refused: their
    pairwise masks would not cancel, and nobody can tell which of them owns the key."""
    keys = cast.ask(KeysRequest(run=config.run_name), KeysReply)
    holders: dict[bytes, list[int]] = {}
    for node, reply in keys.items():
        holders.setdefault(reply.public_key, []).append(node)
    for key, nodes in holders.items():
        for node in nodes:
            if len(nodes) == 1:
                cast.public_keys[node] = key
                continue
            others = ", ".join(cast.name(other) for other in nodes if other != node)
            cast.drop(node, "keys", f"public key also sent by {others}; a key must be unique")


def _expect_shape(array: np.ndarray, shape: tuple[int, ...]) -> None:
    if array.shape != shape:
        raise ProtocolError(f"array of shape {array.shape}, the round expects {shape}")


def _check_sum(phase: str, counts: np.ndarray, expected: int, exact: bool) -> None:
    """A securely summed count vector must be made of counts the centers can hold. A corrupt
    masked vector from any center turns the whole sum into noise; no one center can be named,
    so the round stops instead of curating on garbage."""
    total = float(counts.sum())
    integral = bool(np.all(counts >= 0) and np.allclose(counts, np.rint(counts), atol=1e-3))
    if not integral or (total != expected if exact else total > expected):
        rule = "equal" if exact else "be at most"
        raise RoundFailed(
            f"phase '{phase}': the secure sum is corrupt (counts total {total:g}, must {rule} "
            f"{expected}, non-negative integers); a center sent a malformed masked vector"
        )


def _lloyd_stats(
    cast: Broadcaster, config: CurationConfig, centers: np.ndarray, eligible: dict[int, int]
) -> ClusterStats:
    """One Lloyd round's merged statistics; aggregate cells under min-count are discarded."""
    k, d = centers.shape
    layout = lloyd_layout(k, d)

    def request(roster: list[bytes], attempt: int) -> LloydRequest:
        return LloydRequest(
            run=config.run_name, attempt=attempt, roster=roster_array(roster),
            method=config.selection_method.selection.name, noise_sigma=config.noise_sigma,
            centers=centers,
        )  # fmt: skip

    total, replies = cast.secure_sum(request, LloydReply, sum(map(_size, layout.values())))
    counts = unpack(layout, total)["count"]
    _check_sum("lloyd", counts, sum(eligible[n] for n in replies), exact=True)
    return lloyd_merge(total, k, d, config.min_count)


def _score(
    cast: Broadcaster,
    config: CurationConfig,
    centers: np.ndarray,
    prior: np.ndarray,
    tau: float,
    eligible: dict[int, int],
    eta: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Merged candidate histograms (k, bins) and MedDEL survivor counts per eta."""
    k = len(centers)
    layout = score_layout(k, HISTOGRAM_BINS, len(ETA_GRID))

    def request(roster: list[bytes], attempt: int) -> ScoreRequest:
        return ScoreRequest(
            run=config.run_name, attempt=attempt, roster=roster_array(roster),
            method=config.selection_method.selection.name, tau=tau, eps=config.eps, eta=eta,
            keep=config.keep,
            bins=HISTOGRAM_BINS, centers=centers, prior=prior,
        )  # fmt: skip

    total, replies = cast.secure_sum(request, ScoreReply, sum(map(_size, layout.values())))
    parts = unpack(layout, total)
    _check_sum("score", parts["histograms"], sum(eligible[n] for n in replies), exact=False)
    histograms = np.rint(parts["histograms"]).astype(np.int64)
    return suppress_small_counts(histograms, config.min_count), np.rint(parts["eta_survivors"])


def _select(
    cast: Broadcaster,
    config: CurationConfig,
    round_: int,
    plan: Plan,
    inventories: dict[int, InventoryReply],
) -> tuple[np.ndarray, dict[int, SelectReply]]:
    k = len(plan.quotas)

    def check(node: int, reply: SelectReply) -> None:
        if reply.selected > inventories[node].samples:
            raise ProtocolError(
                f"selected={reply.selected} exceeds the center's {inventories[node].samples} "
                "samples"
            )

    def request(roster: list[bytes], attempt: int) -> SelectRequest:
        return SelectRequest(
            run=config.run_name, attempt=attempt, roster=roster_array(roster), round=round_,
            method=config.selection_method.selection.name, seed=config.seed,
            retention=plan.retention,
            eta=plan.eta if plan.eta is not None else config.eta, keep=config.keep,
            bins=HISTOGRAM_BINS, threshold_bins=plan.threshold_bins,
            boundary_fractions=plan.fractions, quotas=plan.quotas,
        )  # fmt: skip

    total, replies = cast.secure_sum(request, SelectReply, k, check=check)
    per_cluster = unpack(select_layout(k), total)["per_cluster"]
    _check_sum("select", per_cluster, sum(r.selected for r in replies.values()), exact=True)
    return np.rint(per_cluster).astype(np.int64), replies


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape))
