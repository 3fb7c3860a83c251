"""`feddel-sim demo`: the whole pipeline on the built-in 31-center demo federation at 5%.

FedDEL, random and the full pool (R = 1) each go through federated MAE pre-training and
downstream segmentation, after one shared warm-up; the random-init encoder is the floor. The
table and `OUT/results.csv` have the same columns as `feddel-sim compare`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from feddel.common.cliutil import EXIT_OK, console
from feddel.common.curation.methods import FEDDEL, FULL, RANDOM
from feddel.common.io import require_writable_folder
from feddel.simulations.commands.compare import (
    add_pipeline_arguments,
    cell_of,
    results_table,
    run_pipeline,
)
from feddel.simulations.commands.curate import federation_table
from feddel.simulations.layout import FEDERATION_FILE
from feddel.simulations.synth import generate_federation

DEMO_BUDGET = 0.05
DEMO_METHODS = (FEDDEL.name, RANDOM.name, FULL.name)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="demo folder (default runs/demo)"
    )
    parser.add_argument("--seed", type=int, default=0, help="data and run seed (default 0)")
    add_pipeline_arguments(parser)


def demo_run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    require_writable_folder(args.out, "--out")
    data = args.out / "data"
    _ensure_demo_data(data, args.seed)
    console.print(f"demo federation: {data}")
    cells = [cell_of(method, DEMO_BUDGET, args.seed) for method in DEMO_METHODS]
    rows = run_pipeline(args, data, args.out, cells)
    console.print(results_table(rows, f"demo: FedDEL vs random at {DEMO_BUDGET:.0%}, and full"))
    console.print(
        f"results: {args.out}/results.csv, results.md, results.png "
        f"({time.perf_counter() - started:.0f} s)"
    )
    return EXIT_OK


def _ensure_demo_data(data: Path, seed: int) -> None:
    """Generate the demo federation unless the same one is already there."""
    manifest = data / FEDERATION_FILE
    if manifest.is_file():
        existing = json.loads(manifest.read_text())
        if (existing.get("seed"), existing.get("scale"), existing.get("size")) == (
            seed,
            "demo",
            64,
        ):
            console.print(federation_table(existing))
            return
    console.print("generating the demo federation (31 centers, scale demo, 64 px) ...")
    federation = generate_federation(data, centers=31, scale="demo", seed=seed, size=64)
    console.print(federation_table(federation))
