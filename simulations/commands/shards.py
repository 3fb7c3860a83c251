"""`--parallel N`: run a comparison's seeds as N side-by-side processes, then assemble.

A simulated federation keeps about one core busy (the centers share Python's GIL, and the fast
path trains single-threaded), so `compare` and `demo` start themselves again N times with
`--shard K/N` (each its own seeds, log in OUT/shard-K.log), wait, and then read every finished
cell back into the whole table. `--fresh` is applied once, before the shards start.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from feddel.common.cliutil import console
from feddel.common.errors import ConfigError, RunFailed
from feddel.simulations.pipeline import discard_results


def add_parallel_argument(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument(
        "--parallel", type=int, default=default, metavar="N",
        help="run the seeds as N processes side by side (--shard K/N each, logs in "
        f"OUT/shard-K.log), then assemble the table (default {default}; one per core helps)",
    )  # fmt: skip


def run_in_shards(args: argparse.Namespace, out: Path) -> bool:
    """Run this command's shards as child processes when asked to; True when it did (the
    caller then assembles from the finished cells), False when this process runs the cells."""
    if args.parallel < 1:
        raise ConfigError(f"--parallel {args.parallel} must be >= 1")
    shards = min(args.parallel, args.seeds)
    if shards == 1 or args.shard != (1, 1):
        return False
    if args.fresh:
        for path in discard_results(out):
            console.print(f"--fresh: removed {path}")
        args.fresh = False  # the assembly that follows must not discard the shards' cells
    argv = _without(args.argv, {"--fresh": 0, "--parallel": 1})
    out.mkdir(parents=True, exist_ok=True)
    logs = [out / f"shard-{k}.log" for k in range(1, shards + 1)]
    children = []
    for k, log in enumerate(logs, start=1):
        console.print(f"shard {k}/{shards}: log in {log}")
        command = [
            sys.executable,
            "-m",
            "feddel.simulations.cli",
            *argv,
            "--shard",
            f"{k}/{shards}",
        ]
        with log.open("w") as handle:
            children.append(subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT))
    try:
        codes = [child.wait() for child in children]
    except KeyboardInterrupt:
        for child in children:
            child.terminate()
        for child in children:
            child.wait()
        raise
    failed = [f"{log} (exit {code})" for log, code in zip(logs, codes, strict=True) if code]
    if failed:
        raise RunFailed(
            f"shard(s) failed: {', '.join(failed)}; fix the cause and run the same command "
            "again to resume from the finished cells"
        )
    return True


def _without(argv: list[str], flags: dict[str, int]) -> list[str]:
    """`argv` without `flags` (flag -> how many values follow it; --flag=value too)."""
    kept: list[str] = []
    skip = 0
    for item in argv:
        if skip:
            skip -= 1
        elif item in flags:
            skip = flags[item]
        elif not any(item.startswith(f"{flag}=") for flag in flags):
            kept.append(item)
    return kept
