"""Secure summation: masks cancel over the roster, a single reply reveals nothing."""

import numpy as np
import pytest

from feddel.common.errors import ProtocolError
from feddel.common.privacy import secagg


def _members(n):
    keys = [secagg.generate_private_key() for _ in range(n)]
    return keys, [secagg.public_key(k) for k in keys]


@pytest.mark.parametrize("centers", [2, 3, 31])
def test_secagg_masked_vectors_sum_to_the_plain_sum(centers):
    keys, roster = _members(centers)
    rng = np.random.default_rng(centers)
    values = [rng.normal(scale=50.0, size=40) for _ in range(centers)]
    context = secagg.context("run", "lloyd", 0)
    vectors = [
        secagg.masked_vector(v, k, roster, context) for v, k in zip(values, keys, strict=True)
    ]
    np.testing.assert_allclose(secagg.unmasked_sum(vectors), np.sum(values, axis=0), atol=1e-5)


def test_secagg_counts_stay_exact_integers():
    keys, roster = _members(3)
    counts = [np.array([10, 0, 7]), np.array([1, 2, 3]), np.array([0, 0, 1_000_000])]
    context = secagg.context("run", "score", 1)
    vectors = [
        secagg.masked_vector(c, k, roster, context) for c, k in zip(counts, keys, strict=True)
    ]
    assert secagg.unmasked_sum(vectors).tolist() == [11.0, 2.0, 1_000_010.0]


def test_secagg_one_reply_alone_looks_nothing_like_the_values():
    keys, roster = _members(2)
    values = np.zeros(2000)
    masked = secagg.masked_vector(values, keys[0], roster, secagg.context("r", "lloyd", 0))
    decoded = secagg.decode(masked)
    assert np.abs(decoded).min() > 1.0  # no zero survives masking
    bits = np.unpackbits(masked.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.01  # the bytes on the wire are uniform


def test_secagg_fresh_masks_for_every_attempt_and_phase():
    keys, roster = _members(2)
    values = np.ones(8)
    a = secagg.masked_vector(values, keys[0], roster, secagg.context("r", "lloyd", 0))
    b = secagg.masked_vector(values, keys[0], roster, secagg.context("r", "lloyd", 1))
    c = secagg.masked_vector(values, keys[0], roster, secagg.context("r", "score", 0))
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


def test_secagg_sum_without_a_member_does_not_unmask():
    keys, roster = _members(3)
    context = secagg.context("r", "lloyd", 0)
    vectors = [secagg.masked_vector(np.ones(5), k, roster, context) for k in keys]
    assert np.abs(secagg.unmasked_sum(vectors[:2]) - 2.0).min() > 1.0


def test_secagg_refuses_a_roster_without_this_center():
    keys, roster = _members(3)
    with pytest.raises(ProtocolError, match="not in the round's roster"):
        secagg.mask(keys[0], roster[1:], b"ctx", 4)


def test_secagg_refuses_values_too_large_for_fixed_point():
    with pytest.raises(ProtocolError, match="too large"):
        secagg.encode(np.array([2.0**40]))
