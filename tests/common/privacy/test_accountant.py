"""The zCDP accountant against closed-form and published values."""

import math

import numpy as np
import pytest

from feddel.common.errors import ConfigError
from feddel.common.privacy.accountant import (
    Accountant,
    gaussian_delta,
    gaussian_epsilon,
    gaussian_mu,
    log_normal_cdf,
)


def zcdp_epsilon_bound(rho, delta):
    """Bun & Steinke's generic conversion: rho-zCDP is (rho + 2 sqrt(rho ln(1/delta)), delta)-DP,
    which the exact conversion must beat."""
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


def _phi(x):
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def test_delta_at_epsilon_zero_is_the_total_variation_of_two_unit_gaussians():
    # TV(N(0,1), N(mu,1)) = 2 Phi(mu/2) - 1; for mu = 1: 0.3829249225480262
    assert gaussian_delta(0.0, 1.0) == pytest.approx(0.3829249225480262, rel=1e-12)
    assert gaussian_delta(0.0, 2.0) == pytest.approx(2 * _phi(1.0) - 1, rel=1e-12)


def test_delta_matches_the_closed_form_of_dong_roth_su():
    # mu = 1, epsilon = 1: Phi(-1/2) - e Phi(-3/2) = 0.30853754 - 2.71828183 x 0.06680720
    assert gaussian_delta(1.0, 1.0) == pytest.approx(0.30853754 - math.e * 0.06680720, abs=1e-7)


def test_analytic_gaussian_calibration_of_balle_and_wang():
    """(1, 1e-5)-DP needs sigma = 3.73 x sensitivity with the exact analysis, where the
    classical bound sqrt(2 ln(1.25/delta)) / epsilon gives 4.84 (Balle & Wang 2018)."""
    assert 1.0 / gaussian_mu(1.0, 1e-5) == pytest.approx(3.7306, abs=1e-3)
    classical = math.sqrt(2 * math.log(1.25 / 1e-5))
    assert classical == pytest.approx(4.845, abs=1e-3)
    assert gaussian_epsilon(1.0 / classical, 1e-5) < 1.0  # the classical sigma suffices


def test_the_privacy_loss_distribution_confirms_delta_by_monte_carlo():
    """delta(eps) = E[(1 - e^(eps - L))+] with L ~ N(mu^2/2, mu^2), the Gaussian's privacy loss."""
    mu, epsilon = 1.5, 2.0
    loss = np.random.default_rng(0).normal(mu * mu / 2, mu, 2_000_000)
    estimate = np.maximum(1.0 - np.exp(epsilon - loss), 0.0).mean()
    assert gaussian_delta(epsilon, mu) == pytest.approx(estimate, rel=0.01)


def test_zcdp_composes_additively_and_converts_below_the_generic_bound():
    accountant = Accountant()
    for _ in range(10):
        accountant.add("lloyd", (1.0, 2.0))  # Bun & Steinke: rho = Delta^2 / (2 sigma^2)
    assert accountant.rho == pytest.approx(10 * 1 / 8)
    assert accountant.releases == 10
    # ten Gaussians of sigma 2 are one Gaussian of sigma 2 / sqrt(10)
    exact = accountant.epsilon(1e-6)
    assert exact == pytest.approx(gaussian_epsilon(math.sqrt(10) / 2, 1e-6), rel=1e-9)
    assert exact < zcdp_epsilon_bound(accountant.rho, 1e-6)


def test_a_release_of_several_parts_adds_each_part():
    accountant = Accountant()
    accountant.add("lloyd", (1.0, 1.0), (4.0, 4.0))
    assert accountant.rho == pytest.approx(1.0)
    assert accountant.rho_by_phase == {"lloyd": pytest.approx(1.0)}


def test_releases_calibrated_by_gaussian_mu_spend_exactly_the_target():
    z = math.sqrt(50) / gaussian_mu(2.0, 1e-6)  # 50 releases, each sigma = z x sensitivity
    accountant = Accountant()
    for _ in range(50):
        accountant.add("x", (1.0, z))
    assert accountant.epsilon(1e-6) == pytest.approx(2.0, rel=1e-6)


def test_epsilon_and_delta_are_monotone_and_inverse():
    for mu in (0.1, 1.0, 5.0):
        epsilon = gaussian_epsilon(mu, 1e-6)
        assert gaussian_delta(epsilon, mu) == pytest.approx(1e-6, rel=1e-4)
        assert gaussian_mu(epsilon, 1e-6) == pytest.approx(mu, rel=1e-6)


def test_the_lower_tail_of_log_phi_is_continuous_at_the_switch():
    assert log_normal_cdf(-30.0 + 1e-9) == pytest.approx(log_normal_cdf(-30.0 - 1e-9), rel=1e-6)
    assert log_normal_cdf(-40.0) == pytest.approx(-804.60844, rel=1e-6)


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match="dp-delta"):
        gaussian_epsilon(1.0, 0.0)
    with pytest.raises(ConfigError, match="dp-epsilon"):
        gaussian_mu(0.0, 1e-6)
    with pytest.raises(ConfigError, match="needs noise > 0"):
        Accountant().add("lloyd", (1.0, 0.0))
