"""The centralized reference: the same curation on pooled data, as MedDEL runs on one machine.

Every center is prepared exactly as in the federation (its own quality thresholds, its own
embedding cache), then k-means runs on the pooled embeddings (k-means++ init, Lloyd to the
tolerance) and the plan is applied once over all candidates, so the budget is met to +-1 per
cluster. The federated round must match what this produces.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from feddel.common.config import CurationConfig
from feddel.common.curation.kmeans import (
    assign,
    cluster_stats,
    merge_stats,
    weighted_kmeans_plusplus,
)
from feddel.common.curation.lloyd import KMeansResult, lloyd
from feddel.common.curation.local import (
    CenterScores,
    auto_tau,
    beyond_share_counts,
    candidate_histograms,
    score_center,
    smoothed_prior,
)
from feddel.common.curation.methods import CenterView, Merged, Method, Plan
from feddel.common.data.manifest import MANIFEST_COLUMNS, manifest_rows
from feddel.common.data.pool import CenterPool, prepare_center
from feddel.common.io import write_csv, write_json
from feddel.common.models.embed import EncoderSpec
from feddel.common.reports.summary import RoundSummary
from feddel.server.report import center_line, k_reduced_warning
from feddel.simulations.evaluate import truth_measures
from feddel.simulations.layout import center_dirs


def encoder_spec(config: CurationConfig) -> EncoderSpec:
    return EncoderSpec(
        model=config.model,
        image_size=config.image_size,
        weights=config.weights or None,
        seed=config.seed,
    )


def pooled_kmeans(shards: list[np.ndarray], config: CurationConfig) -> KMeansResult:
    """Plain k-means on the pooled embeddings: k-means++ seeding, then Lloyd to the tolerance."""
    pooled = np.concatenate(shards)
    rng = np.random.default_rng(config.seed)
    init = weighted_kmeans_plusplus(pooled, np.ones(len(pooled)), min(config.k, len(pooled)), rng)
    return lloyd(shards, init, config.kmeans_max_rounds, config.kmeans_tol, rng)


def pooled_plan(
    method: Method, views: list[CenterView], k: int, config: CurationConfig, eta: float
) -> Plan:
    """The method's plan from the pooled histograms and survivor counts (no secure sums), the
    candidates deduplicated at `eta`."""
    total = sum(len(view.sample_ids) for view in views)
    merged = Merged(
        np.sum([candidate_histograms(view.scores, k) for view in views], axis=0),
        np.sum([method.survivors(view, config.keep) for view in views], axis=0),
        eta,
        np.sum([beyond_share_counts(view.scores, k) for view in views], axis=0),
    )
    return method.plan(merged, math.ceil(config.budget * total), config.budget)


class PooledRound(NamedTuple):
    """What the centralized reference decided for prepared pools."""

    kmeans: KMeansResult
    inertia: float  # of the pooled eligible embeddings to the final centers
    tau: float
    scores: list[CenterScores]
    plan: Plan
    masks: list[np.ndarray]  # per center, (n,) bool: selected


def run_centralized(
    data_dir: str | Path,
    out_dir: str | Path,
    config: CurationConfig,
    *,
    state_root: str | Path | None = None,
) -> RoundSummary:
    """Curate the pooled federation; write RUN/selection.csv and RUN/summary.json."""
    started = time.perf_counter()
    out = Path(out_dir)
    state = Path(state_root) if state_root else out / "centers"
    centers = center_dirs(data_dir)
    spec = encoder_spec(config)
    pools = [prepare_center(folder, state / folder.name, spec) for folder in centers]
    kmeans, inertia, tau, scores, plan, masks = curate_pools(pools, config)
    rows = [
        row
        for p, s, m in zip(pools, scores, masks, strict=True)
        for row in manifest_rows(p.name, p.files, p.sample_ids, s.labels, s.pvi, m, p.frames)
    ]
    write_csv(out / "selection.csv", MANIFEST_COLUMNS, rows)
    selection = {
        p.name: [p.locators[i] for i in np.flatnonzero(m)]
        for p, m in zip(pools, masks, strict=True)
    }
    pool_ids = {p.name: (p.sample_ids, p.locators) for p in pools}
    k = len(kmeans.centers)
    summary = RoundSummary(
        mode="centralized",
        method=config.method,
        budget=config.budget,
        total_samples=sum(len(p.samples) for p in pools),
        selected=len(rows),
        k=k,
        kmeans_rounds=kmeans.rounds,
        inertia=inertia,
        tau=tau,
        eta=plan.eta,
        per_center={
            p.name: center_line(p.counts, int(m.sum())) for p, m in zip(pools, masks, strict=True)
        },
        warnings=[w for w in [k_reduced_warning(config.k, k)] if w],
        config=config.to_run_config(),
        quality=truth_measures(centers, selection, pool_ids, config.budget, config.seed),
        wall_s=round(time.perf_counter() - started, 3),
    )
    write_json(out / "summary.json", summary.to_json())
    return summary


def curate_pools(pools: list[CenterPool], config: CurationConfig) -> PooledRound:
    """The round on prepared pools: pooled k-means, every center's scores (with its series),
    the method's plan from the pooled aggregates, and every center's selection."""
    method = config.selection_method.selection
    eligible = [method.eligible(p.disruptive) for p in pools]
    shards = [np.asarray(p.embeddings)[e] for p, e in zip(pools, eligible, strict=True)]
    kmeans = pooled_kmeans(shards, config)
    k = len(kmeans.centers)
    stats = merge_stats(cluster_stats(x, assign(x, kmeans.centers), k) for x in shards)
    prior = smoothed_prior(stats.count)
    tau = config.tau or auto_tau(stats.inertia, int(stats.count.sum()))
    series_share = method.series_share(config.series_cap, config.budget)

    def scored(eta: float) -> list[CenterScores]:
        return [
            score_center(
                p.embeddings,
                e,
                kmeans.centers,
                prior,
                tau=tau,
                eps=config.eps,
                eta=eta,
                keep=config.keep,
                series=p.series_codes(),
                series_share=series_share,
            )
            for p, e in zip(pools, eligible, strict=True)
        ]

    # the federated round's eta ladder: dedup less only when the budget cannot be filled
    budget = math.ceil(config.budget * sum(len(p.sample_ids) for p in pools))
    eta, scores = config.eta, scored(config.eta)
    for higher in (e for e in method.eta_ladder if e > config.eta):
        if sum(int(np.sum(s.candidate)) for s in scores) >= budget:
            break
        eta, scores = higher, scored(higher)
    views = [
        CenterView(p.embeddings, s, p.sample_ids, e)
        for p, s, e in zip(pools, scores, eligible, strict=True)
    ]
    plan = pooled_plan(method, views, k, config, eta)
    masks = method.select_pooled(views, plan, config.seed, config.keep)
    return PooledRound(kmeans, float(stats.inertia), tau, scores, plan, masks)
