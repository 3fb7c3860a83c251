"""What every benchmark returns: records with a value, a unit, a target and whether it was met.

A ratio record keeps both sides (`measured` and `reference`, measured in the same run), so a
reader and a test can check value == measured / reference. `bench.json` is the list of records;
`bench.md` is the same as a Markdown table, the machine line on top and the notes below.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from feddel.common.reports.summary import RoundSummary

Say = Callable[[str], None]  # progress lines for the person waiting


class Target(NamedTuple):
    """A bound on a value: `op` is "<=", ">=" or "=="."""

    op: str
    bound: float

    def met(self, value: float) -> bool:
        if self.op == "<=":
            return value <= self.bound
        if self.op == ">=":
            return value >= self.bound
        return math.isclose(value, self.bound, rel_tol=1e-9, abs_tol=1e-12)

    def __str__(self) -> str:
        return f"{self.op} {_number(self.bound)}"


@dataclass(frozen=True)
class Record:
    """One number of the suite; `benchmark` is the issue's numbering (1-5)."""

    benchmark: int
    name: str
    value: float
    unit: str
    target: str | None = None  # e.g. "<= 1.02"; None: reported without a target
    met: bool | None = None  # None when there is no target
    note: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    measured: float | None = None  # ratios: value == measured / reference
    reference: float | None = None

    def to_json(self) -> dict[str, Any]:
        """Every field; `measured` and `reference` only on ratios."""
        row = asdict(self)
        return {k: v for k, v in row.items() if v is not None or k not in _RATIO_ONLY}


_RATIO_ONLY = ("measured", "reference")


def record(
    benchmark: int,
    name: str,
    value: float,
    unit: str,
    target: Target | None = None,
    *,
    note: str = "",
    params: dict[str, Any] | None = None,
) -> Record:
    """A plain measurement; `met` follows from the target."""
    if not math.isfinite(value):
        raise ValueError(f"benchmark record {name} has a non-finite value {value}")
    return Record(
        benchmark,
        name,
        float(value),
        unit,
        None if target is None else str(target),
        None if target is None else bool(target.met(value)),
        note,
        dict(params or {}),
    )


def ratio(
    benchmark: int,
    name: str,
    measured: float,
    reference: float,
    target: Target | None = None,
    *,
    note: str = "",
    params: dict[str, Any] | None = None,
) -> Record:
    """measured / reference, both from this run, kept in the record beside the ratio."""
    if reference <= 0:
        raise ValueError(f"benchmark record {name}: reference {reference} must be > 0")
    base = record(benchmark, name, measured / reference, "ratio", target, note=note, params=params)
    return Record(**{**asdict(base), "measured": float(measured), "reference": float(reference)})


def growth_exponent(sizes: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log(value) on log(size): value ~ size ** exponent."""
    if len(sizes) != len(values) or len(sizes) < 2 or min(*sizes, *values) <= 0:
        raise ValueError("growth_exponent needs >= 2 positive (size, value) pairs")
    xs = [math.log(s) for s in sizes]
    ys = [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("growth_exponent needs at least two different sizes")
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


class Stopwatch:
    """`with Stopwatch() as watch: ...; watch.seconds` (perf_counter)."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *_exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPUs, memory, torch, GPU, current load."""
    import numpy
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line(info: dict[str, Any]) -> str:
    gpu = info.get("gpu") or "no GPU"
    return (
        f"{info['cpus']} CPUs ({info['cpu_model']}), {info['memory_gb']} GB RAM, {gpu}; "
        f"Python {info['python']}, numpy {info['numpy']}, torch {info['torch']} "
        f"({info['torch_threads']} threads); load average (1/5/15 min) at start "
        f"{'/'.join(str(v) for v in info['load_average'])}"
        + (
            f", at end {'/'.join(str(v) for v in info['load_average_end'])}"
            if "load_average_end" in info
            else ""
        )
    )


def markdown(records: Sequence[Record], info: dict[str, Any], seconds: float) -> str:
    """bench.md: machine line, one table of every record, the notes under it."""
    lines = [
        "# FedDEL benchmarks",
        "",
        f"Machine: {machine_line(info)}. Suite wall time {seconds / 60:.1f} min.",
        "",
        "| # | measure | value | unit | target | met |",
        "|---:|---|---:|---|---|---|",
    ]
    for r in records:
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(
            f"| {r.benchmark} | {r.name} | {_number(r.value)} | {r.unit} "
            f"| {r.target or ''} | {met} |"
        )
    notes = [f"- `{r.name}`: {r.note}" for r in records if r.note]
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    """Readable numbers: thousands separators, 3 significant digits below 100."""
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def round_params(summary: RoundSummary) -> dict[str, Any]:
    """What a benchmark record keeps of a curation round: its size, result and traffic."""
    info: dict[str, Any] = {
        "centers": summary.centers, "samples": summary.total_samples,
        "selected": summary.selected, "k": summary.k, "kmeans_rounds": summary.kmeans_rounds,
        "wall_s": summary.wall_s,
    }  # fmt: skip
    if summary.bytes_up is not None and summary.bytes_down is not None:
        info["bytes_up"] = summary.bytes_up["total"]
        info["bytes_down"] = summary.bytes_down["total"]
    if summary.phase_seconds is not None:
        info["phase_seconds"] = {k: round(v, 2) for k, v in summary.phase_seconds.items()}
    return info
