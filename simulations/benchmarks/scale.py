"""Benchmark 5, scale: how a round's wall time and bytes grow with centers and with samples.

Two series of full rounds (the real apps on the in-process engine, synthetic embeddings fed
through the centers' state folders, see `synthfed`): 31 -> 310 centers at a fixed total of
samples, and 10k -> 1M samples over 31 centers. Each reports the exponent a of
value ~ size^a (least-squares slope on log-log axes). The Lloyd rounds are fixed (tolerance 0)
so every point does the same number of phases and the exponent measures cost per phase.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from feddel.common.config import CurationConfig
from feddel.common.reports.summary import RoundSummary
from feddel.simulations.benchmarks.records import (
    Record,
    Say,
    growth_exponent,
    record,
    round_params,
)
from feddel.simulations.benchmarks.synthetic import Datasets
from feddel.simulations.benchmarks.synthfed import run_round


@dataclass(frozen=True)
class ScaleParams:
    centers: tuple[int, ...] = (31, 98, 310)
    centers_samples: int = 100_000  # total samples of the centers series
    samples: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    samples_centers: int = 31  # centers of the samples series
    d: int = 384
    lloyd_rounds: int = 3
    seed: int = 0


QUICK = ScaleParams(
    centers=(3, 4), centers_samples=400, samples=(200, 400), samples_centers=3, d=8,
    lloyd_rounds=1,
)  # fmt: skip


class _Points:
    """Rounds by (centers, samples), each run once (the two series share a point)."""

    def __init__(self, params: ScaleParams, datasets: Datasets, work: Path, say: Say) -> None:
        self.params, self.datasets, self.work, self.say = params, datasets, work, say
        self.summaries: dict[tuple[int, int], RoundSummary] = {}

    def __call__(self, centers: int, n: int) -> RoundSummary:
        if (centers, n) not in self.summaries:
            self.say(f"scale: one round, {centers} centers, {n:,} samples (in-process engine)")
            config = CurationConfig(
                kmeans_max_rounds=self.params.lloyd_rounds, kmeans_tol=0.0, seed=self.params.seed,
                run_name="scale",
            )  # fmt: skip
            data = self.datasets.get(n, self.params.d, centers)
            folder = self.work / f"scale-c{centers}-n{n}"
            try:
                self.summaries[(centers, n)] = run_round(data, folder, config)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        return self.summaries[(centers, n)]


def run(params: ScaleParams, datasets: Datasets, work: Path, say: Say) -> list[Record]:
    point = _Points(params, datasets, work, say)
    records: list[Record] = []
    series: list[tuple[str, tuple[int, ...], Callable[[int], RoundSummary]]] = [
        ("centers", params.centers, lambda c: point(c, params.centers_samples)),
        ("samples", params.samples, lambda n: point(params.samples_centers, n)),
    ]
    for axis, sizes, summary_of in series:
        summaries = [summary_of(size) for size in sizes]
        walls = [s.wall_s for s in summaries]
        traffic = [s.bytes_total for s in summaries]
        info = {axis: list(sizes), "wall_s": walls, "bytes": traffic, "d": params.d,
                "lloyd_rounds": params.lloyd_rounds, "k": summaries[0].k}  # fmt: skip
        fixed = (
            f"{params.centers_samples:,} samples in all"
            if axis == "centers"
            else f"{params.samples_centers} centers"
        )
        records += [
            record(5, f"scale_time_exponent_{axis}", growth_exponent(sizes, walls), "exponent",
                   params=info, note=f"round wall time ~ {axis}^a at {fixed}; "
                   + _TIME_NOTES[axis]),
            record(5, f"scale_bytes_exponent_{axis}", growth_exponent(sizes, traffic),
                   "exponent", params=info, note=f"bytes up + down ~ {axis}^a at {fixed}; "
                   + _BYTES_NOTES[axis]),
        ]  # fmt: skip
    for summary in point.summaries.values():
        records += _point_records(summary)
    return records


_TIME_NOTES = {
    "centers": "one process plays every center, and secure aggregation has each center mask "
    "against every other (centers^2 key agreements and mask streams per phase)",
    "samples": "per-sample work at the centers (assignment, PVI, near-duplicate removal)",
}
_BYTES_NOTES = {
    "centers": "every center sends the same k(d+1) values per Lloyd round; requests also carry "
    "the roster of all centers' keys",
    "samples": "replies do not depend on a center's number of samples",
}


def _point_records(summary: RoundSummary) -> list[Record]:
    tag = f"c{summary.centers}_n{summary.total_samples}"
    info = {**round_params(summary), "failed_centers": len(summary.failed_centers)}
    return [
        record(5, f"scale_round_s_{tag}", summary.wall_s, "s", params=info),
        record(5, f"scale_bytes_{tag}", summary.bytes_total, "bytes", params=info),
    ]
