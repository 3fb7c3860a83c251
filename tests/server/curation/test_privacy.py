"""The noise of each phase of a round, and the DP plan that spends exactly its epsilon."""

import dataclasses
import math

import pytest

from feddel.common.config import CurationConfig
from feddel.common.curation.local import ETA_GRID
from feddel.server.curation.privacy import RoundPrivacy, Sigmas, planned_releases


def test_without_dp_only_sums_carry_noise_and_counts_stay_exact():
    privacy = RoundPrivacy.plan(CurationConfig())
    assert privacy.for_phase("lloyd") == Sigmas(0.05, 0.0)
    assert privacy.for_phase("counts") == Sigmas(0.0, 0.0)
    assert privacy.for_phase("histograms") == Sigmas(0.0, 0.0)
    assert privacy.for_phase("mean_image") == Sigmas(8192.0, 0.0)
    privacy.released("lloyd")
    assert privacy.accountant.releases == 0 and privacy.summary()["dp"] is None


@pytest.mark.parametrize(
    ("method", "releases"),
    [("feddel", 1 + 2 * 20 + 5 + 5 + 1), ("optidel", 1 + 2 * 20 + 5 + 5 + 1 + 1),
     ("meddel", 1 + 2 * 20 + 1 + 1), ("random", 1 + 2 * 20 + 1 + 1)],
)  # fmt: skip
def test_planned_releases_count_every_secure_sum_a_round_may_unmask(method, releases):
    assert planned_releases(CurationConfig(method=method)) == releases


def _spend_the_plan(config):
    """Release what a round of `config` may release at most, in its phases."""
    privacy = RoundPrivacy.plan(config)
    method = config.selection_method
    phases = ["moments"] + ["counts", "lloyd"] * config.kmeans_max_rounds
    phases += ["score"] * (1 + len(method.eta_ladder))
    phases += ["histograms"] * (1 + len(method.eta_ladder)) if method.plans_by_histograms else []
    phases += ["select"] + (["mean_image"] if method.synthesizes else [])
    for phase in phases:
        privacy.released(phase)
    assert privacy.accountant.releases == planned_releases(config)
    return privacy


@pytest.mark.parametrize("epsilon", [1.0, 10.0, 100.0])
def test_a_round_that_makes_every_planned_release_spends_at_most_its_epsilon(epsilon):
    config = CurationConfig(dp_epsilon=epsilon, noise_sigma=0.0, image_noise=0.0)
    spent = _spend_the_plan(config).accountant.epsilon(config.dp_delta)
    assert spent == pytest.approx(epsilon, rel=1e-6)  # no floor raised any sigma: all of it
    noisier = _spend_the_plan(dataclasses.replace(config, noise_sigma=100.0))
    assert noisier.accountant.epsilon(config.dp_delta) < epsilon  # more noise: less spent


def test_dp_sigmas_follow_the_sensitivities():
    """Per release mu_i = mu / sqrt(R); each of its P parts gets sigma = Delta sqrt(P) / mu_i."""
    config = CurationConfig(dp_epsilon=10.0, noise_sigma=0.0, image_noise=0.0)
    privacy = RoundPrivacy.plan(config)
    mu_i = privacy.mu_per_release
    assert privacy.for_phase("counts") == Sigmas(0.0, pytest.approx(1 / mu_i))
    lloyd = privacy.for_phase("lloyd")  # count and sum: no squared distances are released
    assert (lloyd.count, lloyd.noise) == (pytest.approx(math.sqrt(2) / mu_i),) * 2
    image = privacy.for_phase("mean_image")
    assert image.noise == pytest.approx(255 * math.sqrt(3) * 64 * math.sqrt(2) / mu_i)
    meddel = RoundPrivacy.plan(dataclasses.replace(config, method="meddel"))
    assert meddel.for_phase("score").count == pytest.approx(
        math.sqrt(2 + len(ETA_GRID)) / meddel.mu_per_release
    )  # its candidate and past-share counts, and it may survive at every eta of the grid


def test_the_dp_summary_reports_epsilon_delta_and_what_it_does_not_cover():
    config = CurationConfig(dp_epsilon=5.0)
    privacy = _spend_the_plan(config)
    dp = privacy.summary()["dp"]
    assert dp["epsilon"] <= 5.0 + 1e-9 and dp["delta"] == 1e-6 and dp["releases"] == 52
    generic = dp["rho"] + 2 * math.sqrt(dp["rho"] * math.log(1e6))  # Bun & Steinke's bound
    assert dp["epsilon"] < generic  # the exact conversion is tighter
    assert set(dp["rho_by_phase"]) == {"moments", "counts", "lloyd", "score", "histograms",
                                       "select"}  # fmt: skip
    assert any("center-level counts" in line for line in dp["not_covered"])
