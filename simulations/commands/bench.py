"""`feddel-sim bench`: the benchmark suite (simulations/benchmarks/), JSON and Markdown out."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from feddel.common.cliutil import EXIT_FAILED, EXIT_OK, console
from feddel.common.io import require_writable_folder
from feddel.simulations.benchmarks import gpu
from feddel.simulations.benchmarks.gpu import run_gpu_check
from feddel.simulations.benchmarks.suite import FULL, NAMES, QUICK, parse_only, run_suite


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for bench.json, bench.md (and work files)"
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="tiny sizes: every benchmark in seconds (checks the suite, not the machine)",
    )  # fmt: skip
    parser.add_argument(
        "--only", type=parse_only, default=tuple(NAMES), metavar="N[,N...]",
        help="run only these benchmarks: "
        + "; ".join(f"{n} {name}" for n, name in NAMES.items()),
    )  # fmt: skip
    parser.add_argument(
        "--data", type=Path, metavar="DIR",
        help="benchmark 4 curates this federation instead of generating the demo one",
    )  # fmt: skip
    parser.add_argument(
        "--keep-work", action="store_true",
        help="keep OUT/work (synthetic embeddings, centers' state folders) for inspection",
    )  # fmt: skip
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when any target is missed (for CI gates)"
    )
    parser.add_argument(
        "--gpu", action="store_true",
        help="the GPU check instead of the suite: benchmark 1 and one demo cell on CUDA with "
        "autocast (about 5 minutes on a data-center GPU), written to OUT/gpu-check.json and "
        "gpu-check.md; without a CUDA device it says why and exits 0",
    )  # fmt: skip


def bench_run(args: argparse.Namespace) -> int:
    require_writable_folder(args.out, "--out")
    started = time.monotonic()

    def say(line: str) -> None:
        minutes, seconds = divmod(int(time.monotonic() - started), 60)
        console.print(f"[dim][{minutes:02d}:{seconds:02d}][/] {line}")

    if args.gpu:
        records = run_gpu_check(args.out, say, quick=args.quick)
        if records is not None:
            console.print((args.out / gpu.MARKDOWN_FILE).read_text(), markup=False)
        console.print(f"records: {args.out / gpu.JSON_FILE}")
        return EXIT_OK

    result = run_suite(
        args.out, QUICK if args.quick else FULL, args.only, say,
        data=args.data, keep_work=args.keep_work,
    )  # fmt: skip
    console.print(result.markdown_path.read_text(), markup=False)
    missed = [r.name for r in result.records if r.met is False]
    failed = [r.name for r in result.records if r.name.endswith("_error")]
    console.print(f"records: {result.json_path}   table: {result.markdown_path}")
    if missed:
        console.print(f"[yellow]targets missed:[/] {', '.join(missed)}")
    if failed or (args.strict and missed):
        return EXIT_FAILED
    return EXIT_OK
