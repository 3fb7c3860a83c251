"""The ring of a secure sum as both sides derive it from the request, and a center's values
held to its share of the bound: 32-bit words where the sum provably fits with rounding far
below the noise, 64-bit otherwise, and a clear refusal instead of a wrapped sum."""

import math

import numpy as np
import pytest

from feddel.common.errors import ProtocolError
from feddel.common.privacy import secagg
from feddel.common.privacy.noise import add_noise, noise_share
from feddel.common.wire.protocol import (
    QUANTIZATION,
    Masked,
    check_share,
    counts_layout,
    lloyd_layout,
    mean_image_layout,
    noise_scales,
    pack,
    roster_array,
    sum_ring,
    unpack,
)

SIGMA = 0.05  # the round's default noise-sigma


def _request(samples, members, noise_sigma=SIGMA, count_sigma=0.0, keys=None):
    roster = roster_array(keys) if keys else np.zeros((members, 32), dtype=np.int64)
    return Masked(
        run="r", attempt=0, noise_sigma=noise_sigma, count_sigma=count_sigma, samples=samples,
        roster=roster,
    )  # fmt: skip


def _worst_rounding(ring, layout, part, members):
    """members half-steps: the most the members' roundings can move one value of the sum."""
    return members * 2.0 ** -(unpack(layout, ring.shifts)[part].min() + 1)


@pytest.mark.parametrize(
    ("samples", "far_below"), [(4_745, 500), (100_000, 30), (1_000_000, QUANTIZATION)]
)
def test_a_lloyd_sum_of_31_centers_travels_in_32_bit_words_with_rounding_below_the_noise(
    samples, far_below
):
    """The demo federation (4,745 frames), and the benchmark's 100k and 1M samples."""
    layout = lloyd_layout(100, 384)
    ring = sum_ring(layout, _request(samples, 31))
    assert ring.bits == 32
    assert _worst_rounding(ring, layout, "sum", 31) <= SIGMA / far_below
    assert unpack(layout, ring.shifts)["count"].min() >= 0  # counts: exact integers


def test_sums_that_do_not_fit_32_bits_usefully_go_back_to_64():
    layout = lloyd_layout(2, 3)
    assert sum_ring(layout, _request(10_000_000, 31)).bits == 64  # rounding would reach sigma
    assert sum_ring(layout, _request(100_000, 31, noise_sigma=0.0)).bits == 64  # exact floats
    assert sum_ring(counts_layout(2), _request(100_000, 31, noise_sigma=0.0)).bits == 32
    image = mean_image_layout(16)  # 255 per pixel per image, noise 8192 per pixel
    assert sum_ring(image, _request(100_000, 31, noise_sigma=8192.0)).bits == 32
    assert sum_ring(image, _request(10_000_000, 31, noise_sigma=8192.0)).bits == 64
    assert sum_ring(image, _request(1_000, 3, noise_sigma=0.0)).bits == 64


def test_the_ring_follows_the_request_alone():
    """Both sides derive it: same request, same ring; a smaller roster, a finer step."""
    layout = lloyd_layout(4, 8)
    first, again = (sum_ring(layout, _request(50_000, 6)) for _ in range(2))
    assert first.bits == again.bits and np.array_equal(first.shifts, again.shifts)
    fewer = sum_ring(layout, _request(50_000, 3))
    assert (fewer.shifts >= first.shifts).all()


def _center_values(rng, rows, centers):
    """One center's Lloyd statistics of unit rows against `centers`."""
    X = rng.normal(size=(rows, centers.shape[1]))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    sq = ((X[:, None, :] - centers[None]) ** 2).sum(axis=2)
    labels = sq.argmin(axis=1)
    k = len(centers)
    return {
        "count": np.bincount(labels, minlength=k),
        "sum": np.array([X[labels == j].sum(axis=0) for j in range(k)]),
    }


def test_a_32_bit_lloyd_sum_equals_the_plain_sum_within_the_stated_rounding():
    """Five centers, noise at the default: counts exact, every other value within five
    half-steps of the plain (noisy) sum, far below the noise sigma."""
    rng = np.random.default_rng(0)
    members, k, d = 5, 3, 6
    keys = [secagg.generate_private_key() for _ in range(members)]
    request = _request(400, members, keys=[secagg.public_key(key) for key in keys])
    centers = rng.normal(size=(k, d)) / math.sqrt(d)
    layout = lloyd_layout(k, d)
    stats = [_center_values(rng, rows, centers) for rows in (40, 7, 300, 1, 52)]
    ring = sum_ring(layout, request)
    assert ring.bits == 32
    scales = noise_share(1.0, members) * noise_scales(layout, request)
    context = secagg.context("r", "lloyd", 0)
    plain, vectors = [], []
    for key, values, secret in zip(keys, stats, range(members), strict=True):
        noisy = add_noise(bytes([secret]) * 32, b"n", pack(layout, **values), scales)
        check_share(layout, request, noisy, int(values["count"].sum()))
        plain.append(noisy)
        vectors.append(secagg.masked_vector(noisy, key, request.roster_keys(), context, ring))
    summed = unpack(layout, secagg.unmasked_sum(vectors, ring))
    truth = unpack(layout, np.sum(plain, axis=0))
    exact = np.sum([values["count"] for values in stats], axis=0)
    assert summed["count"].tolist() == exact.tolist()
    error = np.abs(summed["sum"] - truth["sum"]).max()
    assert error <= _worst_rounding(ring, layout, "sum", members) <= SIGMA / 100


def test_a_center_past_its_share_of_the_bound_is_refused_by_name():
    """10 samples: a sum coordinate of 12 cannot come from unit rows; sent, it could wrap."""
    layout = lloyd_layout(1, 2)
    request = _request(1_000, 3, noise_sigma=0.0)
    fine = pack(layout, count=[10], sum=[[10.0, -10.0]])
    check_share(layout, request, fine, 10)
    bad = pack(layout, count=[10], sum=[[12.0, 0.0]])
    with pytest.raises(
        ProtocolError,
        match=r"^'sum' value 12 exceeds 10\.0098, this center's bound \(1 per sample x 10 "
        r"samples, plus noise\); its secure sum could wrap$",
    ):
        check_share(layout, request, bad, 10)
    with pytest.raises(ProtocolError, match=r"'count' value 11 exceeds 10\.0098"):
        check_share(layout, request, pack(layout, count=[11], sum=[[0, 0]]), 10)


def test_a_center_holding_more_than_the_federation_bound_is_refused():
    layout = counts_layout(2)
    with pytest.raises(ProtocolError, match=r"holds 200 samples; .* bounded for 100 in"):
        check_share(layout, _request(100, 3), np.array([150.0, 50.0]), 200)


def test_noise_is_allowed_up_to_ten_of_its_standard_deviations():
    layout = counts_layout(1)
    request = _request(1_000, 4, count_sigma=2.0)  # each member's share: sigma 1
    check_share(layout, request, np.array([10.0 + 9.9]), 10)
    with pytest.raises(ProtocolError, match=r"'count' value 20\.1 exceeds 20\.0"):
        check_share(layout, request, np.array([10.0 + 10.1]), 10)
