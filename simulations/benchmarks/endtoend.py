"""Benchmark 4, end to end: the demo federation curated over Flower's simulation engine against
the centralized reference doing the same computation.

Both read the same embedding caches, warmed by one untimed centralized run first, so both
measure curation (scan, hash, decode for the quality flags, cached embeddings, k-means, scoring,
selection, outputs), not the first embedding. The federated time is the whole `run_federated`
call: Ray's start and stop, one virtual SuperNode per center, every phase's messages. The
in-process engine (same apps, no Ray) is reported beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from feddel.common.config import CurationConfig
from feddel.simulations.benchmarks.records import (
    Record,
    Say,
    Stopwatch,
    Target,
    ratio,
    record,
    round_params,
)
from feddel.simulations.centralized import run_centralized
from feddel.simulations.federated import run_federated
from feddel.simulations.layout import FEDERATION_FILE
from feddel.simulations.synth import generate_federation

TARGET = Target("<=", 1.5)


@dataclass(frozen=True)
class EndToEndParams:
    centers: int = 31
    scale: str = "demo"
    size: int = 64
    seed: int = 0
    engines: tuple[str, ...] = ("ray", "inprocess")


QUICK = EndToEndParams(centers=3, engines=("inprocess",))


def demo_data(folder: Path, params: EndToEndParams, say: Say) -> Path:
    """The federation to curate: generated once under `folder`, reused when it matches."""
    manifest = folder / FEDERATION_FILE
    wanted = {"seed": params.seed, "scale": params.scale, "size": params.size}
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        if {key: found.get(key) for key in wanted} == wanted and len(found["centers"]) == (
            params.centers
        ):
            return folder
    say(f"generating the {params.scale} federation ({params.centers} centers) under {folder}")
    generate_federation(
        folder, centers=params.centers, scale=params.scale, seed=params.seed, size=params.size
    )
    return folder


def run(params: EndToEndParams, folder: Path, say: Say, data: Path | None = None) -> list[Record]:
    """`folder` keeps the generated federation and the centers' caches between suite runs."""
    data = data or demo_data(folder / "data", params, say)
    state = folder / "state"
    config = CurationConfig(seed=params.seed)
    say("end-to-end: warming the embedding caches (one centralized run, untimed)")
    run_centralized(data, folder / "warmup", config, state_root=state)
    say("end-to-end: centralized reference")
    with Stopwatch() as central:
        reference = run_centralized(data, folder / "centralized", config, state_root=state)
    records = [record(4, "e2e_centralized_s", central.seconds, "s", params=round_params(reference))]
    for engine in params.engines:
        say(f"end-to-end: federated round, {engine} engine")
        with Stopwatch() as watch:
            summary = run_federated(
                data, folder / f"federated-{engine}", config, engine=engine, state_root=state
            )
        info = round_params(summary)
        records += [
            record(4, f"e2e_federated_{engine}_s", watch.seconds, "s", params=info),
            ratio(4, f"e2e_overhead_{engine}", watch.seconds, central.seconds,
                  TARGET, params=info, note=_overhead_note(engine, summary.wall_s)),
            *phase_records(engine, summary.phase_seconds or {}, watch.seconds - summary.wall_s),
        ]  # fmt: skip
    return records


def phase_records(engine: str, seconds: dict[str, float], outside: float) -> list[Record]:
    """Where a federated run's time goes: each phase's wall time at the coordinator (its
    requests out, the centers' work, the replies in), and what lies outside the round (the
    engine's start and stop, gathering the manifests)."""
    rows = [
        record(4, f"e2e_{engine}_phase_{phase}_s", value, "s")
        for phase, value in sorted(seconds.items(), key=lambda item: -item[1])
    ]
    return [*rows, record(4, f"e2e_{engine}_outside_round_s", max(outside, 0.0), "s")]


def _overhead_note(engine: str, round_s: float) -> str:
    return (
        f"the whole run_federated call ({engine} engine) over the whole run_centralized call, "
        f"same caches; the coordinator's round took {round_s:.1f} s (its phases below). The "
        "reference is one process over pooled data: what federating adds on top is per "
        "message (40 secure-sum phases of 31 centers for 20 Lloyd rounds, each center "
        "re-masking its vector for 30 peers), the centers' reports, and for Ray the start of "
        "the cluster and of each actor process (importing torch again)"
    )
