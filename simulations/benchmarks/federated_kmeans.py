"""Benchmark 2, federated k-means against centralized k-means on the same synthetic embeddings.

Federated: what a round does, composed from the library: each center's `local_kmeans` (small
local clusters merged, `merge_small_clusters`), the coordinator's k-FED `seed_centers`, then
`lloyd_rounds` (common/curation/lloyd.py) whose two secure sums per round come from every
center's `assign` + `cluster_stats`, packed (`counts_layout`, then `lloyd_layout` for the open
cells), noised by the round's default noise-sigma, checked against the center's share of the
sum's bound (`check_share`), masked for secure summation in the ring the request fixes
(`sum_ring`, `secagg.masked_vector`) and serialized as a `CountsReply` / `LloydReply`. Centers run
one after another here; the critical path (slowest center per phase, plus the coordinator) is
what a federation whose centers compute in parallel would wait.

Centralized: scikit-learn `KMeans` (k-means++, n_init=1, at most as many Lloyd iterations as
the federated rounds may take) on the pooled rows in RAM (faiss is not installed). Both final
center sets are scored by the same function on the pooled rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import NamedTuple

import numpy as np
from sklearn.cluster import KMeans

from feddel.common.config import CurationConfig
from feddel.common.curation.kmeans import ClusterStats, assign, cluster_stats
from feddel.common.curation.lloyd import lloyd_rounds
from feddel.common.privacy import secagg
from feddel.common.privacy.cells import seed_proposal
from feddel.common.privacy.noise import add_cell_noise, add_noise, noise_context, noise_share
from feddel.common.wire.protocol import (
    CountsReply,
    LloydReply,
    Masked,
    MaskedReply,
    SeedReply,
    check_share,
    counts_layout,
    lloyd_layout,
    noise_scales,
    pack,
    record_bytes,
    roster_array,
    sum_ring,
    unpack,
)
from feddel.server.curation.aggregate import lloyd_stats, seed_centers
from feddel.simulations.benchmarks.records import Record, Say, Stopwatch, Target, ratio, record
from feddel.simulations.benchmarks.synthetic import Datasets, SyntheticSet

INERTIA_TARGET = Target("<=", 1.02)
RUN = "bench"
RING_NOTE = (
    "a Lloyd reply is one secure-aggregation vector of k(d+1) values in the integers mod 2^32, "
    "4 bytes a value like the float32 formula: pairwise masks only cancel in a modular ring, "
    "and every value of the roster's sum is bounded by the federation's N samples (counts and "
    "unit-embedding sums <= N, noise cut at 10 sigma), so a "
    "fixed-point step 2^-s with bound x 2^s < 2^31 cannot wrap; at N=1M over 31 centers sums "
    "get step 2^-11, whose rounding (31 half-steps at worst, 0.0076) stays under a quarter of "
    "the noise sigma 0.05; a sum that does not fit so goes back to 64-bit words (8 bytes); a "
    "round with cells under min-count sends only the open cells' values"
)


@dataclass(frozen=True)
class KMeansParams:
    runs: tuple[tuple[int, int], ...] = ((100_000, 100), (100_000, 1000), (1_000_000, 100))
    d: int = 384
    centers: int = 31
    local_ratio: int = 4  # k_local = ceil(k / 4), the ratio of the defaults k=32, k-local=8
    min_count: int = 10
    noise_sigma: float = CurationConfig.noise_sigma  # the round's default noise in every sum
    max_rounds: int = 20  # the round's defaults: kmeans-max-rounds, kmeans-tol
    tol: float = 1e-4
    central_max_iter: int = 20  # the same Lloyd budget as the federated rounds
    seed: int = 0


QUICK = KMeansParams(runs=((400, 4), (800, 4)), d=8, centers=8, max_rounds=3, central_max_iter=20)


class FederatedRun(NamedTuple):
    centers: np.ndarray  # (k, d) final global centroids
    rounds: int
    seconds: float  # every center in turn, plus the coordinator
    critical_seconds: float  # slowest center per phase, plus the coordinator
    reply_bytes: list[int]  # serialized LloydReply size, per center per round
    reply_values: list[int]  # the values each of those replies holds (open cells x (d + 1))
    seed_reply_bytes: int  # serialized SeedReply size (the largest)


class CentralRun(NamedTuple):
    centers: np.ndarray
    iterations: int
    seconds: float


class _MaskedSums:
    """The coordinator's two secure sums per Lloyd round (server/curation/round.py SecureLloyd)
    without the network: each center's vector is packed, noised, masked and serialized in
    turn; the sum of the masked vectors is unmasked. Times the slowest center per sum."""

    def __init__(self, shards: list[np.ndarray], params: KMeansParams):
        self.shards, self.params = shards, params
        self.privates = [secagg.generate_private_key() for _ in shards]
        self.secrets = [secagg.generate_private_key() for _ in shards]  # noise keys
        self.roster = [secagg.public_key(private) for private in self.privates]
        self.samples = sum(len(shard) for shard in shards)
        self.critical: list[float] = []
        self.reply_bytes: list[int] = []  # LloydReply sizes (the big one of each round)
        self.reply_values: list[int] = []  # and their values: fewer when cells are closed

    def _sum(self, name: str, layout: dict, reply: type[MaskedReply], values_of) -> dict:
        asked = Masked(
            run=RUN, attempt=len(self.critical), noise_sigma=self.params.noise_sigma,
            count_sigma=0.0, samples=self.samples, roster=roster_array(self.roster),
        )  # fmt: skip
        context = secagg.context(RUN, name, asked.attempt)  # never the same masks twice
        noise = noise_context(name)  # as the centers key it (common/privacy/noise.py)
        scales = noise_share(1.0, len(self.shards)) * noise_scales(layout, asked)
        ring = sum_ring(layout, asked)
        vectors, seconds = [], []
        for shard, private, secret in zip(self.shards, self.privates, self.secrets, strict=True):
            with Stopwatch() as watch:
                values = pack(layout, **values_of(shard))
                noisy = (
                    add_cell_noise(secret, noise, layout, values, scales)
                    if reply is LloydReply
                    else add_noise(secret, noise, values, scales)
                )
                check_share(layout, asked, noisy, len(shard))
                masked = secagg.masked_vector(noisy, private, self.roster, context, ring)
                message = reply(masked=masked)
                size = record_bytes(message.to_record())
            if reply is LloydReply:
                self.reply_bytes.append(size)
                self.reply_values.append(masked.size)
            vectors.append(message.masked)
            seconds.append(watch.seconds)
        with Stopwatch() as watch:
            parts = unpack(layout, secagg.unmasked_sum(vectors, ring))
        self.critical.append(max(seconds) + watch.seconds)
        return parts

    def counts(self, centers: np.ndarray) -> np.ndarray:
        k = len(centers)
        parts = self._sum("counts", counts_layout(k), CountsReply, lambda shard: {
            "count": cluster_stats(shard, assign(shard, centers), k).count})  # fmt: skip
        return np.rint(parts["count"]).astype(np.int64)

    def stats(self, cells: np.ndarray, open_cells: np.ndarray) -> ClusterStats:
        centers = cells[open_cells]
        k, d = centers.shape

        def values_of(shard: np.ndarray) -> dict[str, np.ndarray]:
            stats = cluster_stats(shard, assign(shard, centers), k)
            return {"count": stats.count, "sum": stats.sum}

        parts = self._sum("lloyd", lloyd_layout(k, d), LloydReply, values_of)
        return lloyd_stats(parts, centers)


def federated_kmeans(
    shards: list[np.ndarray], k: int, params: KMeansParams, rng: np.random.Generator
) -> FederatedRun:
    """k-FED seeding and secure-sum Lloyd rounds over `shards` (one (n_c, d) block per center)."""
    k_local = math.ceil(k / params.local_ratio)
    with Stopwatch() as total:
        seed_seconds, replies = [], {}
        for index, shard in enumerate(shards):
            with Stopwatch() as watch:
                replies[index] = _seed_reply(shard, k_local, params)
            seed_seconds.append(watch.seconds)
        with Stopwatch() as watch:
            init = seed_centers(replies, k, rng)
        sums = _MaskedSums(shards, params)
        run = lloyd_rounds(
            sums, init, params.max_rounds, params.tol, rng, min_count=params.min_count, k=k
        )
    seed_bytes = max(record_bytes(reply.to_record()) for reply in replies.values())
    critical = max(seed_seconds) + watch.seconds + sum(sums.critical)
    return FederatedRun(
        run.result.centers, run.result.rounds, total.seconds, critical, sums.reply_bytes,
        sums.reply_values, seed_bytes,
    )  # fmt: skip


def _seed_reply(shard: np.ndarray, k_local: int, params: KMeansParams) -> SeedReply:
    """What `client/handlers.py (seed)` replies: merged local centroids padded to k_local rows."""
    centroids, counts = seed_proposal(shard, k_local, params.min_count, params.seed)
    return SeedReply(centroids=centroids, counts=counts)


def centralized_kmeans(X: np.ndarray, k: int, params: KMeansParams) -> CentralRun:
    """scikit-learn KMeans (k-means++, one init) on the pooled rows X (n, d) in RAM."""
    model = KMeans(
        n_clusters=k, n_init=1, max_iter=params.central_max_iter, random_state=params.seed
    )
    with Stopwatch() as watch:
        model.fit(X)
    return CentralRun(model.cluster_centers_.astype(np.float64), int(model.n_iter_), watch.seconds)


def pooled_inertia(X: np.ndarray, centers: np.ndarray) -> float:
    """Sum of squared distances of every row of X to its nearest center (float64)."""
    return float(assign(X, centers).sqdist.astype(np.float64).sum())


def run(params: KMeansParams, datasets: Datasets, say: Say) -> list[Record]:
    """Every (N, k) of `params`; the bytes records compare replies across N and center sizes."""
    records: list[Record] = []
    bytes_by_k: dict[int, list[int]] = {}
    values_by_k: dict[int, list[int]] = {}
    for n, k in params.runs:
        data = datasets.get(n, params.d, params.centers)
        X = data.open()
        shards = [X[lo:hi] for lo, hi in pairwise(data.offsets)]
        say(f"federated k-means: N={n:,} k={k} over {params.centers} centers")
        fed = federated_kmeans(shards, k, params, np.random.default_rng(params.seed))
        say(f"centralized k-means (scikit-learn): N={n:,} k={k}")
        pooled = np.ascontiguousarray(X)
        central = centralized_kmeans(pooled, k, params)
        fed_inertia = pooled_inertia(pooled, fed.centers)
        central_inertia = pooled_inertia(pooled, central.centers)
        del pooled
        bytes_by_k.setdefault(k, []).extend(fed.reply_bytes)
        values_by_k.setdefault(k, []).extend(fed.reply_values)
        records += _run_records(n, k, params, fed, central, fed_inertia, central_inertia, data)
    for k, sizes in bytes_by_k.items():
        records += _bytes_records(k, params, sizes, values_by_k[k])
    return records


def _reply_bytes(values: int, words: type[np.unsignedinteger]) -> int:
    """The serialized size of a LloydReply of `values` words."""
    return record_bytes(LloydReply(masked=np.zeros(values, dtype=words)).to_record())


def _run_records(
    n: int,
    k: int,
    params: KMeansParams,
    fed: FederatedRun,
    central: CentralRun,
    fed_inertia: float,
    central_inertia: float,
    data: SyntheticSet,
) -> list[Record]:
    tag = f"n{n}_k{k}"
    common = {
        "n": n, "k": k, "d": params.d, "centers": params.centers,
        "k_local": math.ceil(k / params.local_ratio), "center_sizes_min_max":
        [int(data.sizes.min()), int(data.sizes.max())], "federated_rounds": fed.rounds,
        "central_iterations": central.iterations, "federated_s": round(fed.seconds, 2),
        "central_s": round(central.seconds, 2),
    }  # fmt: skip
    return [
        ratio(2, f"kmeans_inertia_ratio_{tag}", fed_inertia, central_inertia, INERTIA_TARGET,
              params=common),
        ratio(2, f"kmeans_wall_ratio_{tag}", fed.seconds, central.seconds, params=common,
              note="centers simulated one after another, secure aggregation and serialization "
              "included; the reference is scikit-learn KMeans on the pooled rows"),
        ratio(2, f"kmeans_wall_ratio_parallel_{tag}", fed.critical_seconds, central.seconds,
              params=common, note="critical path: the slowest center of each phase plus the "
              "coordinator, as when centers compute in parallel"),
    ]  # fmt: skip


def _bytes_records(
    k: int, params: KMeansParams, sizes: list[int], values: list[int]
) -> list[Record]:
    """The largest Lloyd reply (a round with the most open cells) against k(d+1) values in
    4-byte words plus the record's framing, and against the same reply in 8-byte words, the
    size before 32-bit secure sums."""
    full = k * (params.d + 1)
    largest = int(np.argmax(sizes))
    measured, uint64 = sizes[largest], _reply_bytes(values[largest], np.uint64)
    target = _reply_bytes(full, np.uint32)
    info = {
        "k": k, "d": params.d, "values": full, "float32_formula_bytes": 4 * full,
        "framing_bytes": target - 4 * full, "largest_reply_values": values[largest],
        "uint64_reply_bytes": uint64, "ratio_to_uint64": round(measured / uint64, 4),
        "replies": len(sizes),
    }  # fmt: skip
    spread = (max(sizes) - min(sizes)) / min(sizes)
    return [
        record(2, f"kmeans_reply_bytes_per_center_round_k{k}", measured, "bytes",
               Target("<=", target), note=RING_NOTE, params=info),
        record(2, f"kmeans_reply_bytes_spread_k{k}", spread, "ratio", Target("==", 0.0),
               note="(max - min) / min of the reply size over every center (sizes differ "
               "by up to 100x) and every N: independent of N", params=info),
    ]  # fmt: skip
