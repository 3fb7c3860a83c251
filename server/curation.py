"""One federated curation round, phases 0-4 of DESIGN.md, as the coordinator runs it.

Each phase is one broadcast of a typed request and one merge of typed replies. The math is the
same as the centralized reference (common.kmeans, common.curation); what differs is that every
per-cluster statistic reaches the coordinator only as a secure sum over the centers
(common.secagg), and aggregate cells under min-count are discarded (common.privacy).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from common.config import CurationConfig
from common.curation import ETA_GRID, auto_tau, plan_feddel, smoothed_prior
from common.kmeans import ClusterStats, lloyd_rounds
from common.privacy import suppress_small_cells, suppress_small_counts
from common.protocol import (
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
from common.selection import HISTOGRAM_BINS, pick_eta
from server.aggregate import encoder_outliers, global_mean_image, seed_centers
from server.broadcast import Broadcaster


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

    @property
    def total_samples(self) -> int:
        return sum(reply.samples for reply in self.inventories.values())

    @property
    def total_selected(self) -> int:
        return sum(reply.selected for reply in self.selected.values())


class Plan(NamedTuple):
    quotas: np.ndarray
    threshold_bins: np.ndarray
    fractions: np.ndarray
    eta: float | None


def run_round(cast: Broadcaster, config: CurationConfig, round_: int = 0) -> RoundResult:
    """Phases 0-4; raises RoundFailed when fewer than min-fraction centers remain."""
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    inventories = _inventory(cast, config, round_)
    keys = cast.ask(KeysRequest(run=config.run_name), KeysReply)
    cast.public_keys.update({node: reply.public_key for node, reply in keys.items()})
    seeds = cast.ask(
        SeedRequest(
            run=config.run_name, method=config.method, k_local=config.k_local,
            min_count=config.min_count, seed=config.seed,
        ),
        SeedReply,
    )  # fmt: skip
    init = seed_centers(seeds, config.k, rng)
    lloyd = lloyd_rounds(
        lambda centers: _lloyd_stats(cast, config, centers),
        init, config.kmeans_max_rounds, config.kmeans_tol, rng,
    )  # fmt: skip
    centers, stats = lloyd.result.centers, lloyd.stats
    tau = config.tau or auto_tau(stats.inertia, int(stats.count.sum()))
    histograms, survivors = _score(cast, config, centers, smoothed_prior(stats.count), tau)
    total = sum(inventories[n].samples for n in cast.alive if n in inventories)
    plan = _plan(config, histograms, survivors, math.ceil(config.budget * total))
    per_cluster, selected = _select(cast, config, round_, plan, len(centers))
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
        mean_image=global_mean_image(inventories),
        eta=plan.eta,
        tau=tau,
        broadcaster=cast,
        wall_s=time.perf_counter() - started,
    )


def _inventory(cast: Broadcaster, config: CurationConfig, round_: int) -> dict[int, InventoryReply]:
    request = InventoryRequest(
        run=config.run_name, round=round_, model=config.model, image_size=config.image_size,
        weights=config.weights, seed=config.seed, min_count=config.min_count,
    )  # fmt: skip
    inventories = cast.ask(request, InventoryReply)
    cast.names.update({node: reply.center for node, reply in inventories.items()})
    for node, reason in encoder_outliers(inventories).items():
        inventories.pop(node)
        cast.drop(node, "inventory", reason)
    return inventories


def _lloyd_stats(cast: Broadcaster, config: CurationConfig, centers: np.ndarray) -> ClusterStats:
    """One Lloyd round's merged statistics; aggregate cells under min-count are discarded."""
    k, d = centers.shape
    layout = lloyd_layout(k, d)

    def request(roster: list[bytes], attempt: int) -> LloydRequest:
        return LloydRequest(
            run=config.run_name, attempt=attempt, roster=roster_array(roster),
            method=config.method, noise_sigma=config.noise_sigma, centers=centers,
        )  # fmt: skip

    total, _ = cast.secure_sum(request, LloydReply, sum(map(_size, layout.values())))
    parts = unpack(layout, total)
    stats = ClusterStats(np.rint(parts["count"]).astype(np.int64), parts["sum"], parts["sqdist"])
    return suppress_small_cells(stats, config.min_count)


def _score(
    cast: Broadcaster, config: CurationConfig, centers: np.ndarray, prior: np.ndarray, tau: float
) -> tuple[np.ndarray, np.ndarray]:
    """Merged candidate histograms (k, bins) and MedDEL survivor counts per eta."""
    k = len(centers)
    layout = score_layout(k, HISTOGRAM_BINS, len(ETA_GRID))

    def request(roster: list[bytes], attempt: int) -> ScoreRequest:
        return ScoreRequest(
            run=config.run_name, attempt=attempt, roster=roster_array(roster),
            method=config.method, tau=tau, eps=config.eps, eta=config.eta, keep=config.keep,
            bins=HISTOGRAM_BINS, centers=centers, prior=prior,
        )  # fmt: skip

    total, _ = cast.secure_sum(request, ScoreReply, sum(map(_size, layout.values())))
    parts = unpack(layout, total)
    histograms = np.rint(parts["histograms"]).astype(np.int64)
    return suppress_small_counts(histograms, config.min_count), np.rint(parts["eta_survivors"])


def _plan(
    config: CurationConfig, histograms: np.ndarray, survivors: np.ndarray, budget: int
) -> Plan:
    k = len(histograms)
    if config.method == "feddel":
        quotas, plans = plan_feddel(histograms, budget)
        return Plan(
            quotas,
            np.array([p.threshold_bin for p in plans], dtype=np.int64),
            np.array([p.boundary_fraction for p in plans]),
            None,
        )
    eta = pick_eta(ETA_GRID, survivors, budget) if config.method == "meddel" else None
    return Plan(np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64), np.zeros(k), eta)


def _select(
    cast: Broadcaster, config: CurationConfig, round_: int, plan: Plan, k: int
) -> tuple[np.ndarray, dict[int, SelectReply]]:
    def request(roster: list[bytes], attempt: int) -> SelectRequest:
        return SelectRequest(
            run=config.run_name, attempt=attempt, roster=roster_array(roster), round=round_,
            method=config.method, seed=config.seed,
            retention=config.budget if config.method == "random" else 1.0,
            eta=plan.eta if plan.eta is not None else config.eta, keep=config.keep,
            bins=HISTOGRAM_BINS, threshold_bins=plan.threshold_bins,
            boundary_fractions=plan.fractions, quotas=plan.quotas,
        )  # fmt: skip

    total, replies = cast.secure_sum(request, SelectReply, k)
    per_cluster = np.rint(unpack(select_layout(k), total)["per_cluster"]).astype(np.int64)
    return per_cluster, replies


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape))
