"""The selection methods: one object per method owns everything that differs between them.

A round runs the same phases for every method (inventory, seed, Lloyd, score, select); a
method decides which samples it may cluster (`eligible`), what the coordinator plans from the
merged histograms and survivor counts (`plan`), and what a center keeps given that plan
(`select`). Method names travel on the wire and in configs; code asks `method_named(name)` for
the object and never compares names.

- feddel: disruptive frames out, at most a series' share of the budget from any one series
  (a volume, a cine), cluster-PVI thresholds per cluster from merged histograms (hard within a
  cluster, water-filled across clusters); loosens its near-duplicate threshold when
  deduplication leaves fewer candidates than the budget.
- meddel: SemDeDup-style, as published: every readable sample, eps outliers out, the eta that
  hits the budget best.
- random: a uniform draw at the budget.
- full: everything.
- optidel: feddel's selection, then OptiDEL mosaics synthesized at the centers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import numpy as np

from feddel.common.curation.local import (
    ETA_GRID,
    CenterScores,
    meddel_survivors,
    plan_feddel,
    pvi_edges,
    select_feddel,
    select_meddel,
)
from feddel.common.curation.selection import (
    HISTOGRAM_BINS,
    ClusterPlan,
    apply_plan,
    pick_eta,
    random_selection,
)
from feddel.common.errors import ConfigError

# FedDEL's near-duplicate threshold is encoder-dependent (a trained encoder packs samples
# closer): when deduplication at `eta` leaves too few candidates to fill the budget, the score
# phase is asked again with the next, looser threshold (1.0 = exact duplicates only). Only
# then: loosening whenever the budget is merely tight (2x headroom was tried) let near-
# duplicates back in on the demo (distinct videos per selected 0.98 -> 0.92).
ETA_LADDER = (0.99, 0.995, 0.999, 1.0)


class Plan(NamedTuple):
    """What the coordinator asks every center to apply in the select phase."""

    quotas: np.ndarray  # (k,) samples planned per cluster (feddel), else zeros
    threshold_bins: np.ndarray  # (k,) histogram bin below which a cluster's candidates are kept
    fractions: np.ndarray  # (k,) share of the threshold bin each center keeps
    eta: float | None  # the near-duplicate threshold the selection used, if any
    retention: float  # the share a center keeps by a uniform draw (random), else 1
    bins: int = HISTOGRAM_BINS  # the histograms' bins over t = log2 g_x(y)
    # (k,) share of its candidates a center keeps, hardest first, in clusters without a
    # histogram (under min-count candidates); None: every cluster planned by threshold
    ranked_fractions: np.ndarray | None = None

    def ranked(self) -> np.ndarray:
        """(k,) ranked fractions, zeros when the plan has none."""
        if self.ranked_fractions is None:
            return np.zeros(len(self.quotas))
        return np.asarray(self.ranked_fractions, dtype=np.float64)


class Merged(NamedTuple):
    """The score phase summed over centers: what every plan is made from."""

    histograms: np.ndarray  # (k, bins) candidate counts over t = log2 g_x(y)
    survivors: np.ndarray  # (len(ETA_GRID),) MedDEL survivor counts per eta, else zeros
    eta: float  # the near-duplicate threshold the candidates were deduplicated at
    beyond_share: np.ndarray | None = None  # (k,) candidates past their series' share
    unbinned: np.ndarray | None = None  # (k,) candidates of clusters without a histogram

    @property
    def candidates(self) -> np.ndarray:
        """(k,) candidates per cluster, binned or not: what a plan shares the budget over."""
        binned = self.histograms.sum(axis=1)
        return binned if self.unbinned is None else binned + self.unbinned


@dataclass(frozen=True)
class CenterView:
    """What a center selects from: its embeddings and scores (never sent anywhere)."""

    embeddings: np.ndarray  # (n, d) unit rows
    scores: CenterScores
    sample_ids: list[str]
    eligible: np.ndarray  # (n,) bool


@dataclass(frozen=True)
class Method(ABC):
    """A selection method; subclasses override what differs. `name` is its wire/config value."""

    name: str
    description: str  # one line for --help
    drops_disruptive: ClassVar[bool] = False  # FedDEL leaves disruptive frames out up front
    plans_by_histograms: ClassVar[bool] = False  # its plan is a threshold per cluster
    reports_survivors: ClassVar[bool] = False  # centers send eps+eta survivor counts per eta
    synthesizes: ClassVar[bool] = False  # centers make OptiDEL mosaics after selecting
    keeps_everything: ClassVar[bool] = False  # R = 1 whatever the budget
    caps_series: ClassVar[bool] = False  # no series may fill its candidates (score_center)
    eta_ladder: tuple[float, ...] = field(default=(), repr=False)

    @property
    def selection(self) -> Method:
        """The method centers run in the selection phases (optidel selects as feddel does)."""
        return self

    def budget_for(self, budget: float) -> float:
        """The retention a run of this method targets: full keeps everything whatever asked."""
        return 1.0 if self.keeps_everything else budget

    def series_share(self, series_cap: float, budget: float) -> float:
        """The share of a series a center may keep as candidates (0 = no cap), in [0, 1]."""
        return min(1.0, series_cap * budget) if self.caps_series else 0.0

    def eligible(self, disruptive: np.ndarray) -> np.ndarray:
        """(n,) bool: the samples this method may cluster and select."""
        disruptive = np.asarray(disruptive, dtype=bool)
        return ~disruptive if self.drops_disruptive else np.ones(disruptive.shape, dtype=bool)

    def eligible_count(self, samples: int, disruptive: int) -> int:
        """The coordinator's view of `eligible`: a center's count from its inventory reply."""
        return samples - disruptive if self.drops_disruptive else samples

    def survivors(self, view: CenterView, keep: str) -> np.ndarray:
        """(len(ETA_GRID),) survivor counts a center reports in the score phase."""
        return np.zeros(len(ETA_GRID), dtype=np.int64)

    def plan(self, merged: Merged, budget: int, budget_share: float) -> Plan:
        """The coordinator's plan from the merged score phase; budget = ceil(budget_share * N)."""
        k = len(merged.histograms)
        zeros = np.zeros(k, dtype=np.int64)
        return Plan(zeros, zeros, np.zeros(k), None, 1.0)

    @abstractmethod
    def select(self, view: CenterView, plan: Plan, seed: int, keep: str) -> np.ndarray:
        """(n,) bool: what a center keeps."""

    def select_pooled(
        self, views: Sequence[CenterView], plan: Plan, seed: int, keep: str
    ) -> list[np.ndarray]:
        """The centralized reference: every center's mask, decided on the pooled view."""
        return [self.select(view, plan, seed, keep) for view in views]


@dataclass(frozen=True)
class FedDEL(Method):
    drops_disruptive: ClassVar[bool] = True
    plans_by_histograms: ClassVar[bool] = True
    caps_series: ClassVar[bool] = True
    eta_ladder: tuple[float, ...] = ETA_LADDER

    def plan(self, merged: Merged, budget: int, budget_share: float) -> Plan:
        quotas, plans = plan_feddel(merged.histograms, budget, merged.beyond_share, merged.unbinned)
        return Plan(
            quotas,
            np.array([p.threshold_bin for p in plans], dtype=np.int64),
            np.array([p.boundary_fraction for p in plans]),
            merged.eta,
            1.0,
            ranked_fractions=np.array([p.ranked_fraction for p in plans]),
        )

    def select(self, view: CenterView, plan: Plan, seed: int, keep: str) -> np.ndarray:
        k = len(plan.quotas)
        edges = pvi_edges(k, plan.bins)
        return select_feddel(view.scores, view.sample_ids, _cluster_plans(plan), edges, seed)

    def select_pooled(
        self, views: Sequence[CenterView], plan: Plan, seed: int, keep: str
    ) -> list[np.ndarray]:
        """Applied once over the pooled candidates, so each cluster meets its quota to +-1."""
        candidates = [np.flatnonzero(view.scores.candidate) for view in views]
        pairs = list(zip(views, candidates, strict=True))
        chosen = apply_plan(
            np.concatenate([view.scores.log_gx[index] for view, index in pairs]),
            np.concatenate([view.scores.labels[index] for view, index in pairs]),
            [view.sample_ids[i] for view, index in pairs for i in index],
            pvi_edges(len(plan.quotas), plan.bins),
            _cluster_plans(plan),
            seed,
        )
        masks, offset = [], 0
        for view, index in pairs:
            mask = np.zeros(len(view.sample_ids), dtype=bool)
            mask[index[chosen[offset : offset + len(index)]]] = True
            masks.append(mask)
            offset += len(index)
        return masks


@dataclass(frozen=True)
class OptiDEL(FedDEL):
    synthesizes: ClassVar[bool] = True

    @property
    def selection(self) -> Method:
        return FEDDEL


@dataclass(frozen=True)
class MedDEL(Method):
    reports_survivors: ClassVar[bool] = True

    def survivors(self, view: CenterView, keep: str) -> np.ndarray:
        return meddel_survivors(view.embeddings, view.scores, view.eligible, keep)

    def plan(self, merged: Merged, budget: int, budget_share: float) -> Plan:
        base = super().plan(merged, budget, budget_share)
        return base._replace(eta=pick_eta(ETA_GRID, merged.survivors, budget))

    def select(self, view: CenterView, plan: Plan, seed: int, keep: str) -> np.ndarray:
        if plan.eta is None:
            raise ConfigError("meddel's select phase needs the eta the coordinator picked")
        return select_meddel(view.embeddings, view.scores, view.eligible, plan.eta, keep)


@dataclass(frozen=True)
class Random(Method):
    def plan(self, merged: Merged, budget: int, budget_share: float) -> Plan:
        return super().plan(merged, budget, budget_share)._replace(retention=budget_share)

    def select(self, view: CenterView, plan: Plan, seed: int, keep: str) -> np.ndarray:
        return random_selection(view.sample_ids, plan.retention, seed)


@dataclass(frozen=True)
class Full(Method):
    keeps_everything: ClassVar[bool] = True

    def select(self, view: CenterView, plan: Plan, seed: int, keep: str) -> np.ndarray:
        return np.ones(len(view.sample_ids), dtype=bool)


FEDDEL = FedDEL("feddel", "disruptive frames out, hard per cluster, diverse across clusters")
MEDDEL = MedDEL("meddel", "MedDEL as published: eps outliers and eta near-duplicates out")
RANDOM = Random("random", "a uniform draw at the budget")
FULL = Full("full", "every readable sample")
OPTIDEL = OptiDEL("optidel", "feddel's selection plus OptiDEL mosaics made at the centers")

METHODS: dict[str, Method] = {m.name: m for m in (FEDDEL, MEDDEL, RANDOM, FULL, OPTIDEL)}
METHOD_NAMES = tuple(METHODS)
# What centers may be asked to run in the selection phases (the wire's method values).
SELECTION_NAMES = tuple(name for name, m in METHODS.items() if m.selection is m)
METHOD_HELP = "selection method (default feddel): " + "; ".join(
    f"{method.name}: {method.description}" for method in METHODS.values()
)


def method_named(name: str) -> Method:
    """The method called `name`; a ConfigError names the choices."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"method={name!r} must be one of {', '.join(METHOD_NAMES)}") from None


def _cluster_plans(plan: Plan) -> list[ClusterPlan]:
    return [
        ClusterPlan(int(q), int(b), float(f), float(r))
        for q, b, f, r in zip(
            plan.quotas, plan.threshold_bins, plan.fractions, plan.ranked(), strict=True
        )
    ]
