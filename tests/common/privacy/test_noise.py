"""Keyed Gaussian noise: Gaussian, split over a roster, fresh for new values, same on replay."""

import numpy as np
import pytest

from feddel.common.privacy.noise import add_noise, keyed_gaussian, noise_share, noisy_means

SECRET = bytes(range(32))


def test_noise_is_gaussian_with_the_asked_scale():
    values = np.arange(200_000, dtype=np.float64)
    noise = keyed_gaussian(SECRET, b"ctx", values, np.full(values.shape, 2.0))
    assert abs(noise.mean()) < 0.02 and noise.std() == pytest.approx(2.0, rel=0.01)


def test_shares_of_a_roster_add_up_to_the_total_sigma():
    """Each of m members adds sigma / sqrt(m): the sum carries sigma, whatever m."""
    values = np.zeros(100_000)
    for m in (3, 7):
        shares = [
            keyed_gaussian(bytes([i]) * 32, b"ctx", values, noise_share(0.5, m)) for i in range(m)
        ]
        assert np.sum(shares, axis=0).std() == pytest.approx(0.5, rel=0.02)


def test_the_same_question_on_the_same_values_gets_the_same_noise():
    values = np.linspace(0, 1, 50)
    first = add_noise(SECRET, b"feddel/r/lloyd/3", values, np.full(50, 0.1))
    assert np.array_equal(first, add_noise(SECRET, b"feddel/r/lloyd/3", values, np.full(50, 0.1)))


def test_other_values_context_scale_or_secret_draw_independent_noise():
    """One image more changes the values: the noise of the two answers must not cancel."""
    values = np.linspace(0, 1, 20_000)
    base = keyed_gaussian(SECRET, b"c", values, 1.0)
    variants = [
        keyed_gaussian(SECRET, b"c", values + np.eye(1, 20_000)[0] * 1e-9, 1.0),
        keyed_gaussian(SECRET, b"d", values, 1.0),
        keyed_gaussian(SECRET, b"c", values, 1.0 + 1e-12),
        keyed_gaussian(bytes(32), b"c", values, 1.0),
    ]
    for other in variants:
        assert abs(np.corrcoef(base, other)[0, 1]) < 0.05


def test_zero_scales_leave_the_values_exact():
    values = np.array([3.0, 4.0])
    out = add_noise(SECRET, b"c", values, np.zeros(2))
    assert np.array_equal(out, values) and out is not values


def test_noisy_means_noise_the_sum_and_keep_padding_rows_zero():
    means = np.array([[1.0, 2.0], [0.0, 0.0]])
    out = noisy_means(SECRET, b"seed", means, np.array([20, 0]), 0.5)
    assert np.array_equal(out[1], [0.0, 0.0])
    delta = (out[0] - means[0]) * 20  # noise on the sum, scaled back
    assert np.all(np.abs(delta) < 5 * 0.5) and not np.allclose(delta, 0)
