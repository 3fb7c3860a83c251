"""feddel-sim: everything FedDEL needs to run on one machine without real hospitals.

Each subcommand is one `Command` (its arguments and its run function) listed in `COMMANDS`;
add a subcommand by writing those two functions and appending it there.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from feddel.common.cliutil import EXIT_OK, Command, console, dispatch, run_cli
from feddel.common.cliutil import build_parser as build_parser_for
from feddel.common.errors import ConfigError
from feddel.common.io import require_writable_folder
from feddel.simulations.commands.bench import add_bench_arguments, bench_run
from feddel.simulations.commands.compare import add_compare_arguments, compare_run
from feddel.simulations.commands.curate import (
    add_curate_arguments,
    curate_run,
    federation_table,
)
from feddel.simulations.commands.demo import add_demo_arguments, demo_run
from feddel.simulations.packaged import CENTERS, build_packaged_federation
from feddel.simulations.synth import generate_federation
from feddel.simulations.synth.plan import SCALES

DESCRIPTION = """\
Simulate FedDEL on one machine. Start with `feddel-sim data --out data/fed` to generate a
synthetic endoscopy-like federation: one folder per hospital ("center") holding the image pool
that center would curate, polyp masks, a held-out labeled test split, and a truth.csv that says
for every image which video it comes from, its semantic mode, and whether it is disruptive,
an exact duplicate or a corrupt file. The truth is only for scoring a curation, never an input.
`feddel-sim data --source packages --out data/real` lays out real medical images that installed
packages ship (DICOM, NIfTI, ultrasound cine, radiographs, fundus, histology) the same way.
"""
SOURCES = ("synthetic", "packages")
_SYNTHETIC_ONLY = ("centers", "scale", "preview")


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder to create (must be empty)")
    parser.add_argument(
        "--source", choices=SOURCES, default="synthetic",
        help="synthetic: generated endoscopy-like frames (default); packages: real medical "
        "images from pydicom-data, nibabel and scikit-image, 7 centers, ~450 samples of 15 "
        "modes (CT, MR, fMRI, ultrasound, radiographs, nuclear medicine, fundus, histology)",
    )  # fmt: skip
    parser.add_argument(
        "--centers", type=int, default=None, help="number of hospitals (synthetic; default 31)"
    )
    parser.add_argument(
        "--scale",
        default=None,
        help=f"synthetic: one of {', '.join(SCALES)}: ~1.5k, ~5k or ~50k pool images over 31 "
        "centers (default demo)",
    )
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels, >= 32")
    parser.add_argument(
        "--preview",
        action="store_true",
        default=None,
        help="synthetic: also write preview.png, a labeled contact sheet",
    )


def _data_run(args: argparse.Namespace) -> int:
    require_writable_folder(args.out, "--out")
    columns = (
        TextColumn("generating centers"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    if args.source == "packages":
        given = [f"--{name}" for name in _SYNTHETIC_ONLY if getattr(args, name) is not None]
        if given:
            raise ConfigError(
                f"{', '.join(given)} only applies to --source synthetic; the packages "
                "federation has a fixed layout (drop the flag)"
            )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("centers", total=len(CENTERS) if args.source == "packages" else 31)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        if args.source == "packages":
            federation = build_packaged_federation(args.out, args.seed, args.size, progress)
        else:
            federation = generate_federation(
                args.out,
                centers=31 if args.centers is None else args.centers,
                scale=args.scale or "demo",
                seed=args.seed,
                size=args.size,
                preview=bool(args.preview),
                progress=progress,
            )
    console.print(federation_table(federation))
    console.print(f"ground truth and counts: {args.out / 'federation.json'}")
    console.print(f"per-image truth: {args.out}/<center>/truth.csv (for evaluation only)")
    if args.preview:
        console.print(f"contact sheet: {args.out / 'preview.png'}")
    return EXIT_OK


COMMANDS: tuple[Command, ...] = (
    Command(
        name="data",
        summary="generate a multi-center federation with ground truth (synthetic or real images)",
        description="Write DIR/<center>/{images,masks,test,truth.csv} and DIR/federation.json. "
        "Center sizes are heavy-tailed; every center has its own device style and mix of modes "
        "(normal, polyp, ulcer, bleeding, instrument, rare diverticulum); 15-30% of each pool "
        "is disruptive (blur, dark, overexposed, bubbles, blank). With --source packages: seven "
        "hospitals of real images from installed packages, in DICOM series, multi-frame DICOM, "
        "NIfTI volumes, PNG slices and JPEG photographs; about 7% of samples defective (blank, "
        "blur, saturated, ultrasound no-contact), 3% exact copies, one truncated file; truth.csv "
        "names each sample's series, mode, modality and defect.",
        add_arguments=_data_arguments,
        run=_data_run,
    ),
    Command(
        name="curate",
        summary="run one curation round on a simulated federation (federated or centralized)",
        description="Curate a federation made by `feddel-sim data`: every center embeds, flags "
        "and scores its own images; only aggregates reach the coordinator. Writes "
        "RUN/summary.json, "
        "RUN/selection.csv and each center's manifest under RUN/centers/<center>/. When the data "
        "has truth.csv, the selection is judged against it (and against random at the same R).",
        add_arguments=add_curate_arguments,
        run=curate_run,
    ),
    Command(
        name="compare",
        summary="curate, pre-train (federated MAE) and evaluate every method x budget x seed",
        description="For each seed the random-init encoder is scored as the floor, and the "
        "encoder curation embeds with is made once (a federated MAE warm-up on a uniform "
        "sample, or the random init). For each cell: a curation round (or, for a control, a "
        "selection from the simulation's truth), federated MAE pre-training on the selection "
        "from the seed's random init (the same init and steps for every cell), and downstream "
        "segmentation at every center with labeled data. Writes RUN/results.csv (method, "
        "budget, R, seed, mIoU, DEL, NormDEL, wall_s, curation quality, provenance), "
        "RUN/results.md (mean +- std, and with 2+ seeds paired differences with 95% CIs), "
        "RUN/results.png and RUN/paired.png. Rerun the same command to resume.",
        add_arguments=add_compare_arguments,
        run=compare_run,
    ),
    Command(
        name="demo",
        summary="the main job: the whole pipeline on the demo federation, FedDEL vs random at 5%",
        description="Generate (once) the 31-center demo federation under OUT/data, then run "
        "the pipeline of `compare` for each seed: the random-init encoder (scratch), the "
        "controls from the simulation's truth (oracle and disruptive-only) and FedDEL against "
        "random, all at 5%: federated curation with the random-init encoder, pre-training from "
        "the seed's random init by the fast exact FedSGD path (the same steps for every cell) "
        "and downstream segmentation at every center. Prints R, mIoU, DEL, NormDEL, the "
        "curation-quality measures and the paired differences with 95% CIs, and writes "
        "OUT/results.csv (the columns of `compare`). A curation round alone: `curate`.",
        add_arguments=add_demo_arguments,
        run=demo_run,
    ),
    Command(
        name="bench",
        summary="benchmarks: embedding, federated k-means, local scoring, end-to-end, scale",
        description="Run the five FedDEL benchmarks on this machine and write DIR/bench.json "
        "(records with name, value, unit, target, met) and DIR/bench.md. Each figure is a "
        "ratio against a reference measured in the same run.",
        add_arguments=add_bench_arguments,
        run=bench_run,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    return build_parser_for("feddel-sim", DESCRIPTION, COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: returns the exit code (0 ok, 2 user error)."""
    return run_cli(lambda args: dispatch(build_parser(), args), argv)


if __name__ == "__main__":  # `python -m feddel.simulations.cli`: how --parallel starts its shards
    raise SystemExit(main())
