"""Differential-privacy accounting for a round of Gaussian releases (zCDP, numpy only).

Every statistic FedDEL releases with `dp-epsilon` set is a Gaussian mechanism: a vector whose
L2 change when one image is added to or removed from one center is at most Delta (unit
embeddings bound a sample's share of a sum by 1, of a count by 1),
plus N(0, sigma^2) per value. Such a release is rho-zCDP with rho = Delta^2 / (2 sigma^2), and
rho adds up over releases (Bun & Steinke, TCC 2016, Prop. 1.6 and Lemma 2.3).

A composition of Gaussian mechanisms is itself exactly a Gaussian mechanism with
mu = sqrt(2 rho) (its privacy loss is N(mu^2/2, mu^2)), so its (epsilon, delta) curve is
known exactly (Balle & Wang, ICML 2018, Thm. 8; Dong, Roth & Su 2019, Cor. 2.13):

    delta(epsilon) = Phi(-epsilon/mu + mu/2) - e^epsilon Phi(-epsilon/mu - mu/2),

which is tighter than the generic zCDP bound epsilon <= rho + 2 sqrt(rho ln(1/delta)).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from feddel.common.errors import ConfigError

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def log_normal_cdf(x: float) -> float:
    """log Phi(x), accurate far into the lower tail (an asymptotic series below -30)."""
    if x > -30.0:
        return math.log(0.5 * math.erfc(-x / math.sqrt(2.0)))
    inverse = 1.0 / (x * x)
    return -0.5 * x * x - math.log(-x) - _LOG_SQRT_2PI + math.log1p(-inverse + 3 * inverse**2)


def gaussian_delta(epsilon: float, mu: float) -> float:
    """The exact delta of a mu-Gaussian mechanism (sensitivity / sigma = mu) at `epsilon`."""
    if mu <= 0.0:
        return 0.0
    first = 0.5 * math.erfc((epsilon / mu - mu / 2) / math.sqrt(2.0))
    second = math.exp(epsilon + log_normal_cdf(-epsilon / mu - mu / 2))
    return max(first - second, 0.0)


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The smallest epsilon with gaussian_delta(epsilon, mu) <= delta (bisection)."""
    _check_delta(delta)
    if mu <= 0.0 or gaussian_delta(0.0, mu) <= delta:
        return 0.0
    low, high = 0.0, 1.0
    while gaussian_delta(high, mu) > delta:
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if gaussian_delta(middle, mu) > delta else (low, middle)
    return high


def gaussian_mu(epsilon: float, delta: float) -> float:
    """The largest mu whose Gaussian mechanism is (epsilon, delta)-DP (bisection)."""
    _check_delta(delta)
    if not epsilon > 0.0:
        raise ConfigError(f"dp-epsilon={epsilon!r} must be > 0")
    low, high = 0.0, 1.0
    while gaussian_delta(epsilon, high) <= delta:
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if gaussian_delta(epsilon, middle) <= delta else (low, middle)
    return low


@dataclass
class Accountant:
    """The zCDP spent by the releases of one round, by phase."""

    rho_by_phase: dict[str, float] = field(default_factory=dict)
    releases: int = 0

    def add(self, phase: str, *parts: tuple[float, float]) -> None:
        """One Gaussian release made of `parts`, each (L2 sensitivity, noise sigma)."""
        rho = gaussian_rho(parts)
        if math.isinf(rho):
            raise ConfigError(f"a DP release needs noise > 0; phase {phase} has parts {parts!r}")
        self.rho_by_phase[phase] = self.rho_by_phase.get(phase, 0.0) + rho
        self.releases += 1

    @property
    def rho(self) -> float:
        return sum(self.rho_by_phase.values())

    def epsilon(self, delta: float) -> float:
        """The exact epsilon at `delta` of everything released so far."""
        return rho_epsilon(self.rho, delta)


def gaussian_rho(parts: Iterable[tuple[float, float]]) -> float:
    """zCDP of one Gaussian release made of (L2 sensitivity, noise sigma) parts: the sum of
    sensitivity^2 / (2 sigma^2); infinite when a part one image can change carries no noise."""
    rho = 0.0
    for sensitivity, sigma in parts:
        if sensitivity > 0 and not sigma > 0.0:
            return math.inf
        rho += sensitivity**2 / (2.0 * sigma**2) if sensitivity > 0 else 0.0
    return rho


def rho_epsilon(rho: float, delta: float) -> float:
    """The exact epsilon at `delta` of Gaussian releases that add up to rho-zCDP (0 for none)."""
    return gaussian_epsilon(math.sqrt(2.0 * rho), delta) if rho > 0 else 0.0


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"dp-delta={delta!r} must be in (0, 1)")
