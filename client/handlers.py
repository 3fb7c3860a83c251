"""What a center does in each phase: request in, reply out, state on disk in between.

Handlers know nothing of Flower (client/app.py wires them), so each is tested directly. The
replies are the only things that leave the center: center-level counts, noisy local centroids
of clusters with at least min-count members, and, for every per-cluster statistic, a vector
masked for secure summation (common/privacy/secagg.py) that reveals nothing on its own and
whose sum carries the requested noise (common/privacy/noise.py). Before acting, every handler
checks the request against the center's own privacy policy (common/privacy/policy.py) and
refuses one below its floor (`Refused`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from feddel.client.budget import charge_release
from feddel.client.report import write_center_report
from feddel.client.state import CenterState
from feddel.common.curation.kmeans import (
    ClusterStats,
    assign,
    cluster_stats,
)
from feddel.common.curation.local import (
    ETA_GRID,
    CenterScores,
    beyond_share_counts,
    candidate_histograms,
    score_center,
)
from feddel.common.curation.methods import CenterView, Method, Plan, method_named
from feddel.common.data.manifest import manifest_rows, write_manifest
from feddel.common.data.pool import prepare_center
from feddel.common.errors import FedDELError, ProtocolError
from feddel.common.models.embed import EncoderSpec
from feddel.common.privacy import secagg
from feddel.common.privacy.cells import seed_proposal
from feddel.common.privacy.noise import (
    add_cell_noise,
    add_noise,
    noise_context,
    noise_share,
    noisy_means,
)
from feddel.common.privacy.policy import PrivacyPolicy
from feddel.common.privacy.sensitivity import Part, release_parts
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
    check_share,
    counts_layout,
    histogram_layout,
    lloyd_layout,
    mean_image_layout,
    moments_layout,
    noise_scales,
    pack,
    score_layout,
    select_layout,
    sum_ring,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CenterPaths:
    """Where a center's data (read-only) and state (read-write) live, its display name, and
    the privacy floor it holds every request to (the safe defaults unless center.toml says)."""

    name: str
    data: Path
    state: Path
    policy: PrivacyPolicy = field(default_factory=PrivacyPolicy)


def inventory(request: InventoryRequest, paths: CenterPaths) -> InventoryReply:
    paths.policy.check_min_count(request.min_count)
    paths.policy.check_image_size(request.image_size)
    spec = EncoderSpec(
        model=request.model,
        image_size=request.image_size,
        weights=request.weights or None,
        seed=request.seed,
    )
    pool = prepare_center(paths.data, paths.state, spec, name=paths.name)
    state = CenterState(paths.state)
    state.save_pool(request.run, pool, spec)
    state.record("inventory", run=request.run, samples=pool.counts.samples)
    counts = pool.counts
    return InventoryReply(
        center=paths.name,
        files=counts.files,
        samples=counts.samples,
        unreadable=counts.unreadable,
        duplicate_files=counts.duplicate_files,
        disruptive=counts.disruptive,
        dim=int(pool.embeddings.shape[1]),
        fingerprint=pool.fingerprint,
    )


def seed(request: SeedRequest, paths: CenterPaths) -> SeedReply:
    """Local centroids, each the mean of >= min_count samples (small local clusters are merged
    into their nearest neighbour) whose sum carries N(0, noise_sigma^2) per value, padded to
    k_local rows with zero counts, so neither the reply's size nor its shape tells how many
    clusters there were."""
    paths.policy.check_dp_release(request.ACTION)  # local centroids with exact counts
    paths.policy.check_min_count(request.min_count)
    paths.policy.check_k_local(request.k_local)
    paths.policy.check_noise(request.noise_sigma)
    state = CenterState(paths.state)
    pool = state.load_pool(request.run)
    X = pool.embeddings[method_named(request.method).eligible(pool.disruptive)]
    centroids, counts = seed_proposal(X, request.k_local, request.min_count, request.seed)
    context = noise_context(request.ACTION)
    noisy = noisy_means(state.noise_secret(), context, centroids, counts, request.noise_sigma)
    return SeedReply(centroids=noisy, counts=counts)


def keys(request: KeysRequest, paths: CenterPaths) -> KeysReply:
    private = CenterState(paths.state).new_secagg_key(request.run)
    return KeysReply(public_key=secagg.public_key(private))


def _masked(
    request: Masked,
    paths: CenterPaths,
    layout: dict[str, tuple[int, ...]],
    samples: int,
    by_cell: bool = False,
    **parts: np.ndarray,
) -> np.ndarray:
    """Pack, add this center's share of the sum's noise, and mask a vector for the round's
    secure sum (common/privacy/secagg.py), after checking the roster against the policy and
    the values against this center's share of the sum's bound: `samples`, the most samples
    any of the values counts, is at most what the center reported at inventory. `by_cell`:
    the noise is keyed cell by cell (common/privacy/noise.py, `add_cell_noise`)."""
    roster = request.roster_keys()
    paths.policy.check_roster(len(roster))
    values = pack(layout, **parts)
    state = CenterState(paths.state)
    private = state.secagg_key(request.run)
    context = secagg.context(request.run, request.ACTION, request.attempt)
    state.claim_mask(request.run, context, values)
    sigmas = (request.noise_sigma, request.count_sigma)
    charge_release(
        paths.state, paths.policy, request.run, request.ACTION, _sensitivities(request), sigmas,
        len(roster), values,
    )  # fmt: skip
    scales = noise_share(1.0, len(roster)) * noise_scales(layout, request)
    key = noise_context(request.ACTION)
    if by_cell:
        noisy = add_cell_noise(state.noise_secret(), key, layout, values, scales)
    else:
        noisy = add_noise(state.noise_secret(), key, values, scales)
    check_share(layout, request, noisy, samples)
    return secagg.masked_vector(noisy, private, roster, context, sum_ring(layout, request))


def _sensitivities(request: Masked) -> list[Part]:
    """What one image can change in this request's secure sum (common/privacy/sensitivity.py)."""
    image_size = request.image_size if isinstance(request, MeanImageRequest) else 0
    scoring = isinstance(request, ScoreRequest)
    survivors = scoring and method_named(request.method).selection.reports_survivors
    return release_parts(request.ACTION, image_size, survivors)


def _eligible_rows(request_method: str, paths: CenterPaths, run: str) -> tuple[Method, np.ndarray]:
    pool = CenterState(paths.state).load_pool(run)
    method = method_named(request_method)
    return method, pool.embeddings[method.eligible(pool.disruptive)]


def _cell_stats(X: np.ndarray, centers: np.ndarray) -> ClusterStats:
    k, d = centers.shape
    _check_dim(centers, X)
    if len(X):
        return cluster_stats(X, assign(X, centers), k)
    # nothing eligible (no readable or only disruptive images): it adds zeros
    return ClusterStats(np.zeros(k, dtype=np.int64), np.zeros((k, d)), np.zeros(k))


def counts(request: CountsRequest, paths: CenterPaths) -> CountsReply:
    """How many of its eligible samples each center's cell holds (masked); the centers are
    kept for the statistics request that follows."""
    _, X = _eligible_rows(request.method, paths, request.run)
    k = len(request.centers)
    stats = _cell_stats(X, request.centers)
    CenterState(paths.state).save_cells(request.run, request.centers)
    layout = counts_layout(k)
    return CountsReply(masked=_masked(request, paths, layout, len(X), count=stats.count))


def lloyd(request: LloydRequest, paths: CenterPaths) -> LloydReply:
    """Count and sum of the open cells (masked), every eligible sample assigned to its
    nearest open center; the coordinator derives the squared distances of unit rows."""
    paths.policy.check_noise(request.noise_sigma)
    _, X = _eligible_rows(request.method, paths, request.run)
    cells = CenterState(paths.state).load_cells(request.run, request.cells)
    if len(request.open) != len(cells):
        raise ProtocolError(f"{len(request.open)} open flags for {len(cells)} counted cells")
    centers = cells[request.open > 0]
    k, d = centers.shape
    stats = _cell_stats(X, centers)
    layout = lloyd_layout(k, d)
    return LloydReply(
        masked=_masked(
            request, paths, layout, len(X), by_cell=True, count=stats.count, sum=stats.sum
        )
    )


def moments(request: MomentsRequest, paths: CenterPaths) -> MomentsReply:
    """Count, sum and sum of outer products of the eligible embeddings (masked): with DP,
    k-means starts from these instead of local centroids."""
    paths.policy.check_noise(request.noise_sigma)
    _, X = _eligible_rows(request.method, paths, request.run)
    rows = np.asarray(X, dtype=np.float64)
    d = rows.shape[1]
    parts = {"count": np.array([len(rows)]), "sum": rows.sum(axis=0), "outer": rows.T @ rows}
    return MomentsReply(masked=_masked(request, paths, moments_layout(d), len(rows), **parts))


def mean_image(request: MeanImageRequest, paths: CenterPaths) -> MeanImageReply:
    """The sum of this center's images and their number (masked), or zeros when it holds
    fewer than min_count images or its policy does not share them: a 1-image center's image
    never enters the sum, and the sum of the others carries the pixel noise."""
    paths.policy.check_min_count(request.min_count)
    paths.policy.check_image_noise(request.noise_sigma)
    pool = CenterState(paths.state).load_pool(request.run)
    size = request.image_size
    if pool.image_sum.shape != (size, size, 3):
        raise ProtocolError(
            f"mean image of {size} px asked, this center embedded at {pool.image_sum.shape[0]} px"
        )
    share = paths.policy.share_mean_image and pool.counts.samples >= request.min_count
    if not share:
        log.info("%s: adds no image to the federated mean image", paths.name)
    count = pool.counts.samples if share else 0
    total = pool.image_sum if share else np.zeros_like(pool.image_sum)
    layout = mean_image_layout(size)
    return MeanImageReply(
        masked=_masked(request, paths, layout, count, count=np.array([count]), image_sum=total)
    )


def score(request: ScoreRequest, paths: CenterPaths) -> ScoreReply:
    state = CenterState(paths.state)
    pool = state.load_pool(request.run)
    method = method_named(request.method)
    eligible = method.eligible(pool.disruptive)
    _check_dim(request.centers, pool.embeddings)
    if len(pool.samples):
        scores = score_center(
            pool.embeddings, eligible, request.centers, request.prior,
            tau=request.tau, eps=request.eps, eta=request.eta, keep=request.keep,
            series=pool.series_codes(), series_share=request.series_share,
        )  # fmt: skip
    else:
        scores = _no_scores()
    state.save_scores(request.run, scores)
    k = len(request.centers)
    view = CenterView(pool.embeddings, scores, pool.sample_ids, eligible)
    layout = score_layout(k, len(ETA_GRID))
    candidates = np.bincount(scores.labels[scores.candidate], minlength=k)
    survivors = method.survivors(view, request.keep)
    return ScoreReply(
        masked=_masked(
            request,
            paths,
            layout,
            len(pool.samples),
            candidates=candidates,
            eta_survivors=survivors,
            beyond_share=beyond_share_counts(scores, k),
        )
    )


def histograms(request: HistogramRequest, paths: CenterPaths) -> HistogramReply:
    """The candidates' score histograms of the open clusters (masked); zeros elsewhere."""
    scores = CenterState(paths.state).load_scores(request.run)
    k = len(request.open)
    if len(scores.labels) and scores.labels.max() >= k:
        raise ProtocolError(f"histograms asked for {k} clusters; this center scored more")
    rows = candidate_histograms(scores, k, request.bins) * (request.open[:, None] > 0)
    layout = histogram_layout(k, request.bins)
    masked = _masked(request, paths, layout, len(scores.labels), histograms=rows)
    return HistogramReply(masked=masked)


def _check_dim(centers: np.ndarray, embeddings: np.ndarray) -> None:
    if centers.shape[1] != embeddings.shape[1]:
        raise ProtocolError(
            f"centroids have dimension {centers.shape[1]}, this center's embeddings "
            f"{embeddings.shape[1]}; the coordinator mixed encoders"
        )


def _no_scores() -> CenterScores:
    """The scores of an empty pool: every per-sample array of length 0."""
    empty = np.zeros(0)
    return CenterScores(
        labels=np.zeros(0, dtype=np.int32), sqdist=empty.astype(np.float32),
        outlier=empty.astype(bool), duplicate=empty.astype(bool), pvi=empty, log_gx=empty,
        candidate=empty.astype(bool), beyond_share=empty.astype(bool),
    )  # fmt: skip


def _center_report(paths: CenterPaths, request: SelectRequest) -> None:
    """The center's own report (contact sheets); it stays here, and never fails the phase."""
    try:
        write_center_report(paths.state, paths.data, request.run, request.round)
    except Exception as exc:  # a full disk or an image library's error: the selection stands
        log.warning("%s: center report not written: %s", paths.name, exc,
                    exc_info=not isinstance(exc, FedDELError))  # fmt: skip


def select(request: SelectRequest, paths: CenterPaths) -> SelectReply:
    state = CenterState(paths.state)
    pool = state.load_pool(request.run)
    scores = state.load_scores(request.run)
    ids = pool.sample_ids
    method = method_named(request.method)
    view = CenterView(pool.embeddings, scores, ids, method.eligible(pool.disruptive))
    plan = Plan(
        request.quotas, request.threshold_bins, request.boundary_fractions, request.eta,
        request.retention, request.bins, request.ranked_fractions,
    )  # fmt: skip
    chosen = method.select(view, plan, request.seed, request.keep)
    k = len(request.quotas)
    per_cluster = np.bincount(scores.labels[chosen], minlength=k)
    # the release first: a center that refuses it (its roster floor, its budget) is out of
    # the round and must keep no selection for pre-training to train on
    masked = _masked(request, paths, select_layout(k), len(ids), per_cluster=per_cluster)
    rows = manifest_rows(pool.name, pool.files, ids, scores.labels, scores.pvi, chosen, pool.frames)
    path = write_manifest(state.manifest_path(request.run, request.round), rows)
    state.record(
        "manifest", run=request.run, round=request.round, selected=len(rows), path=path.name
    )
    _center_report(paths, request)
    return SelectReply(selected=len(rows), masked=masked)
