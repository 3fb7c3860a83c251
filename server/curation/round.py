"""One federated curation round, phases 0-4 of docs/design.md, as the coordinator runs it.

Each phase is one broadcast of a typed request and one merge of typed replies. The math is the
same as the centralized reference (common/curation/lloyd.py, common/curation/local.py); what
differs is that every per-cluster statistic reaches the coordinator only as a noisy secure sum
over at least min-roster centers (common/privacy/secagg.py, server/curation/privacy.py), and
that cells are sized first: a cell's sums are asked for only when the secure sum of its count
reaches min-count (the Lloyd rounds, the score histograms).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from feddel.common.config import CurationConfig
from feddel.common.curation.kmeans import ClusterStats
from feddel.common.curation.lloyd import lloyd_rounds
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
from feddel.common.wire.protocol import (
    CountsReply,
    CountsRequest,
    HistogramReply,
    HistogramRequest,
    InventoryReply,
    InventoryRequest,
    KeysReply,
    KeysRequest,
    LloydReply,
    LloydRequest,
    Masked,
    MaskedReply,
    MeanImageReply,
    MeanImageRequest,
    MomentsReply,
    MomentsRequest,
    ScoreReply,
    ScoreRequest,
    SeedReply,
    SeedRequest,
    SelectReply,
    SelectRequest,
    centers_digest,
    counts_layout,
    histogram_layout,
    lloyd_layout,
    mean_image_layout,
    moments_layout,
    roster_array,
    score_layout,
    select_layout,
    unpack,
)
from feddel.server.broadcast import Broadcaster, Check, RoundFailed
from feddel.server.curation.aggregate import (
    encoder_outliers,
    lloyd_stats,
    mean_image,
    merged_scores,
    moments_centers,
    seed_centers,
    unique_names,
)
from feddel.server.curation.privacy import RoundPrivacy

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
    candidates: np.ndarray  # (k,) candidates per cluster (secure sum; under min-count: 0)
    quotas: np.ndarray  # (k,)
    selected_per_cluster: np.ndarray  # (k,) secure sum
    mean_image: np.ndarray | None  # (s, s, 3) federated mean image (optidel), else None
    eta: float | None
    tau: float
    broadcaster: Broadcaster
    privacy: RoundPrivacy
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
    privacy = RoundPrivacy.plan(config)
    sums = SecureSums(cast, config, privacy, sum(reply.samples for reply in inventories.values()))
    dim = next(iter(inventories.values())).dim
    eligible = {
        node: method.eligible_count(reply.samples, reply.disruptive)
        for node, reply in inventories.items()
    }
    init = _moments_start(sums, dim, rng) if privacy.dp else _seed(cast, config, dim, rng)
    lloyd = lloyd_rounds(
        SecureLloyd(sums, eligible), init, config.kmeans_max_rounds, config.kmeans_tol, rng,
        min_count=config.min_count, k=config.k,
    )  # fmt: skip
    centers, stats = lloyd.result.centers, lloyd.stats
    tau = config.tau or auto_tau(stats.inertia, int(stats.count.sum()))
    prior = smoothed_prior(stats.count)
    total = sum(inventories[n].samples for n in cast.alive if n in inventories)
    budget = math.ceil(config.budget * total)
    eta = config.eta
    merged = _score(sums, centers, prior, tau, eligible, eta)
    for higher in (e for e in method.eta_ladder if e > config.eta):
        if merged.candidates.sum() >= budget:
            break
        eta = higher  # too few candidates: the encoder packs samples closer, dedup less
        merged = _score(sums, centers, prior, tau, eligible, eta)
    plan = method.plan(merged, budget, config.budget)
    per_cluster, selected = _select(sums, round_, plan, inventories)
    image = _mean_image(sums) if mae is not None else None
    synthesized = {}
    if mae is not None:
        selecting = [node for node, reply in selected.items() if reply.selected > 0]
        from feddel.server.curation.synthesis import run_synthesis

        replies = run_synthesis(cast, config, mae, image, selecting)
        synthesized = {cast.name(node): reply for node, reply in replies.items()}
    return RoundResult(
        config=config,
        inventories={cast.name(n): r for n, r in inventories.items() if n in selected},
        selected={cast.name(n): r for n, r in selected.items()},
        centers=centers,
        stats=stats,
        inertia_history=lloyd.result.inertia_history,
        candidates=merged.candidates,
        quotas=plan.quotas,
        selected_per_cluster=per_cluster,
        mean_image=image,
        eta=plan.eta,
        tau=tau,
        broadcaster=cast,
        privacy=privacy,
        wall_s=time.perf_counter() - started,
        v_information=_v_information(config, merged.histograms, plan),
        synthesized=synthesized,
    )


class SecureSums:
    """One phase's noisy secure sum: the request of the round's settings and this phase's
    noise, the sum over the live roster, its unpacked parts, and its privacy accounting.
    `samples`, the federation's at inventory, bounds every sum (a dropped center only lowers
    the true sum), so the ring fits whichever centers remain."""

    def __init__(
        self, cast: Broadcaster, config: CurationConfig, privacy: RoundPrivacy, samples: int
    ):
        self.cast, self.config, self.privacy, self.samples = cast, config, privacy, samples

    def ask(
        self,
        request_type: type[Masked],
        reply_type: type[MaskedReply],
        layout: dict[str, tuple[int, ...]],
        check: Check | None = None,
        **fields: Any,
    ) -> tuple[dict[str, np.ndarray], dict[int, MaskedReply]]:
        phase = reply_type.ACTION
        sigmas = self.privacy.for_phase(phase)

        def request(roster: list[bytes], attempt: int) -> Masked:
            return request_type(
                run=self.config.run_name, attempt=attempt, roster=roster_array(roster),
                noise_sigma=sigmas.noise, count_sigma=sigmas.count, samples=self.samples,
                **fields,
            )  # fmt: skip

        total, replies = self.cast.secure_sum(request, reply_type, layout, check=check)
        self.privacy.released(phase)
        return unpack(layout, total), replies

    def check_counts(self, phase: str, counts: np.ndarray, expected: int, exact: bool) -> None:
        """A corrupt masked vector from any center turns the sum into noise; see _check_sum."""
        _check_sum(phase, counts, expected, exact, self.privacy.for_phase(phase).count)

    @property
    def method(self) -> str:
        return self.config.selection_method.selection.name


class SecureLloyd:
    """The Lloyd loop's source (common/curation/lloyd.py) as two secure sums per round: cell
    sizes, then the statistics of the open cells."""

    def __init__(self, sums: SecureSums, eligible: dict[int, int]):
        self.sums, self.eligible = sums, eligible

    def counts(self, centers: np.ndarray) -> np.ndarray:
        parts, replies = self.sums.ask(
            CountsRequest, CountsReply, counts_layout(len(centers)),
            method=self.sums.method, centers=centers,
        )  # fmt: skip
        expected = sum(self.eligible[n] for n in replies)
        self.sums.check_counts("counts", parts["count"], expected, exact=True)
        return np.rint(parts["count"]).astype(np.int64)

    def stats(self, cells: np.ndarray, open_cells: np.ndarray) -> ClusterStats:
        """The centers just counted are not sent again: the request names them by digest."""
        k, d = int(open_cells.sum()), cells.shape[1]
        parts, replies = self.sums.ask(
            LloydRequest, LloydReply, lloyd_layout(k, d), method=self.sums.method,
            cells=centers_digest(cells), open=open_cells.astype(np.int64),
        )  # fmt: skip
        expected = sum(self.eligible[n] for n in replies)
        self.sums.check_counts("lloyd", parts["count"], expected, exact=True)
        return lloyd_stats(parts, cells[open_cells])


def _seed(cast: Broadcaster, config: CurationConfig, dim: int, rng: np.random.Generator):
    """k-FED: every center's noisy local centroids, clustered by the coordinator."""
    seeds = cast.ask(
        SeedRequest(
            run=config.run_name, method=config.selection_method.selection.name,
            k_local=config.k_local, min_count=config.min_count, seed=config.seed,
            noise_sigma=config.noise_sigma,
        ),
        SeedReply,
        check=lambda _node, reply: _expect_shape(reply.centroids, (config.k_local, dim)),
    )  # fmt: skip
    return seed_centers(seeds, config.k, rng)


def _moments_start(sums: SecureSums, dim: int, rng: np.random.Generator) -> np.ndarray:
    """With DP: k-means starts from the federation's noisy first and second moments."""
    layout = moments_layout(dim)
    parts, _ = sums.ask(MomentsRequest, MomentsReply, layout, method=sums.method)
    return moments_centers(parts, sums.config.k, rng)


def _mean_image(sums: SecureSums) -> np.ndarray | None:
    """optidel: the federated mean image, only ever as a noisy secure sum."""
    config = sums.config
    layout = mean_image_layout(config.image_size)
    parts, _ = sums.ask(
        MeanImageRequest, MeanImageReply, layout,
        image_size=config.image_size, min_count=config.min_count,
    )  # fmt: skip
    return mean_image(parts, config.min_count)


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

    def check(node: int, reply: InventoryReply) -> None:
        cast.names[node] = reply.center  # so that a refused reply is refused by name

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


def _check_sum(phase: str, counts: np.ndarray, expected: int, exact: bool, sigma: float) -> None:
    """A securely summed count vector must be made of counts the centers can hold. A corrupt
    masked vector from any center turns the whole sum into noise; no one center can be named,
    so the round stops instead of curating on garbage. With DP noise on the counts (sigma) the
    total may stray from the expected one by noise only (8 standard deviations)."""
    total = float(counts.sum())
    if sigma > 0:
        slack = 8.0 * sigma * math.sqrt(counts.size)
        ok = total <= expected + slack and (not exact or total >= expected - slack)
        ok = ok and bool(np.all(counts >= -8.0 * sigma))
    else:
        integral = bool(np.all(counts >= 0) and np.allclose(counts, np.rint(counts), atol=1e-3))
        ok = integral and (total == expected if exact else total <= expected)
    if not ok:
        rule = "equal" if exact else "be at most"
        raise RoundFailed(
            f"phase '{phase}': the secure sum is corrupt (counts total {total:g}, must {rule} "
            f"{expected}, non-negative integers); a center sent a malformed masked vector"
        )


def _score(
    sums: SecureSums,
    centers: np.ndarray,
    prior: np.ndarray,
    tau: float,
    eligible: dict[int, int],
    eta: float,
) -> Merged:
    """The candidates' histograms (k, bins), MedDEL's survivor counts per eta and candidates
    past their series' share: first the counts of each cluster, then histograms only of the
    clusters with min-count (the others' counts are zeroed)."""
    config = sums.config
    k = len(centers)
    series_share = config.selection_method.selection.series_share(config.series_cap, config.budget)
    parts, replies = sums.ask(
        ScoreRequest, ScoreReply, score_layout(k, len(ETA_GRID)),
        method=sums.method, tau=tau, eps=config.eps, eta=eta, keep=config.keep,
        series_share=series_share, centers=centers, prior=prior,
    )  # fmt: skip
    expected = sum(eligible[n] for n in replies)
    sums.check_counts("score", parts["candidates"], expected, exact=False)
    open_rows = np.rint(parts["candidates"]) >= config.min_count
    rows = None
    if config.selection_method.plans_by_histograms and open_rows.any():
        rows, _ = sums.ask(
            HistogramRequest, HistogramReply, histogram_layout(k, HISTOGRAM_BINS),
            method=sums.method, bins=HISTOGRAM_BINS, open=open_rows.astype(np.int64),
        )  # fmt: skip
    return merged_scores(parts, rows, open_rows, eta)


def _select(
    sums: SecureSums,
    round_: int,
    plan: Plan,
    inventories: dict[int, InventoryReply],
) -> tuple[np.ndarray, dict[int, SelectReply]]:
    config = sums.config
    k = len(plan.quotas)

    def check(node: int, reply: SelectReply) -> None:
        if reply.selected > inventories[node].samples:
            raise ProtocolError(
                f"selected={reply.selected} exceeds the center's {inventories[node].samples} "
                "samples"
            )

    parts, replies = sums.ask(
        SelectRequest, SelectReply, select_layout(k), check=check,
        round=round_, method=sums.method, seed=config.seed, retention=plan.retention,
        eta=plan.eta if plan.eta is not None else config.eta, keep=config.keep,
        bins=HISTOGRAM_BINS, threshold_bins=plan.threshold_bins,
        boundary_fractions=plan.fractions, quotas=plan.quotas,
        ranked_fractions=plan.ranked(),
    )  # fmt: skip
    per_cluster = parts["per_cluster"]
    expected = sum(r.selected for r in replies.values())
    sums.check_counts("select", per_cluster, expected, exact=True)
    return np.maximum(np.rint(per_cluster), 0).astype(np.int64), replies
