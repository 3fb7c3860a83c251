"""Keyed Gaussian noise: Gaussian, split over a roster, fresh for new values, same on replay."""

import numpy as np
import pytest

from feddel.common.privacy.noise import (
    add_cell_noise,
    add_noise,
    keyed_gaussian,
    noise_context,
    noise_share,
    noisy_means,
)
from feddel.common.wire.protocol import lloyd_layout, pack, unpack

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
    key = noise_context("lloyd")  # the phase only: no run name, no sequence number
    first = add_noise(SECRET, key, values, np.full(50, 0.1))
    assert np.array_equal(first, add_noise(SECRET, key, values, np.full(50, 0.1)))


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


def _cells(rng, k, d=16):
    return rng.integers(10, 50, k).astype(np.float64), rng.standard_normal((k, d))


def test_a_cells_noise_depends_on_that_cell_alone():
    """Lloyd statistics: moving the other cells, or this cell to another position, keeps its
    noise, so a coordinator cannot draw fresh noise for a cell by changing what surrounds it;
    a change of the cell's own values (one member more) draws new noise."""
    rng = np.random.default_rng(0)
    count, total = _cells(rng, 6)
    layout = lloyd_layout(6, 16)
    key = noise_context("lloyd")

    def noise(count, total):
        values = pack(layout, count=count, sum=total)
        return unpack(layout, add_cell_noise(SECRET, key, layout, values, 0.5) - values)

    base = noise(count, total)
    other_count, other_total = _cells(rng, 6)
    other_count[2], other_total[2] = count[2], total[2]  # only cell 2 is the same
    order = np.array([5, 4, 3, 2, 1, 0])
    around = noise(other_count, other_total)
    reordered = noise(count[order], total[order])
    assert np.array_equal(around["sum"][2], base["sum"][2])
    assert np.array_equal(reordered["sum"][3], base["sum"][2])  # cell 2 sits at position 3
    assert not np.allclose(around["sum"][0], base["sum"][0])
    grown = total.copy()
    grown[2] += rng.standard_normal(16) / 4  # one member more
    changed = noise(count + np.eye(6)[2], grown)["sum"]
    assert abs(np.corrcoef(changed[2], base["sum"][2])[0, 1]) < 0.6
    assert np.array_equal(changed[0], base["sum"][0])


def test_cell_noise_has_the_asked_scale_per_part():
    rng = np.random.default_rng(1)
    count, total = _cells(rng, 400, d=64)
    layout = lloyd_layout(400, 64)
    values = pack(layout, count=count, sum=total)
    scales = pack(layout, count=np.zeros(400), sum=np.full((400, 64), 0.2))
    noise = unpack(layout, add_cell_noise(SECRET, b"c", layout, values, scales) - values)
    assert not noise["count"].any()  # exact counts stay exact
    assert noise["sum"].std() == pytest.approx(0.2, rel=0.02)
    assert abs(np.corrcoef(noise["sum"][:, 0], noise["sum"][:, 1])[0, 1]) < 0.15
