"""The Method objects: what each selection method decides, and that nothing else decides it."""

import re
from pathlib import Path

import numpy as np
import pytest

from feddel.common.curation.local import ETA_GRID, score_center, smoothed_prior
from feddel.common.curation.methods import (
    FEDDEL,
    FULL,
    MEDDEL,
    METHOD_NAMES,
    OPTIDEL,
    RANDOM,
    SELECTION_NAMES,
    CenterView,
    Merged,
    method_named,
)
from feddel.common.curation.selection import HISTOGRAM_BINS
from feddel.common.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
K = 3


def _view(n: int = 40, seed: int = 0) -> CenterView:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    centers = X[:K].astype(np.float64)
    eligible = np.ones(n, dtype=bool)
    scores = score_center(
        X, eligible, centers, smoothed_prior(np.ones(K)), tau=0.5, eps=2.0, eta=0.999, keep="hard"
    )
    return CenterView(X, scores, [f"s{i}" for i in range(n)], eligible)


def _merged(view: CenterView, eta: float = 0.98) -> Merged:
    from feddel.common.curation.local import candidate_histograms

    survivors = MEDDEL.survivors(view, "hard")
    return Merged(candidate_histograms(view.scores, K), survivors, eta)


def test_names_resolve_and_unknown_names_are_refused_by_name():
    assert [method_named(name).name for name in METHOD_NAMES] == list(METHOD_NAMES)
    assert set(SELECTION_NAMES) == {"feddel", "meddel", "random", "full"}
    with pytest.raises(ConfigError, match=r"method='semdedup' must be one of feddel, meddel"):
        method_named("semdedup")


def test_only_feddel_and_optidel_leave_disruptive_frames_out():
    disruptive = np.array([True, False, True])
    for method in (FEDDEL, OPTIDEL):
        assert method.eligible(disruptive).tolist() == [False, True, False]
        assert method.eligible_count(samples=3, disruptive=2) == 1
    for method in (MEDDEL, RANDOM, FULL):
        assert method.eligible(disruptive).all() and method.eligible_count(3, 2) == 3


def test_optidel_selects_as_feddel_and_synthesizes():
    assert OPTIDEL.selection is FEDDEL and FEDDEL.selection is FEDDEL
    assert OPTIDEL.synthesizes and not FEDDEL.synthesizes


def test_feddel_plans_quotas_that_fill_the_budget_and_keep_its_dedup_eta():
    view = _view()
    plan = FEDDEL.plan(_merged(view, eta=0.995), budget=12, budget_share=0.3)
    assert plan.quotas.sum() == 12 and plan.eta == 0.995 and plan.bins == HISTOGRAM_BINS
    chosen = FEDDEL.select(view, plan, seed=0, keep="hard")
    assert abs(int(chosen.sum()) - 12) <= K  # each cluster's boundary bin rounds by <= 1/2
    pooled = FEDDEL.select_pooled([view], plan, seed=0, keep="hard")[0]
    assert abs(int(pooled.sum()) - 12) <= K


def test_meddel_picks_the_eta_whose_survivors_hit_the_budget():
    view = _view()
    merged = _merged(view)
    plan = MEDDEL.plan(merged, budget=20, budget_share=0.5)
    best = np.abs(merged.survivors - 20).min()
    assert plan.eta in ETA_GRID[np.abs(merged.survivors - 20) == best]
    assert MEDDEL.select(view, plan, seed=0, keep="hard").sum() == pytest.approx(
        merged.survivors[list(ETA_GRID).index(plan.eta)]
    )


def test_random_draws_its_share_and_full_keeps_everything():
    view = _view(400)
    plan = RANDOM.plan(_merged(view), budget=40, budget_share=0.1)
    assert plan.retention == 0.1
    assert 20 <= RANDOM.select(view, plan, seed=1, keep="hard").sum() <= 60
    full = FULL.plan(_merged(view), budget=400, budget_share=1.0)
    assert FULL.select(view, full, seed=1, keep="hard").all()
    assert FULL.budget_for(0.05) == 1.0 and RANDOM.budget_for(0.05) == 0.05


def test_only_meddel_reports_survivor_counts():
    view = _view()
    assert MEDDEL.survivors(view, "hard").sum() > 0
    for method in (FEDDEL, RANDOM, FULL):
        assert not method.survivors(view, "hard").any()


def test_no_method_name_is_compared_outside_the_method_objects():
    """Behaviour that differs by method lives in common/curation/methods.py only."""
    names = "|".join(METHOD_NAMES)
    compared = re.compile(
        rf"""(==|!=|\bin)\s*\(?\s*["']({names})["']|["']({names})["']\s*(==|!=)"""
    )
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("common", "client", "server", "simulations")
        for path in (ROOT / folder).rglob("*.py")
        if path.name != "methods.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if compared.search(line)
    ]
    assert offenders == []
