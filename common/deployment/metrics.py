"""Prometheus metrics as a text file, for node_exporter's textfile collector.

`feddel-center status --prometheus FILE` and `feddel-coordinator status --prometheus FILE`
write gauges in Prometheus' text exposition format; run either from a timer into the folder
node_exporter reads (`--collector.textfile.directory`). The file is replaced atomically, so the
collector never reads half of it. No HTTP endpoint: a hospital server opens no extra port.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feddel.common.cliutil import console
from feddel.common.errors import ConfigError
from feddel.common.io import atomic_write_text, require_writable_file, write_json

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass(frozen=True)
class Gauge:
    """One metric: a name, what it means, and one value per label set."""

    name: str
    help: str
    samples: list[tuple[Mapping[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> Gauge:
        self.samples.append((labels, value))
        return self


def render(gauges: Iterable[Gauge]) -> str:
    """The text exposition format: HELP and TYPE lines, then `name{labels} value` lines."""
    lines = []
    for gauge in gauges:
        if not _NAME.match(gauge.name):
            raise ConfigError(f"metric name {gauge.name!r} is not a Prometheus name")
        lines.append(f"# HELP {gauge.name} {_escape(gauge.help, quotes=False)}")
        lines.append(f"# TYPE {gauge.name} gauge")
        for labels, value in gauge.samples:
            lines.append(f"{gauge.name}{_labels(labels)} {_number(value)}")
    return "\n".join(lines) + "\n"


def write_prometheus(path: str | Path, gauges: Iterable[Gauge]) -> Path:
    return atomic_write_text(path, render(gauges))


def require_status_files(json_path: Path | None, prometheus_path: Path | None) -> None:
    """Before any probe: the files write_status_files will write can be written."""
    for path, setting in ((json_path, "--json"), (prometheus_path, "--prometheus")):
        if path:
            require_writable_file(path, setting)


def write_status_files(
    status: dict[str, Any],
    gauges: Callable[[dict[str, Any]], list[Gauge]],
    json_path: Path | None,
    prometheus_path: Path | None,
) -> None:
    """What both status commands write beside their text, when asked: the status as JSON and
    its gauges for Prometheus."""
    if json_path:
        write_json(json_path, status)
        console.print(f"wrote {json_path}")
    if prometheus_path:
        write_prometheus(prometheus_path, gauges(status))
        console.print(f"wrote {prometheus_path}")


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    for key in labels:
        if not _LABEL.match(key):
            raise ConfigError(f"metric label {key!r} is not a Prometheus label name")
    return "{" + ",".join(f'{key}="{_escape(str(v))}"' for key, v in labels.items()) + "}"


def _escape(text: str, *, quotes: bool = True) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quotes else text


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))
