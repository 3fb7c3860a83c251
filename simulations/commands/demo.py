"""`feddel-sim demo`: does curation pay? The controlled comparison of `make science`, small.

On the built-in 31-center demo federation, for each seed: the random-init encoder (`scratch`),
then the controls (the oracle selection from the simulation's truth and its disruptive-only
twin) and the primary comparison (FedDEL against random) at 5%, each pre-trained from the seed's
random init for the same steps by FedSGD with a server Adam (the fast exact path), and scored
downstream. The table, per-seed paired differences and `OUT/results.csv` have the columns of
`feddel-sim compare`; `make demo` runs the seeds side by side (`--shard`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from feddel.common.cliutil import EXIT_OK, console
from feddel.common.curation.methods import FEDDEL, RANDOM
from feddel.common.io import require_writable_folder
from feddel.simulations.commands.compare import (
    add_pipeline_arguments,
    add_seed_arguments,
    paired_summary,
    results_table,
    run_pipeline,
    shard_seeds,
)
from feddel.simulations.commands.curate import federation_table
from feddel.simulations.commands.shards import add_parallel_argument, run_in_shards
from feddel.simulations.layout import FEDERATION_FILE
from feddel.simulations.pipeline import Cell, PipelineSettings
from feddel.simulations.synth import generate_federation

DEMO_BUDGET = 0.05
DEMO_METHODS = ("oracle", "disruptive-only", RANDOM.name, FEDDEL.name)
DEMO_DATA_SEED = 0
# `make science`'s protocol (docs/does-curation-pay.md) with fewer seeds and cells
DEMO_SETTINGS = PipelineSettings(
    rounds=2000,
    local_steps=1,
    batch_size=4,
    centers_per_round=4,
    fedadam=True,
    local_lr=1.0,
    center_weighting="equal",
    curation_encoder="random-init",
    fast=True,
)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="demo folder (default runs/demo)"
    )
    add_seed_arguments(parser, seeds=2)
    add_parallel_argument(parser, default=2)
    add_pipeline_arguments(parser, DEMO_SETTINGS)


def demo_run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    require_writable_folder(args.out, "--out")
    seeds = shard_seeds(args)
    data = args.out / "data"
    _ensure_demo_data(data)
    console.print(f"demo federation: {data}")
    run_in_shards(args, args.out)  # the seeds side by side; this process then assembles
    cells = [Cell(method, DEMO_BUDGET, seed) for seed in seeds for method in DEMO_METHODS]
    rows = run_pipeline(args, data, args.out, cells, keep_earlier=True)
    console.print(results_table(rows, f"demo: controls and FedDEL vs random at {DEMO_BUDGET:.0%}"))
    console.print(paired_summary(rows))
    console.print(
        f"results: {args.out}/results.csv, results.md, results.png "
        f"({time.perf_counter() - started:.0f} s)"
    )
    return EXIT_OK


def _ensure_demo_data(data: Path) -> None:
    """Generate the demo federation unless the same one is already there."""
    manifest = data / FEDERATION_FILE
    if manifest.is_file():
        existing = json.loads(manifest.read_text())
        if (existing.get("seed"), existing.get("scale"), existing.get("size")) == (
            DEMO_DATA_SEED,
            "demo",
            64,
        ):
            console.print(federation_table(existing))
            return
    console.print("generating the demo federation (31 centers, scale demo, 64 px) ...")
    federation = generate_federation(data, centers=31, scale="demo", seed=DEMO_DATA_SEED, size=64)
    console.print(federation_table(federation))
