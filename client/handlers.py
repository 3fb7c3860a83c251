"""What a center does in each phase: request in, reply out, state on disk in between.

Handlers know nothing of Flower (client/app.py wires them), so each is tested directly. The
replies are the only things that leave the center: center-level counts, local centroids of
clusters with at least min-count members, and, for every per-cluster statistic, a vector
masked for secure summation (common/privacy/secagg.py) that reveals nothing on its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from feddel.client.report import write_center_report
from feddel.client.state import CenterState
from feddel.common.curation.kmeans import ClusterStats, assign, cluster_stats
from feddel.common.curation.local import (
    ETA_GRID,
    CenterScores,
    candidate_histograms,
    score_center,
)
from feddel.common.curation.methods import CenterView, Plan, method_named
from feddel.common.data.manifest import manifest_rows, write_manifest
from feddel.common.data.pool import prepare_center
from feddel.common.errors import FedDELError, ProtocolError
from feddel.common.models.embed import EncoderSpec
from feddel.common.privacy import secagg
from feddel.common.privacy.cells import add_gaussian_noise, seed_proposal
from feddel.common.wire.protocol import (
    InventoryReply,
    InventoryRequest,
    KeysReply,
    KeysRequest,
    LloydReply,
    LloydRequest,
    Masked,
    ScoreReply,
    ScoreRequest,
    SeedReply,
    SeedRequest,
    SelectReply,
    SelectRequest,
    lloyd_layout,
    pack,
    score_layout,
    select_layout,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CenterPaths:
    """Where a center's data (read-only) and state (read-write) live, and its display name."""

    name: str
    data: Path
    state: Path


def inventory(request: InventoryRequest, paths: CenterPaths) -> InventoryReply:
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
    share_mean = counts.samples >= request.min_count
    return InventoryReply(
        center=paths.name,
        files=counts.files,
        samples=counts.samples,
        unreadable=counts.unreadable,
        duplicate_files=counts.duplicate_files,
        disruptive=counts.disruptive,
        dim=int(pool.embeddings.shape[1]),
        fingerprint=pool.fingerprint,
        image_count=counts.samples if share_mean else 0,
        image_sum=pool.image_sum if share_mean else np.zeros_like(pool.image_sum),
    )


def seed(request: SeedRequest, paths: CenterPaths) -> SeedReply:
    """Local centroids, each the mean of >= min_count samples (small local clusters are merged
    into their nearest neighbour), padded to k_local rows with zero counts, so neither the
    reply's size nor its shape tells how many clusters there were."""
    pool = CenterState(paths.state).load_pool(request.run)
    X = pool.embeddings[method_named(request.method).eligible(pool.disruptive)]
    centroids, counts = seed_proposal(X, request.k_local, request.min_count, request.seed)
    return SeedReply(centroids=centroids, counts=counts)


def keys(request: KeysRequest, paths: CenterPaths) -> KeysReply:
    private = CenterState(paths.state).new_secagg_key(request.run)
    return KeysReply(public_key=secagg.public_key(private))


def _masked(request: Masked, paths: CenterPaths, values: np.ndarray) -> np.ndarray:
    """Encode and mask a vector for the round's secure sum (common/privacy/secagg.py)."""
    state = CenterState(paths.state)
    private = state.secagg_key(request.run)
    context = secagg.context(request.run, request.ACTION, request.attempt)
    state.claim_mask(request.run, context, values)
    return secagg.masked_vector(values, private, request.roster_keys(), context)


def lloyd(request: LloydRequest, paths: CenterPaths) -> LloydReply:
    pool = CenterState(paths.state).load_pool(request.run)
    X = pool.embeddings[method_named(request.method).eligible(pool.disruptive)]
    k, d = request.centers.shape
    _check_dim(request.centers, pool.embeddings)
    if len(X):
        stats = cluster_stats(X, assign(X, request.centers), k)
    else:  # nothing eligible (no readable or only disruptive images): it adds zeros
        stats = ClusterStats(np.zeros(k, dtype=np.int64), np.zeros((k, d)), np.zeros(k))
    sums = stats.sum
    if request.noise_sigma > 0:  # fresh OS entropy: nobody else can reproduce the noise
        sums = add_gaussian_noise(sums, request.noise_sigma, np.random.default_rng())
    values = pack(lloyd_layout(k, d), count=stats.count, sum=sums, sqdist=stats.sqdist)
    return LloydReply(masked=_masked(request, paths, values))


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
        )  # fmt: skip
    else:
        scores = _no_scores()
    state.save_scores(request.run, scores)
    k = len(request.centers)
    view = CenterView(pool.embeddings, scores, pool.sample_ids, eligible)
    survivors = method.survivors(view, request.keep)
    values = pack(
        score_layout(k, request.bins, len(ETA_GRID)),
        histograms=candidate_histograms(scores, k, request.bins),
        eta_survivors=survivors,
    )
    return ScoreReply(masked=_masked(request, paths, values))


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
        candidate=empty.astype(bool),
    )  # fmt: skip


def _center_report(paths: CenterPaths, request: SelectRequest) -> None:
    """The center's own report (contact sheets); it stays here, and never fails the phase."""
    try:
        write_center_report(paths.state, paths.data, request.run, request.round)
    except FedDELError as exc:
        log.warning("%s: center report not written: %s", paths.name, exc)


def select(request: SelectRequest, paths: CenterPaths) -> SelectReply:
    state = CenterState(paths.state)
    pool = state.load_pool(request.run)
    scores = state.load_scores(request.run)
    ids = pool.sample_ids
    method = method_named(request.method)
    view = CenterView(pool.embeddings, scores, ids, method.eligible(pool.disruptive))
    plan = Plan(
        request.quotas, request.threshold_bins, request.boundary_fractions, request.eta,
        request.retention, request.bins,
    )  # fmt: skip
    chosen = method.select(view, plan, request.seed, request.keep)
    k = len(request.quotas)
    rows = manifest_rows(pool.name, pool.files, ids, scores.labels, scores.pvi, chosen)
    path = write_manifest(state.manifest_path(request.run, request.round), rows)
    state.record(
        "manifest", run=request.run, round=request.round, selected=len(rows), path=path.name
    )
    _center_report(paths, request)
    per_cluster = np.bincount(scores.labels[chosen], minlength=k)
    values = pack(select_layout(k), per_cluster=per_cluster)
    return SelectReply(selected=len(rows), masked=_masked(request, paths, values))
