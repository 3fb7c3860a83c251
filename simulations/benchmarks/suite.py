"""The five benchmarks of the issue, run in order, written as bench.json and bench.md.

Full sizes by default (about 20-30 minutes on 2 cores); `quick` shrinks every size so the suite
runs in seconds (the tests use it). Large intermediate files (synthetic embeddings, centers'
state folders) live under OUT/work and are removed at the end unless kept; the demo federation
of benchmark 4 and its caches stay under OUT/endtoend, so a re-run skips generating them.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from feddel.common.errors import ConfigError
from feddel.common.io import atomic_write_text, write_json
from feddel.simulations.benchmarks import (
    center_scoring,
    embedding,
    endtoend,
    federated_kmeans,
    scale,
)
from feddel.simulations.benchmarks.records import (
    Record,
    Say,
    Stopwatch,
    Target,
    machine,
    machine_line,
)
from feddel.simulations.benchmarks.records import markdown as render_markdown
from feddel.simulations.benchmarks.records import record as make_record
from feddel.simulations.benchmarks.synthetic import Datasets

NAMES = {
    1: "embedding throughput",
    2: "federated vs centralized k-means",
    3: "scoring + selection at a 1M-sample center",
    4: "end to end over Flower's simulation engine",
    5: "scale: centers and samples",
}
SUITE_TARGET = Target("<=", 30 * 60.0)  # the issue: all five in under 30 minutes on 2 cores
JSON_FILE, MARKDOWN_FILE = "bench.json", "bench.md"

log = logging.getLogger(__name__)


class SuiteParams(NamedTuple):
    embedding: embedding.EmbedParams
    kmeans: federated_kmeans.KMeansParams
    center: center_scoring.CenterParams
    endtoend: endtoend.EndToEndParams
    scale: scale.ScaleParams


FULL = SuiteParams(
    embedding.EmbedParams(), federated_kmeans.KMeansParams(), center_scoring.CenterParams(),
    endtoend.EndToEndParams(), scale.ScaleParams(),
)  # fmt: skip
QUICK = SuiteParams(
    embedding.QUICK, federated_kmeans.QUICK, center_scoring.QUICK, endtoend.QUICK, scale.QUICK
)


class SuiteResult(NamedTuple):
    records: list[Record]
    seconds: float
    json_path: Path
    markdown_path: Path


def parse_only(text: str) -> tuple[int, ...]:
    """Benchmark numbers from text: "1,3" -> (1, 3); each must name a benchmark."""
    try:
        picked = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        picked = ()
    if not picked or any(n not in NAMES for n in picked):
        raise ConfigError(f"--only {text!r} must list benchmark numbers from 1-5, e.g. --only 2,3")
    return picked


def run_suite(
    out: Path,
    params: SuiteParams,
    only: Sequence[int],
    say: Say,
    *,
    data: Path | None = None,
    keep_work: bool = False,
) -> SuiteResult:
    """Run the chosen benchmarks; write OUT/bench.json and OUT/bench.md; return the records."""
    out = Path(out)
    work = out / "work"
    info = machine()
    say(f"machine: {machine_line(info)}")
    datasets = Datasets(work / "embeddings", seed=0)
    runners: dict[int, Callable[[], list[Record]]] = {
        1: lambda: embedding.run(params.embedding, work, say),
        2: lambda: federated_kmeans.run(params.kmeans, datasets, say),
        3: lambda: center_scoring.run(params.center, datasets, say),
        4: lambda: endtoend.run(params.endtoend, out / "endtoend", say, data),
        5: lambda: scale.run(params.scale, datasets, work, say),
    }
    records: list[Record] = []
    try:
        with Stopwatch() as suite:
            for number in only:
                say(f"benchmark {number}: {NAMES[number]}")
                with Stopwatch() as watch:
                    records += _guarded(number, runners[number], say)
                records.append(make_record(number, f"benchmark_{number}_s", watch.seconds, "s"))
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
    info["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    complete = tuple(only) == tuple(NAMES)
    records.append(
        make_record(
            0, "suite_s", suite.seconds, "s", SUITE_TARGET if complete else None,
            note="wall time of the whole suite" if complete else "a subset of the suite ran",
            params={"benchmarks": list(only)},
        )
    )  # fmt: skip
    machine_record = make_record(
        0, "machine", float(info["cpus"]), "CPUs", note=machine_line(info), params=info
    )
    json_path = write_json(out / JSON_FILE, [r.to_json() for r in [machine_record, *records]])
    md_path = atomic_write_text(out / MARKDOWN_FILE, render_markdown(records, info, suite.seconds))
    return SuiteResult(records, suite.seconds, json_path, md_path)


def _guarded(number: int, runner: Callable[[], list[Record]], say: Say) -> list[Record]:
    """The benchmark's records, or one failed record naming the error: a crash in one
    benchmark must not throw away the minutes the others took."""
    try:
        return runner()
    except Exception as exc:  # reported in bench.json/bench.md and by the exit code
        log.exception("benchmark %d failed", number)
        say(f"benchmark {number} failed: {type(exc).__name__}: {exc}")
        return [
            Record(number, f"benchmark_{number}_error", 0.0, "", "completes", False,
                   f"{type(exc).__name__}: {exc}")
        ]  # fmt: skip
