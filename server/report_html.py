"""The coordinator's `report.html`: one round, from the aggregates in its summary only.

Input is a summary.json dict (`RoundSummary.to_json()`, common/reports/summary.py), so the
page can show nothing a center did not already send. Center names and failure reasons come from
remote peers: every string is escaped on the page and mathtext-escaped in plots. Missing or odd
optional keys leave a section out instead of failing, so a partial round still gets a report.

    <out_dir>/report.html
    <out_dir>/plots/{inertia,clusters,centers,bytes}.png
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from feddel.common.errors import DataError
from feddel.common.reports import htmlreport as hr

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
PLOTS_DIR = "plots"
_NAME_CHARS = 24  # longer center names are cut in plot labels (tables show them whole)


def write_coordinator_report(summary: Mapping[str, Any], out_dir: Path) -> Path:
    """Write `out_dir/report.html` and its PNG plots; return the HTML path."""
    if not isinstance(summary, Mapping):
        raise DataError(
            f"round summary must be a JSON object (got {type(summary).__name__}); "
            "pass RoundSummary.to_json() or a summary.json"
        )
    out_dir = Path(out_dir)
    sections = [_failures(summary), _headline(summary)]
    sections.append(_per_center(summary, out_dir))
    sections.append(_clusters(summary, out_dir))
    sections.append(_kmeans(summary, out_dir))
    sections.append(_traffic(summary, out_dir))
    sections.append(_quality(summary))
    sections.append(_config(summary))
    title = f"FedDEL round report: {summary.get('method', '?')}"
    note = "Built from aggregates only: no per-sample data ever reached the coordinator."
    path = hr.write_page(out_dir / REPORT_FILE, hr.page(title, [s for s in sections if s], note))
    log.info("coordinator report written to %s", path)
    return path


def _num(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _nums(values: Any) -> list[float]:
    """A list of finite numbers (anything else -> 0), or [] when `values` is not a list."""
    if not isinstance(values, (list, tuple)):
        return []
    return [_num(v) or 0.0 for v in values]


def _dict(summary: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = summary.get(key)
    return value if isinstance(value, Mapping) else {}


def _plot_label(name: Any) -> str:
    """Untrusted text for a matplotlib label: cut, and '$' escaped so mathtext cannot parse it."""
    text = str(name)
    text = text if len(text) <= _NAME_CHARS else text[: _NAME_CHARS - 1] + "…"
    return text.replace("\\", "\\\\").replace("$", r"\$")


def _plot(out_dir: Path, name: str, figure: Any, alt: str) -> str:
    hr.save_figure(figure, out_dir / PLOTS_DIR / f"{name}.png")
    return hr.image(f"{PLOTS_DIR}/{name}.png", alt)


def _heavy_tailed(values: list[float]) -> bool:
    """Values spanning two decades or more get a log axis, so small bars stay visible."""
    positive = [v for v in values if v > 0]
    return len(positive) > 1 and max(positive) >= 100 * min(positive)


def _failures(summary: Mapping[str, Any]) -> str:
    failed = [f for f in summary.get("failed_centers") or [] if isinstance(f, Mapping)]
    if not failed:
        return ""
    rows = [(f.get("center", "?"), f.get("phase", "?"), f.get("reason", "")) for f in failed]
    lead = f"<p><b>{len(failed)} center(s) failed</b>; their data is not in this round.</p>"
    listing = hr.table(("center", "phase", "reason"), rows)
    return hr.section("Failed centers", f'<div class="alert">{lead}{listing}</div>')


def _headline(summary: Mapping[str, Any]) -> str:
    items = [
        ("method", hr.fmt(summary.get("method", "?"))),
        ("budget", hr.pct(summary.get("budget"))),
        ("centers", hr.fmt(summary.get("centers"))),
        ("samples", hr.fmt(summary.get("total_samples"))),
        ("selected", hr.fmt(summary.get("selected"))),
        ("retention", hr.pct(summary.get("retention"))),
        ("clusters k", hr.fmt(summary.get("k"))),
        ("Lloyd rounds", hr.fmt(summary.get("kmeans_rounds"))),
        ("inertia", hr.fmt(summary.get("inertia"))),
        ("tau", hr.fmt(summary.get("tau"))),
        ("eta", hr.fmt(summary.get("eta"))),
        ("wall time (s)", hr.fmt(summary.get("wall_s"))),
        ("bytes up", hr.human_bytes(_dict(summary, "bytes_up").get("total"))),
        ("bytes down", hr.human_bytes(_dict(summary, "bytes_down").get("total"))),
    ]
    return hr.section("Round", hr.cards(items))


def _per_center(summary: Mapping[str, Any], out_dir: Path) -> str:
    centers = _dict(summary, "per_center")
    per_center = {str(k): v for k, v in centers.items() if isinstance(v, Mapping)}
    if not per_center:
        return ""
    names = sorted(per_center, key=lambda n: (-(_num(per_center[n].get("samples")) or 0.0), n))
    columns = ("files", "samples", "unreadable", "duplicate_files", "disruptive", "selected")
    rows = []
    for name in names:
        info = per_center[name]
        samples, selected = _num(info.get("samples")), _num(info.get("selected"))
        retention = hr.pct(selected / samples) if samples and selected is not None else ""
        rows.append((name, *(info.get(c, "") for c in columns), retention))
    header = ("center", *(c.replace("_", " ") for c in columns), "retention")
    samples = [_num(per_center[n].get("samples")) or 0.0 for n in names]
    selected = [_num(per_center[n].get("selected")) or 0.0 for n in names]
    figure = hr.new_figure(max(6.0, 0.45 * len(names)), 3.4)
    axes = figure.subplots()
    _paired_bars(axes, names, (samples, "samples"), (selected, "selected"), "samples", 45)
    plot = _plot(out_dir, "centers", figure, "samples and selected per center")
    return hr.section("Centers", hr.table(header, rows) + plot)


def _clusters(summary: Mapping[str, Any], out_dir: Path) -> str:
    clusters = _dict(summary, "clusters")
    series = {
        "candidates": _nums(clusters.get("candidates")),
        "quota": _nums(clusters.get("quotas")),
        "selected": _nums(clusters.get("selected")),
    }
    series = {name: values for name, values in series.items() if values}
    if not series:
        return ""
    k = max(len(values) for values in series.values())
    padded = {name: values + [0.0] * (k - len(values)) for name, values in series.items()}
    rows = [(j, *(int(padded[name][j]) for name in padded)) for j in range(k)]
    figure = hr.new_figure(max(6.0, 0.3 * k), 3.2)
    axes = figure.subplots()
    width = 0.8 / len(padded)
    for i, (name, values) in enumerate(padded.items()):
        axes.bar(np.arange(k) + (i - (len(padded) - 1) / 2) * width, values, width, label=name)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if _heavy_tailed([v for values in padded.values() for v in values]):
        axes.set_yscale("log")
    axes.set_xlabel("cluster")
    axes.set_ylabel("samples")
    axes.legend(fontsize=8)
    plot = _plot(out_dir, "clusters", figure, "candidates, quota and selected per cluster")
    note = '<p class="muted">Cells under the minimum count are suppressed by centers (0).</p>'
    return hr.section("Clusters", plot + note + hr.table(("cluster", *padded), rows))


def _kmeans(summary: Mapping[str, Any], out_dir: Path) -> str:
    history = _nums(summary.get("inertia_history"))
    if not history:
        return ""
    figure = hr.new_figure(5.0, 2.8)
    axes = figure.subplots()
    axes.plot(np.arange(1, len(history) + 1), history, marker="o")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("Lloyd round")
    axes.set_ylabel("inertia")
    plot = _plot(out_dir, "inertia", figure, "inertia per Lloyd round")
    return hr.section("Federated k-means", plot)


def _traffic(summary: Mapping[str, Any], out_dir: Path) -> str:
    up, down = _dict(summary, "bytes_up"), _dict(summary, "bytes_down")
    seconds = _dict(summary, "phase_seconds")
    phases = list(dict.fromkeys(p for p in [*up, *down, *seconds] if p != "total"))
    if not phases:
        return ""
    rows = [
        (p, hr.human_bytes(up.get(p, 0)), hr.human_bytes(down.get(p, 0)), seconds.get(p, ""))
        for p in [*phases, "total"]
    ]
    figure = hr.new_figure(max(5.0, 0.8 * len(phases)), 3.0)
    axes = figure.subplots()
    up_values = [_num(up.get(p)) or 0.0 for p in phases]
    down_values = [_num(down.get(p)) or 0.0 for p in phases]
    pair = ((up_values, "up (centers to server)"), (down_values, "down (server to centers)"))
    _paired_bars(axes, phases, *pair, "bytes", 30)
    plot = _plot(out_dir, "bytes", figure, "bytes per phase, up and down")
    return hr.section("Traffic", hr.table(("phase", "up", "down", "seconds"), rows) + plot)


def _quality(summary: Mapping[str, Any]) -> str:
    quality = _dict(summary, "quality")
    columns = {str(k): v for k, v in quality.items() if isinstance(v, Mapping)}
    if not columns:
        return ""
    metrics = list(dict.fromkeys(str(m) for values in columns.values() for m in values))
    rows = [(m, *(columns[c].get(m, "") for c in columns)) for m in metrics]
    header = ("metric", *(c.replace("_", " ") for c in columns))
    return hr.section("Quality (simulation ground truth)", hr.table(header, rows))


def _config(summary: Mapping[str, Any]) -> str:
    config = _dict(summary, "config")
    if not config:
        return ""
    rows = sorted(config.items(), key=lambda item: str(item[0]))
    return hr.section("Configuration", hr.table(("key", "value"), rows))


def _paired_bars(
    axes: Any,
    names: list[str],
    left: tuple[list[float], str],
    right: tuple[list[float], str],
    ylabel: str,
    rotation: int,
) -> None:
    """Two bars per name (values, legend label), log scale when the values are heavy-tailed."""
    x = np.arange(len(names))
    axes.bar(x - 0.2, left[0], 0.4, label=left[1])
    axes.bar(x + 0.2, right[0], 0.4, label=right[1])
    axes.set_xticks(x, [_plot_label(n) for n in names], rotation=rotation, ha="right", fontsize=8)
    if _heavy_tailed(left[0] + right[0]):
        axes.set_yscale("log")
    axes.set_ylabel(ylabel)
    axes.legend(fontsize=8)
