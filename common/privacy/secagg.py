"""Pairwise-masked secure summation: the coordinator learns only the sum over centers.

The core of SecAgg (Bonawitz et al., CCS 2017). Every center holds an X25519 key pair per run;
for each other member j of the round's roster it derives a shared seed s_ij (ECDH + HKDF, bound
to the run, phase and attempt) and adds +PRG(s_ij) (ChaCha20) if i < j, -PRG(s_ij) otherwise, to its
fixed-point vector, modulo 2^bits. Each reply alone is uniformly random; in the sum every pair's
masks cancel. What SecAgg adds for dropouts (secret-shared seeds) FedDEL replaces with a retry:
every phase is replayable at the centers, so when a member drops, the server re-asks the
survivors with a new roster and attempt number, and fresh masks.

The ring (`Ring`, `fit_ring`): a sum is taken mod 2^32 (4 bytes a value) when it provably
fits, else mod 2^64. Value i travels as round(x_i * 2^shift_i). Given a bound B_i on the
roster's true sum, m members' roundings move the encoded sum by at most m/2, so it cannot wrap
when B_i * 2^shift_i <= 2^(bits-1) - m; each value gets the largest such shift (at most 24).
The smallest word size wins in which every value keeps the fractional bits it needs (the wire
protocol says how many: none for an exact count, enough that rounding stays far below the
noise of a noisy sum). Masks cover every word whatever its size.

Threat model: an honest-but-curious coordinator that follows the protocol. It does not protect
against a coordinator that forges rosters with nodes it controls (node authentication does).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from feddel.common.errors import ProtocolError

KEY_BYTES = 32
WORD_BITS = (32, 64)  # the rings a sum may be taken in, smallest first
MAX_SHIFT = 24  # the finest fixed-point step, 2^-24: all the precision a sum needs
SHARED_SECRETS = 4096  # pair secrets kept in memory: a 64-center roster for 64 runs


def generate_private_key() -> bytes:
    return X25519PrivateKey.generate().private_bytes_raw()


def public_key(private: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(private).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Ring:
    """The integers mod 2^bits one secure sum is taken in, and the fixed-point step 2^-shift
    of each of its values. Both sides derive it from the request (`fit_ring`)."""

    bits: int
    shifts: np.ndarray  # (n,) int64

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(f"uint{self.bits}")

    @property
    def size(self) -> int:
        return len(self.shifts)


def fit_ring(bounds: np.ndarray, min_shifts: np.ndarray, members: int) -> Ring:
    """The smallest ring in which a sum over `members` whose true value i lies in
    [-bounds[i], bounds[i]] cannot wrap and keeps at least min_shifts[i] fractional bits.
    ProtocolError when not even 64 bits hold it (no honest federation gets there: it takes
    sums near 2^38)."""
    distinct, inverse = np.unique(np.asarray(bounds, dtype=np.float64), return_inverse=True)
    for bits in WORD_BITS:
        shifts = np.array([_shift(bound, bits, members) for bound in distinct])[inverse]
        if np.all(shifts >= min_shifts):
            return Ring(bits, shifts.astype(np.int64).reshape(-1))
    raise ProtocolError(
        f"a secure sum bounded by {distinct.max(initial=0.0):.6g} does not fit 64-bit words"
    )


def _shift(bound: float, bits: int, members: int) -> int:
    """The largest shift <= MAX_SHIFT with ceil(bound) * 2^shift + members <= 2^(bits-1), or
    -1: then `members` roundings of half a step cannot carry the sum past the signed range.
    Exact integer arithmetic: float rounding near 2^63 would void the guarantee."""
    room = 2 ** (bits - 1) - members
    return min(MAX_SHIFT, (room // max(math.ceil(bound), 1)).bit_length() - 1)


def _pair_stream(
    private: bytes, peer_public: bytes, context: bytes, length: int, dtype: np.dtype
) -> np.ndarray:
    """(length,) pseudo-random words shared by exactly this pair of centers: the ChaCha20
    keystream under the pair's seed for this context (a cryptographic PRG, as SecAgg's proof
    requires: a statistical one such as PCG64 can be predicted from its output), so every bit
    of every word is random."""
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=context).derive(
        _shared_secret(private, peer_public)
    )
    keystream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    return np.frombuffer(keystream.update(bytes(length * dtype.itemsize)), dtype=dtype)


@functools.lru_cache(maxsize=SHARED_SECRETS)
def _shared_secret(private: bytes, peer_public: bytes) -> bytes:
    """The X25519 secret of this pair, the same for every phase of a run: the key agreement
    is the costly step (about 0.1 ms, 30 of them per masked vector at 31 centers, 40 vectors
    per round), so a center computes it once per peer and run and derives each phase's seed
    from it. It lives only in the center's memory, like the private key it comes from."""
    try:
        peer = X25519PublicKey.from_public_bytes(peer_public)
    except ValueError:
        raise ProtocolError(
            f"roster holds an invalid public key ({len(peer_public)} bytes)"
        ) from None
    return X25519PrivateKey.from_private_bytes(private).exchange(peer)


def mask(private: bytes, roster: list[bytes], context: bytes, ring: Ring) -> np.ndarray:
    """The sum of this center's pairwise masks with every other roster member, in `ring`."""
    own = public_key(private)
    if own not in roster:
        raise ProtocolError("this center is not in the round's roster; the coordinator must re-key")
    me = roster.index(own)
    total = np.zeros(ring.size, dtype=ring.dtype)
    for j, peer in enumerate(roster):
        if j == me:
            continue
        stream = _pair_stream(private, peer, context, ring.size, ring.dtype)
        total = total + stream if me < j else total - stream  # unsigned arithmetic wraps
    return total


def encode(values: np.ndarray, ring: Ring) -> np.ndarray:
    """Fixed point: round(values * 2^shifts) as two's complement words of the ring (integers
    stay exact). A value that alone does not fit is refused; that the sum fits is the
    caller's bound (common/wire/protocol.py check_share)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    scaled = np.rint(np.ldexp(flat, ring.shifts))
    if scaled.size and np.abs(scaled).max() >= 2.0 ** (ring.bits - 1):
        worst = int(np.abs(scaled).argmax())
        raise ProtocolError(
            f"value {flat[worst]:.6g} is too large for a {ring.bits}-bit secure sum "
            f"at step 2^-{ring.shifts[worst]}"
        )
    return scaled.astype(np.int64).view(np.uint64).astype(ring.dtype)


def decode(total: np.ndarray, ring: Ring) -> np.ndarray:
    """Inverse of `encode` for a sum of encoded vectors (float64)."""
    signed = np.asarray(total, dtype=ring.dtype).view(f"int{ring.bits}")
    return np.ldexp(signed.astype(np.float64), -ring.shifts)


def masked_vector(
    values: np.ndarray, private: bytes, roster: list[bytes], context: bytes, ring: Ring
) -> np.ndarray:
    """What a center sends: encode(values) + its masks; alone it reveals nothing."""
    return encode(values, ring) + mask(private, roster, context, ring)


def unmasked_sum(vectors: list[np.ndarray], ring: Ring) -> np.ndarray:
    """The server's side: the masks cancel in the sum over the whole roster."""
    total = np.zeros(ring.size, dtype=ring.dtype)
    for vector in vectors:
        total = total + np.asarray(vector, dtype=ring.dtype)
    return decode(total, ring)


def context(run: str, phase: str, attempt: int) -> bytes:
    """Binds masks to one use, so a replayed or retried phase never reuses a mask."""
    return f"feddel/{run}/{phase}/{attempt}".encode()
