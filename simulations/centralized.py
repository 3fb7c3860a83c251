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
from typing import Any

import numpy as np

from feddel.common.config import CurationConfig
from feddel.common.curation.kmeans import (
    KMeansResult,
    assign,
    cluster_stats,
    lloyd,
    merge_stats,
    weighted_kmeans_plusplus,
)
from feddel.common.curation.local import (
    ETA_GRID,
    CenterScores,
    auto_tau,
    candidate_histograms,
    meddel_survivors,
    plan_feddel,
    pvi_edges,
    score_center,
    select_meddel,
    smoothed_prior,
)
from feddel.common.curation.selection import apply_plan, pick_eta, random_selection
from feddel.common.data.manifest import MANIFEST_COLUMNS, manifest_rows
from feddel.common.data.pool import CenterPool, prepare_center
from feddel.common.io import write_csv, write_json
from feddel.common.models.embed import EncoderSpec
from feddel.server.report import center_row
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


def select_pooled(
    pools: list[CenterPool],
    scores: list[CenterScores],
    eligible: list[np.ndarray],
    k: int,
    config: CurationConfig,
) -> list[np.ndarray]:
    """Per-center selected masks for the configured method, deciding on the pooled view."""
    total = sum(len(p.samples) for p in pools)
    budget = math.ceil(config.budget * total)
    if config.selection == "full":
        return [np.ones(len(p.samples), dtype=bool) for p in pools]
    if config.selection == "random":
        return [random_selection(p.sample_ids, config.budget, config.seed) for p in pools]
    if config.selection == "meddel":
        survivors = np.sum(
            [
                meddel_survivors(p.embeddings, s, e, config.keep)
                for p, s, e in zip(pools, scores, eligible, strict=True)
            ],
            axis=0,
        )
        eta = pick_eta(ETA_GRID, survivors, budget)
        return [
            select_meddel(p.embeddings, s, e, eta, config.keep)
            for p, s, e in zip(pools, scores, eligible, strict=True)
        ]
    histograms = np.sum([candidate_histograms(s, k) for s in scores], axis=0)
    _, plans = plan_feddel(histograms, budget)
    candidates = [np.flatnonzero(s.candidate) for s in scores]
    chosen = apply_plan(
        np.concatenate([s.log_gx[c] for s, c in zip(scores, candidates, strict=True)]),
        np.concatenate([s.labels[c] for s, c in zip(scores, candidates, strict=True)]),
        [p.sample_ids[i] for p, c in zip(pools, candidates, strict=True) for i in c],
        pvi_edges(k),
        plans,
        config.seed,
    )
    masks, offset = [], 0
    for pool, index in zip(pools, candidates, strict=True):
        mask = np.zeros(len(pool.samples), dtype=bool)
        mask[index[chosen[offset : offset + len(index)]]] = True
        masks.append(mask)
        offset += len(index)
    return masks


def run_centralized(
    data_dir: str | Path,
    out_dir: str | Path,
    config: CurationConfig,
    *,
    state_root: str | Path | None = None,
) -> dict[str, Any]:
    """Curate the pooled federation; write RUN/selection.csv and RUN/summary.json."""
    started = time.perf_counter()
    out = Path(out_dir)
    state = Path(state_root) if state_root else out / "centers"
    centers = center_dirs(data_dir)
    spec = encoder_spec(config)
    pools = [prepare_center(folder, state / folder.name, spec) for folder in centers]
    eligible = [p.eligible(config.selection) for p in pools]
    shards = [np.asarray(p.embeddings)[e] for p, e in zip(pools, eligible, strict=True)]
    kmeans = pooled_kmeans(shards, config)
    k = len(kmeans.centers)
    stats = merge_stats(cluster_stats(x, assign(x, kmeans.centers), k) for x in shards)
    prior = smoothed_prior(stats.count)
    tau = config.tau or auto_tau(stats.inertia, int(stats.count.sum()))
    scores = [
        score_center(
            p.embeddings,
            e,
            kmeans.centers,
            prior,
            tau=tau,
            eps=config.eps,
            eta=config.eta,
            keep=config.keep,
        )
        for p, e in zip(pools, eligible, strict=True)
    ]
    masks = select_pooled(pools, scores, eligible, k, config)
    rows = [
        row
        for p, s, m in zip(pools, scores, masks, strict=True)
        for row in manifest_rows(p.name, p.files, p.sample_ids, s.labels, s.pvi, m, p.frames)
    ]
    write_csv(out / "selection.csv", MANIFEST_COLUMNS, rows)
    total = sum(len(p.samples) for p in pools)
    summary: dict[str, Any] = {
        "mode": "centralized",
        "method": config.method,
        "budget": config.budget,
        "centers": len(pools),
        "total_samples": total,
        "selected": len(rows),
        "retention": len(rows) / total if total else 0.0,
        "k": k,
        "kmeans_rounds": kmeans.rounds,
        "inertia": float(stats.inertia),
        "tau": tau,
        "per_center": {
            p.name: center_row(p.counts, int(m.sum())) for p, m in zip(pools, masks, strict=True)
        },
        "config": config.to_run_config(),
    }
    selection = {
        p.name: [p.locators[i] for i in np.flatnonzero(m)]
        for p, m in zip(pools, masks, strict=True)
    }
    pool_ids = {p.name: (p.sample_ids, p.locators) for p in pools}
    quality = truth_measures(centers, selection, pool_ids, config.budget, config.seed)
    if quality is not None:
        summary["quality"] = quality
    summary["wall_s"] = round(time.perf_counter() - started, 3)
    write_json(out / "summary.json", summary)
    return summary
