"""`feddel-sim compare`: curate, pre-train and evaluate every method x budget x seed.

It runs simulations/pipeline.py on a simulated federation, one Flower run for all cells, and
write RUN/results.{csv,md,png}. A finished cell is kept on disk, so a killed run started again
with the same command continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from flwr.serverapp import Grid, ServerApp
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from feddel.common.cliutil import EXIT_OK, console
from feddel.common.config import CurationConfig, parse_overrides
from feddel.common.curation.methods import FEDDEL, FULL, MEDDEL, METHOD_NAMES, RANDOM, method_named
from feddel.common.errors import ConfigError, RunFailed
from feddel.common.io import require_writable_folder
from feddel.common.models.segmentation import HeadConfig
from feddel.server.training.pretrain import CENTER_WEIGHTINGS
from feddel.simulations.commands.shards import add_parallel_argument, run_in_shards
from feddel.simulations.federated import ENGINES, run_apps, worker_threads
from feddel.simulations.layout import center_dirs
from feddel.simulations.pipeline import (
    CURATION_ENCODERS,
    SCRATCH,
    Cell,
    Pipeline,
    PipelineSettings,
    Row,
    discard_results,
)
from feddel.simulations.results import write_results
from feddel.simulations.science.controls import CONTROLS
from feddel.simulations.science.paired import (
    NEGATIVE_CONTROLS,
    PRIMARY,
    standard_comparisons,
)


def pipeline_flags(settings: PipelineSettings) -> list[str]:
    """The flags of add_pipeline_arguments that give `settings` (a caller's fixed settings as
    the command line of `compare`)."""
    flags = [
        "--rounds", str(settings.rounds), "--local-steps", str(settings.local_steps),
        "--batch-size", str(settings.batch_size),
        "--centers-per-round", str(settings.centers_per_round),
        "--warmup-rounds", str(settings.warmup_rounds), "--lr", repr(settings.lr),
        "--local-lr", repr(settings.local_lr), "--center-weighting", settings.center_weighting,
        "--curation-encoder", settings.curation_encoder,
        "--head-steps", str(settings.head.steps), "--head-repeats", str(settings.head.repeats),
    ]  # fmt: skip
    switches = {"fedadam": settings.fedadam, "fast": settings.fast,
                "finetune": settings.head.finetune}  # fmt: skip
    return flags + [f"--{'' if on else 'no-'}{name}" for name, on in switches.items()]


def pipeline_settings(args: argparse.Namespace) -> PipelineSettings:
    """The settings the flags of add_pipeline_arguments gave (pipeline_flags' inverse)."""
    return PipelineSettings(
        rounds=args.rounds,
        local_steps=args.local_steps,
        batch_size=args.batch_size,
        centers_per_round=args.centers_per_round,
        warmup_rounds=args.warmup_rounds,
        lr=args.lr,
        fedadam=args.fedadam,
        local_lr=args.local_lr,
        center_weighting=args.center_weighting,
        head=HeadConfig(steps=args.head_steps, repeats=args.head_repeats, finetune=args.finetune),
        curation_encoder=args.curation_encoder,
        fast=args.fast,
    )


def add_pipeline_arguments(
    parser: argparse.ArgumentParser, defaults: PipelineSettings | None = None
) -> None:
    """Pre-training and evaluation flags shared by `compare` and `demo` (with its defaults)."""
    defaults = defaults or PipelineSettings()
    parser.add_argument(
        "--rounds", type=int, default=defaults.rounds,
        help=f"federated MAE rounds per cell (default {defaults.rounds})",
    )  # fmt: skip
    parser.add_argument(
        "--local-steps", type=int, default=defaults.local_steps,
        help="optimizer steps per center per round; rounds x local-steps is the same for every "
        f"budget (compute-matched; default {defaults.local_steps})",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size,
        help=f"images per local MAE step at each center (default {defaults.batch_size}; under "
        "FedSGD a step's batch is this times --centers-per-round)",
    )  # fmt: skip
    parser.add_argument(
        "--centers-per-round", type=int, default=defaults.centers_per_round,
        help="centers drawn to train in each round, from those holding training images; 0 = "
        f"all (default {defaults.centers_per_round}: on shared CPUs few centers with more "
        "local steps learn faster)",
    )  # fmt: skip
    parser.add_argument(
        "--warmup-rounds", type=int, default=defaults.warmup_rounds,
        help="rounds of the MAE warm-up on a uniform sample that gives curation its encoder "
        f"(default {defaults.warmup_rounds})",
    )  # fmt: skip
    parser.add_argument(
        "--lr", type=float, default=defaults.lr, help=f"MAE peak learning rate ({defaults.lr:g})"
    )
    parser.add_argument(
        "--fedadam", action=argparse.BooleanOptionalAction, default=defaults.fedadam,
        help="FedAdam: centers take --local-steps plain SGD steps at --local-lr and the server "
        "steps MAE's AdamW (--lr) with their averaged update. With --local-steps 1 this is "
        "FedSGD with a server Adam: a round per optimizer step, each step's batch mixed "
        "across centers (default: FedAvg)",
    )  # fmt: skip
    parser.add_argument(
        "--local-lr", type=float, default=defaults.local_lr,
        help=f"the centers' SGD learning rate under --fedadam (default {defaults.local_lr:g})",
    )  # fmt: skip
    parser.add_argument(
        "--center-weighting", choices=CENTER_WEIGHTINGS, default=defaults.center_weighting,
        help="how each round's centers weigh in the average: by their training images "
        "(default, FedAvg) or equally (a center-balanced objective)",
    )  # fmt: skip
    parser.add_argument(
        "--curation-encoder", choices=CURATION_ENCODERS, default=defaults.curation_encoder,
        help="what curation embeds with: the seed's MAE warm-up on a uniform sample (default) "
        "or its random init. Never a cell's starting point: every cell pre-trains from the "
        "seed's random init",
    )  # fmt: skip
    parser.add_argument(
        "--fast", action=argparse.BooleanOptionalAction, default=defaults.fast,
        help="pre-train with the fast exact path: FedSGD with a server Adam computed in one "
        "process, no wire (the same gradients as the federated run, tested). Needs --fedadam "
        "--local-steps 1 --local-lr 1. For comparisons of many seeds on few cores; curation "
        "and evaluation still run federated",
    )  # fmt: skip
    parser.add_argument(
        "--head-steps", type=int, default=defaults.head.steps,
        help=f"segmentation head training steps (default {defaults.head.steps})",
    )  # fmt: skip
    parser.add_argument(
        "--head-repeats", type=int, default=defaults.head.repeats,
        help="heads trained per center and encoder (head seeds seed, seed+1, ...), their mIoU "
        "averaged: one head's mIoU varies by ~0.01 with its init and batches, as much as the "
        f"effects compared (default {defaults.head.repeats})",
    )  # fmt: skip
    parser.add_argument(
        "--finetune", action=argparse.BooleanOptionalAction, default=defaults.head.finetune,
        help="fine-tune the encoder with the head (default: frozen encoder)",
    )  # fmt: skip
    parser.add_argument(
        "--engine", choices=ENGINES, default="inprocess",
        help="simulation engine: in-process (default; the same messages, no Ray) or Ray",
    )  # fmt: skip
    parser.add_argument(
        "--fresh", action="store_true",
        help="discard the cells, warm-ups, center state and results that earlier runs left in "
        "the output folder, then start over (its data/ is kept). Without it, finished cells are "
        "reused when settings and code match, and refused when they do not",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a curation setting, e.g. --set k=64 (list: feddel-coordinator config)",
    )  # fmt: skip


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="federation (feddel-sim data)")
    parser.add_argument("--out", type=Path, required=True, help="run folder for results.*")
    parser.add_argument(
        "--budgets", type=_floats, default=[0.05, 0.2, 1.0],
        help="comma-separated budgets (default 0.05,0.2,1.0)",
    )  # fmt: skip
    parser.add_argument(
        "--methods", type=_methods, default=[RANDOM.name, MEDDEL.name, FEDDEL.name],
        help=f"comma-separated, from {', '.join(METHOD_NAMES)} (default random,meddel,feddel); "
        "`full` runs once, at R = 1. Controls chosen from the simulation's truth at the same "
        f"R: {', '.join(CONTROLS)} (docs/does-curation-pay.md)",
    )  # fmt: skip
    add_seed_arguments(parser, seeds=3)
    add_parallel_argument(parser, default=1)
    add_pipeline_arguments(parser)


def add_seed_arguments(parser: argparse.ArgumentParser, seeds: int) -> None:
    """--seeds, --first-seed and --shard, shared by `compare` and `demo`."""
    parser.add_argument(
        "--seeds", type=int, default=seeds, help=f"how many seeds (default {seeds})"
    )
    parser.add_argument(
        "--first-seed", type=int, default=0,
        help="seeds run from this one: FIRST..FIRST+N-1 (default 0). Pilots take seeds apart "
        "from the final table's, so that choices made on a pilot are tested on fresh seeds",
    )  # fmt: skip
    parser.add_argument(
        "--shard", type=_shard, default=(1, 1), metavar="K/N",
        help="run only the seeds s with s mod N = K-1, so that N commands, identical but for "
        "K, run side by side into one --out (a simulated federation keeps about one core busy). "
        "Each writes the table of every cell finished so far: the last to finish writes the "
        "whole table, and rerunning without --shard rewrites it (default 1/1: every seed)",
    )  # fmt: skip


def shard_seeds(args: argparse.Namespace) -> list[int]:
    """The seeds this command runs (checked: --seeds, --first-seed, --shard, --fresh)."""
    if args.seeds < 1 or args.first_seed < 0:
        raise ConfigError(f"--seeds {args.seeds} must be >= 1 and --first-seed >= 0")
    shard, shards = args.shard
    everyone = range(args.first_seed, args.first_seed + args.seeds)
    seeds = [seed for seed in everyone if seed % shards == shard - 1]
    if not seeds:
        raise ConfigError(
            f"--shard {shard}/{shards} holds none of the {args.seeds} seeds; "
            f"use at most {args.seeds} shards"
        )
    if args.fresh and shards > 1:
        raise ConfigError(
            "--fresh with --shard would let each shard discard the cells of the others; "
            "start the shards on an empty --out instead"
        )
    return seeds


def compare_run(args: argparse.Namespace) -> int:
    require_writable_folder(args.out, "--out")
    seeds = shard_seeds(args)
    run_in_shards(args, args.out)  # with --parallel: the shards run the cells, this assembles
    shard, shards = args.shard
    cells = list(
        dict.fromkeys(
            cell_of(method, budget, seed)
            for seed in seeds
            for method in args.methods
            for budget in args.budgets
        )
    )
    rows = run_pipeline(args, args.data, args.out, cells, keep_earlier=True)
    if shards > 1:
        console.print(
            f"shard {shard}/{shards} ran seeds {', '.join(map(str, seeds))}; the table also "
            "holds the cells other shards had finished"
        )
    console.print(results_table(rows, "comparison"))
    console.print(paired_summary(rows))
    console.print(f"results: {args.out}/results.csv, results.md, results.png")
    return EXIT_OK


def paired_summary(rows: list[Row]) -> str:
    """The primary comparison and the controls, one line each (results.md has them all)."""
    lines = []
    for comparison in standard_comparisons(rows):
        headline = (comparison.first, comparison.second) == PRIMARY or (
            comparison.first[0] == "oracle" and comparison.second[0] in NEGATIVE_CONTROLS
        )
        if headline and comparison.n >= 2:
            low, high = comparison.interval
            lines.append(
                f"{comparison.label}: {comparison.mean:+.4f} mIoU over {comparison.n} seeds, "
                f"95% CI [{low:+.4f}, {high:+.4f}] (paired t)"
            )
    return "\n".join(lines) or "(paired differences with CIs need 2 seeds or more)"


def run_pipeline(
    args: argparse.Namespace, data: Path, out: Path, cells: list[Cell], keep_earlier: bool = False
) -> list[Row]:
    """Run every cell in one simulated Flower run; write and return the rows. `keep_earlier`
    adds the cells that earlier runs finished in `out` (same settings: Pipeline checks), so
    `compare --methods optidel --budgets 0.05` after a larger comparison extends its table."""
    settings = pipeline_settings(args)
    base = CurationConfig.from_run_config(parse_overrides(args.set))
    if args.fresh:
        for path in discard_results(out):
            console.print(f"--fresh: removed {path}")
    centers = center_dirs(data)
    state_root = out / "state"
    rows: list[Row] = []
    total = len(cells) + len({cell.seed for cell in cells})  # + one scratch row per seed
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("cells (curate, pre-train, evaluate)", total=total)

        def on_row(row: Row) -> None:
            rows.append(row)
            bar.update(task, advance=1)
            bar.console.print(
                f"{row['method']} {row['budget']:g} seed {row['seed']}: R {row['R']:.3f}, "
                f"mIoU {row['mIoU']:.4f}, NormDEL {row['NormDEL']:.4f}"
            )

        app = ServerApp()

        @app.main()
        def main(grid: Grid, _context: Any) -> None:
            Pipeline(grid, base, settings, out, centers, state_root, on_row).run(cells)

        if args.engine == "inprocess":
            torch.set_num_threads(1)  # the simulated centers run side by side on threads
        run_apps(app, centers, state_root, args.engine, workers=worker_threads(base.phase_timeout))
    if len(rows) != total:
        raise RunFailed(
            f"the simulated run stopped after {len(rows)} of {total} cells (see the log above); "
            "run the same command again to resume from the finished cells"
        )
    if keep_earlier:
        rows += earlier_rows(out, rows)
    write_results(rows, out, f"FedDEL comparison on {data.parent.name}/{data.name}")  # demo/data
    return rows


def earlier_rows(out: Path, rows: list[Row]) -> list[Row]:
    """Rows of finished cells in `out` that are not among `rows`, by seed and cell name."""
    have = {Cell(r["method"], r["budget"], r["seed"]).name for r in rows}
    found = sorted(
        (json.loads(path.read_text()) for path in out.glob("cells/*/row.json")),
        key=lambda r: (r["seed"], Cell(r["method"], r["budget"], r["seed"]).name),
    )
    return [r for r in found if Cell(r["method"], r["budget"], r["seed"]).name not in have]


def results_table(rows: list[Row], title: str) -> Table:
    table = Table(title=title)
    for column in ("method", "budget", "seed", "R", "mIoU", "DEL", "NormDEL"):
        table.add_column(column, justify="right")
    table.add_column("disruptive", justify="right")
    table.add_column("distinct videos / sel.", justify="right")
    table.add_column("modes", justify="right")
    for row in rows:
        quality = (
            ("-", "-", "-")
            if row["method"] == SCRATCH
            else (
                f"{row.get('quality_disruptive_rate', 0):.2%}",
                f"{row.get('quality_distinct_videos_per_selected', 0):.3f}",
                f"{row.get('quality_mode_coverage', 0):.0%}",
            )
        )
        table.add_row(
            row["method"], f"{row['budget']:g}", str(row["seed"]), f"{row['R']:.3f}",
            f"{row['mIoU']:.4f}", f"{row['DEL']:.4f}", f"{row['NormDEL']:.4f}", *quality,
        )  # fmt: skip
    return table


def _floats(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers like 0.05,0.2,1.0") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: budgets must lie in (0, 1]")
    return values


def _shard(text: str) -> tuple[int, int]:
    try:
        shard, shards = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected K/N, e.g. 2/3") from None
    if not 1 <= shard <= shards:
        raise argparse.ArgumentTypeError(f"{text!r}: K/N needs 1 <= K <= N, e.g. 2/3")
    return shard, shards


def cell_of(method: str, budget: float, seed: int) -> Cell:
    """Every method keeps everything at budget 1, so one `full` cell stands for all of them."""
    if method not in CONTROLS:
        budget = method_named(method).budget_for(budget)
    return Cell(FULL.name, 1.0, seed) if budget >= 1.0 else Cell(method, budget, seed)


def _methods(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    known = (*METHOD_NAMES, *CONTROLS)
    unknown = [v for v in values if v not in known]
    if not values or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: methods must come from {', '.join(known)}")
    return values
