"""The noise of each secure sum of a round, and, with `dp-epsilon`, its privacy accounting.

Without DP (the default), counts are exact (the budget arithmetic and the min-count rule need
them) and every sum of embeddings carries `noise-sigma`, every image sum `image-noise`: enough
that differencing two Lloyd rounds or two runs recovers nothing (docs/design.md, section 3).

With `dp-epsilon` set, every per-cluster statistic of the round is a Gaussian release. The plan
counts the releases the round may make (moments, two per Lloyd round, the score phase and its
eta re-asks, the selection, the mean image), gives each the same share of the budget
(mu_i = mu / sqrt(releases), common/privacy/accountant.py), and sets each part's sigma to its
sensitivity x sqrt(parts) / mu_i. Sensitivities are for one image added to or removed from one
center: 1 for a count, 1 for a sum of unit embeddings or of their outer products, 255 x
sqrt(3) x size for an image sum, sqrt(2) for the score phase's candidate and past-series-share
counts, and, with MedDEL's survivor counts, sqrt(2 + 201) (it may survive at every eta of ETA_GRID).
Near-duplicate removal and the series share are assumed not to change another image's candidacy (see
docs/design.md); the center-level counts of the inventory are outside the guarantee.
The accountant records what was actually released, and summary.json reports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from feddel.common.config import CurationConfig
from feddel.common.privacy.accountant import Accountant, gaussian_mu
from feddel.common.privacy.sensitivity import Part, release_parts, release_sigmas

# what the zCDP guarantee does not cover (reported in summary.json)
NOT_COVERED = (
    "the inventory's center-level counts (files, samples, unreadable, duplicate files, "
    "disruptive frames) and each center's selected total, sent as plain counts",
    "near-duplicate removal: an image that removes its near-duplicates changes more than one "
    "candidate count; the accounting assumes it changes one",
)


@dataclass(frozen=True)
class Sigmas:
    """The noise a secure sum must carry: in its sums of embeddings or pixels, in its counts."""

    noise: float
    count: float


@dataclass
class RoundPrivacy:
    config: CurationConfig
    mu_per_release: float = 0.0  # 0: no DP
    accountant: Accountant = field(default_factory=Accountant)
    sigmas: dict[str, Sigmas] = field(default_factory=dict)

    @classmethod
    def plan(cls, config: CurationConfig) -> RoundPrivacy:
        plan = cls(config)
        if config.dp_epsilon > 0:
            releases = planned_releases(config)
            plan.mu_per_release = gaussian_mu(config.dp_epsilon, config.dp_delta) / math.sqrt(
                releases
            )
        return plan

    @property
    def dp(self) -> bool:
        return self.mu_per_release > 0

    def for_phase(self, phase: str) -> Sigmas:
        """The sigmas of a phase's secure sum (remembered for the summary)."""
        if phase not in self.sigmas:
            self.sigmas[phase] = self._sigmas(phase)
        return self.sigmas[phase]

    def released(self, phase: str) -> None:
        """One secure sum of `phase` was unmasked: with DP, account for it."""
        if not self.dp:
            return
        sigmas = self.for_phase(phase)
        parts = release_sigmas(_parts(self.config, phase), sigmas.noise, sigmas.count)
        self.accountant.add(phase, *parts)

    def _sigmas(self, phase: str) -> Sigmas:
        config = self.config
        default_noise = config.image_noise if phase == "mean_image" else config.noise_sigma
        parts = _parts(config, phase)
        by_kind = {kind: delta / times for delta, kind, times in parts}  # noise: per unit
        if not self.dp:
            return Sigmas(default_noise if "noise" in by_kind else 0.0, 0.0)
        scale = math.sqrt(len(parts)) / self.mu_per_release
        noise = max(by_kind["noise"] * scale, default_noise) if "noise" in by_kind else 0.0
        return Sigmas(noise, by_kind["count"] * scale)

    def summary(self) -> dict:
        """What summary.json reports under `privacy`."""
        config = self.config
        noise = {phase: {"noise_sigma": s.noise, "count_sigma": s.count}
                 for phase, s in sorted(self.sigmas.items())}  # fmt: skip
        report: dict = {
            "min_count": config.min_count, "min_roster": config.min_roster,
            "noise_sigma": config.noise_sigma, "image_noise": config.image_noise,
            "noise_by_phase": noise, "dp": None,
        }  # fmt: skip
        if self.dp:
            report["dp"] = {
                "epsilon_target": config.dp_epsilon, "delta": config.dp_delta,
                "epsilon": self.accountant.epsilon(config.dp_delta),
                "rho": self.accountant.rho, "releases": self.accountant.releases,
                "planned_releases": planned_releases(config),
                "rho_by_phase": dict(sorted(self.accountant.rho_by_phase.items())),
                "neighbouring": "one image added to or removed from one center",
                "not_covered": list(NOT_COVERED),
            }  # fmt: skip
        return report


def planned_releases(config: CurationConfig) -> int:
    """Every secure sum a round may unmask at most (retries after a dropped center excluded:
    an incomplete sum reveals nothing)."""
    method = config.selection_method
    scorings = 1 + len(method.eta_ladder)
    histograms = scorings if method.plans_by_histograms else 0
    return 1 + 2 * config.kmeans_max_rounds + scorings + histograms + 1 + method.synthesizes


def _parts(config: CurationConfig, phase: str) -> list[Part]:
    reports_survivors = config.selection_method.selection.reports_survivors
    return release_parts(phase, config.image_size, reports_survivors)
