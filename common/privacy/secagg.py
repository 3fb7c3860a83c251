"""Pairwise-masked secure summation: the coordinator learns only the sum over centers.

The core of SecAgg (Bonawitz et al., CCS 2017). Every center holds an X25519 key pair per run;
for each other member j of the round's roster it derives a shared seed s_ij (ECDH + HKDF, bound
to the run, phase and attempt) and adds +PRG(s_ij) if i < j, -PRG(s_ij) otherwise, to its
fixed-point vector, modulo 2^64. Each reply alone is uniformly random; in the sum every pair's
masks cancel. What SecAgg adds for dropouts (secret-shared seeds) FedDEL replaces with a retry:
every phase is replayable at the centers, so when a member drops, the server re-asks the
survivors with a new roster and attempt number, and fresh masks.

Threat model: an honest-but-curious coordinator that follows the protocol. It does not protect
against a coordinator that forges rosters with nodes it controls (node authentication does).
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from feddel.common.errors import ProtocolError

SCALE = float(1 << 24)  # fixed-point step 2^-24; |values| stay far below 2^39 (see encode)
KEY_BYTES = 32


def generate_private_key() -> bytes:
    return X25519PrivateKey.generate().private_bytes_raw()


def public_key(private: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(private).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _pair_stream(private: bytes, peer_public: bytes, context: bytes, length: int) -> np.ndarray:
    """(length,) uint64 pseudo-random mask shared by exactly this pair of centers."""
    try:
        peer = X25519PublicKey.from_public_bytes(peer_public)
    except ValueError:
        raise ProtocolError(
            f"roster holds an invalid public key ({len(peer_public)} bytes)"
        ) from None
    shared = X25519PrivateKey.from_private_bytes(private).exchange(peer)
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=context).derive(shared)
    return np.random.PCG64(int.from_bytes(seed, "big")).random_raw(length).astype(np.uint64)


def mask(private: bytes, roster: list[bytes], context: bytes, length: int) -> np.ndarray:
    """The sum of this center's pairwise masks with every other roster member, mod 2^64."""
    own = public_key(private)
    if own not in roster:
        raise ProtocolError("this center is not in the round's roster; the coordinator must re-key")
    me = roster.index(own)
    total = np.zeros(length, dtype=np.uint64)
    for j, peer in enumerate(roster):
        if j == me:
            continue
        stream = _pair_stream(private, peer, context, length)
        total = total + stream if me < j else total - stream  # uint64 arithmetic wraps
    return total


def encode(values: np.ndarray) -> np.ndarray:
    """Fixed point: round(values * 2^24) as uint64 two's complement (integers stay exact)."""
    scaled = np.rint(np.asarray(values, dtype=np.float64).ravel() * SCALE)
    if scaled.size and np.abs(scaled).max() >= 2.0**62:
        raise ProtocolError("a value is too large for secure summation (|x| >= 2^38)")
    return scaled.astype(np.int64).view(np.uint64)


def decode(total: np.ndarray) -> np.ndarray:
    """Inverse of `encode` for a sum of encoded vectors (float64)."""
    return np.asarray(total, dtype=np.uint64).view(np.int64) / SCALE


def masked_vector(
    values: np.ndarray, private: bytes, roster: list[bytes], context: bytes
) -> np.ndarray:
    """What a center sends: encode(values) + its masks; alone it reveals nothing."""
    encoded = encode(values)
    return encoded + mask(private, roster, context, encoded.size)


def unmasked_sum(vectors: list[np.ndarray]) -> np.ndarray:
    """The server's side: the masks cancel in the sum over the whole roster."""
    total = np.zeros_like(np.asarray(vectors[0], dtype=np.uint64))
    for vector in vectors:
        total = total + np.asarray(vector, dtype=np.uint64)
    return decode(total)


def context(run: str, phase: str, attempt: int) -> bytes:
    """Binds masks to one use, so a replayed or retried phase never reuses a mask."""
    return f"feddel/{run}/{phase}/{attempt}".encode()
