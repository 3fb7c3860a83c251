"""Secure summation: masks cancel over the roster, a single reply reveals nothing, and the
ring (32- or 64-bit words) fits the sum it was sized for."""

import numpy as np
import pytest

from feddel.common.errors import ProtocolError
from feddel.common.privacy import secagg


def _members(n):
    keys = [secagg.generate_private_key() for _ in range(n)]
    return keys, [secagg.public_key(k) for k in keys]


def _ring(bits, size, shift):
    return secagg.Ring(bits, np.full(size, shift, dtype=np.int64))


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("centers", [2, 3, 31])
def test_secagg_masked_vectors_sum_to_the_plain_sum_within_the_rounding(centers, bits):
    """Each member rounds to the step 2^-shift: the sum is off by at most centers half-steps."""
    keys, roster = _members(centers)
    rng = np.random.default_rng(centers)
    values = [rng.normal(scale=50.0, size=40) for _ in range(centers)]
    ring = secagg.fit_ring(np.full(40, 50.0 * 8 * centers), np.zeros(40), centers)
    assert ring.bits == 32 and ring.shifts.min() >= 16  # 2^31 / (400 x 31) leaves 16 bits
    ring = _ring(bits, 40, int(ring.shifts[0]))
    context = secagg.context("run", "lloyd", 0)
    vectors = [
        secagg.masked_vector(v, k, roster, context, ring) for v, k in zip(values, keys, strict=True)
    ]
    assert all(vector.dtype == ring.dtype for vector in vectors)
    error = np.abs(secagg.unmasked_sum(vectors, ring) - np.sum(values, axis=0))
    assert error.max() <= centers * 2.0 ** -(ring.shifts[0] + 1)


def test_secagg_counts_stay_exact_integers_in_32_bit_words():
    keys, roster = _members(3)
    counts = [np.array([10, 0, 7]), np.array([1, 2, 3]), np.array([0, 0, 1_000_000])]
    ring = secagg.fit_ring(np.full(3, 1_000_017.0), np.zeros(3), 3)
    assert ring.bits == 32
    context = secagg.context("run", "score", 1)
    vectors = [
        secagg.masked_vector(c, k, roster, context, ring) for c, k in zip(counts, keys, strict=True)
    ]
    assert secagg.unmasked_sum(vectors, ring).tolist() == [11.0, 2.0, 1_000_010.0]


def test_secagg_fit_ring_takes_the_finest_step_that_cannot_wrap():
    """bound x 2^shift + members <= 2^31: the largest shift, and never beyond 2^-24."""
    ring = secagg.fit_ring(np.array([1_000_000.0, 4_000_000.0, 0.5]), np.zeros(3), 31)
    assert ring.bits == 32 and ring.shifts.tolist() == [11, 9, 24]
    assert 1_000_000 * 2**11 + 31 <= 2**31 < 1_000_000 * 2**12


def test_secagg_fit_ring_goes_to_64_bit_words_when_32_lose_needed_precision():
    assert secagg.fit_ring(np.array([1e6]), np.array([12]), 31).bits == 64  # 2^-11 too coarse
    assert secagg.fit_ring(np.array([3e9]), np.array([0]), 3).bits == 64  # > 2^31 even at 1
    ring = secagg.fit_ring(np.array([3e9]), np.array([0]), 3)
    assert ring.shifts.tolist() == [24]
    with pytest.raises(ProtocolError, match="does not fit 64-bit words"):
        secagg.fit_ring(np.array([2.0**40]), np.array([24]), 3)


def test_secagg_a_sum_at_its_bound_decodes_even_when_every_member_rounds_up():
    """bound 2^31 - 5 over 5 members fits step 1 exactly; each member's 0.4 rounded up
    leaves the sum 2 past the bound, still inside the signed range."""
    keys, roster = _members(5)
    bound = 2.0**31 - 5
    ring = secagg.fit_ring(np.array([bound]), np.zeros(1), 5)
    assert ring.bits == 32 and ring.shifts.tolist() == [0]
    assert secagg.fit_ring(np.array([bound + 1]), np.zeros(1), 5).bits == 64
    share = np.array([bound / 5])  # 429496728.6: rounds up by 0.4
    context = secagg.context("run", "lloyd", 0)
    vectors = [secagg.masked_vector(share, k, roster, context, ring) for k in keys]
    assert secagg.unmasked_sum(vectors, ring).tolist() == [bound + 2]


@pytest.mark.parametrize("bits", [32, 64])
def test_secagg_one_reply_alone_looks_nothing_like_the_values(bits):
    """Masks cover every word: zeros come out as uniform bits in every bit position."""
    keys, roster = _members(2)
    ring = _ring(bits, 4000, 20)
    masked = secagg.masked_vector(
        np.zeros(4000), keys[0], roster, secagg.context("r", "l", 0), ring
    )
    assert masked.dtype == ring.dtype
    spread = np.abs(secagg.decode(masked, ring)) / 2.0 ** (bits - 1 - 20)
    assert abs(np.median(spread) - 0.5) < 0.05  # zeros decode all over the ring's range
    bits_by_position = np.unpackbits(masked.view(np.uint8)).reshape(len(masked), -1)
    assert np.abs(bits_by_position.mean(axis=0) - 0.5).max() < 0.04  # every bit of every word
    assert len(np.unique(masked)) == len(masked)


def test_secagg_fresh_masks_for_every_attempt_and_phase():
    keys, roster = _members(2)
    values, ring = np.ones(8), _ring(32, 8, 20)
    a = secagg.masked_vector(values, keys[0], roster, secagg.context("r", "lloyd", 0), ring)
    b = secagg.masked_vector(values, keys[0], roster, secagg.context("r", "lloyd", 1), ring)
    c = secagg.masked_vector(values, keys[0], roster, secagg.context("r", "score", 0), ring)
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


def test_secagg_sum_without_a_member_does_not_unmask():
    keys, roster = _members(3)
    context, ring = secagg.context("r", "lloyd", 0), _ring(32, 5, 20)
    vectors = [secagg.masked_vector(np.ones(5), k, roster, context, ring) for k in keys]
    assert np.abs(secagg.unmasked_sum(vectors[:2], ring) - 2.0).min() > 1.0


def test_secagg_refuses_a_roster_without_this_center():
    keys, roster = _members(3)
    with pytest.raises(ProtocolError, match="not in the round's roster"):
        secagg.mask(keys[0], roster[1:], b"ctx", _ring(32, 4, 0))


@pytest.mark.parametrize(("bits", "value"), [(32, 2.0**11), (64, 2.0**40)])
def test_secagg_refuses_a_value_that_alone_does_not_fit_its_words(bits, value):
    with pytest.raises(ProtocolError, match=f"too large for a {bits}-bit secure sum"):
        secagg.encode(np.array([1.0, value]), _ring(bits, 2, 20 if bits == 32 else 24))
