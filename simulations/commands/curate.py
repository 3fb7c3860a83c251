"""`feddel-sim curate` and `feddel-sim demo`: one curation round on a simulated federation."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from rich.table import Table

from feddel.client.state import CenterState
from feddel.common.cliutil import EXIT_OK, console
from feddel.common.config import CurationConfig, parse_overrides
from feddel.common.curation.methods import FEDDEL, METHOD_HELP, METHOD_NAMES
from feddel.common.io import require_writable_folder, write_json
from feddel.common.reports.summary import RoundSummary
from feddel.server.report_html import write_coordinator_report
from feddel.simulations.centralized import run_centralized
from feddel.simulations.evaluate import selected_files, truth_measures
from feddel.simulations.federated import ENGINES, run_federated
from feddel.simulations.layout import center_dirs

MODES = ("federated", "centralized")
QUALITY_ROWS = (
    ("disruptive_rate", "disruptive rate in selection", "{:.2%}"),
    ("distinct_videos_per_selected", "distinct videos / selected", "{:.3f}"),
    ("distinct_series_per_selected", "distinct series / selected", "{:.3f}"),
    ("mode_coverage", "semantic modes covered", "{:.0%}"),
    ("modes_covered", "semantic modes covered (count)", "{}"),
    ("mode_entropy", "mode entropy (bits)", "{:.2f}"),
    ("corrupt_selected", "corrupt files selected", "{}"),
    ("duplicate_files_selected", "exact duplicates selected", "{}"),
)


def add_curate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, required=True, help="federation folder (feddel-sim data)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="run folder: summary.json, selection.csv"
    )
    parser.add_argument("--method", choices=METHOD_NAMES, default=FEDDEL.name, help=METHOD_HELP)
    parser.add_argument(
        "--budget", type=float, default=0.05, help="target retention R, e.g. 0.05 = 5%%"
    )
    parser.add_argument(
        "--mode", choices=MODES, default="federated",
        help="federated: Flower round, aggregates only; centralized: the pooled reference",
    )  # fmt: skip
    parser.add_argument(
        "--engine", choices=ENGINES, default="ray",
        help="federated engine: Flower's Ray simulation (default) or in-process (no Ray, fast)",
    )  # fmt: skip
    parser.add_argument(
        "--state", type=Path, metavar="DIR",
        help="centers' state root (embedding caches); share it between runs to reuse embeddings "
        "(default RUN/centers)",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="any other round setting, e.g. --set k=64 --set seed=1 "
        "(list: feddel-coordinator config)",
    )  # fmt: skip


def curate(args: argparse.Namespace) -> RoundSummary:
    overrides = {"method": args.method, "budget": args.budget, **parse_overrides(args.set)}
    config = CurationConfig.from_run_config(overrides)
    if args.mode == "centralized":
        return run_centralized(args.data, args.out, config, state_root=args.state)
    summary = run_federated(args.data, args.out, config, engine=args.engine, state_root=args.state)
    summary = dataclasses.replace(
        summary,
        mode=f"federated ({args.engine})",
        quality=_federated_truth(
            args.data, args.out, args.state or args.out / "centers", config, set(summary.per_center)
        ),
    )
    write_json(args.out / "summary.json", summary.to_json())
    write_coordinator_report(summary.to_json(), args.out)
    return summary


def curate_run(args: argparse.Namespace) -> int:
    require_writable_folder(args.out, "--out")
    if args.state is not None:
        require_writable_folder(args.state, "--state")
    summary = curate(args)
    print_summary(summary)
    console.print(f"summary: {args.out / 'summary.json'}   selection: {args.out / 'selection.csv'}")
    return EXIT_OK


def _federated_truth(
    data: Path, out: Path, state_root: Path, config: CurationConfig, finished: set[str]
) -> dict[str, Any] | None:
    """Judge a federated round with the simulation's ground truth (never seen by the round),
    over the centers that `finished` it: one dropped (an empty folder, a crash) has no pool."""
    centers = [folder for folder in center_dirs(data) if folder.name in finished]
    pool_ids = {}
    for folder in centers:
        pool = CenterState(state_root / folder.name).load_pool(out.name)
        pool_ids[folder.name] = (pool.sample_ids, pool.locators)
    return truth_measures(
        centers, selected_files(out / "selection.csv"), pool_ids, config.budget, config.seed
    )


def print_summary(summary: RoundSummary) -> None:
    table = Table(
        title=f"curation round: {summary.method} at {summary.budget:.0%} ({summary.mode})"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("centers", str(summary.centers))
    table.add_row("pool samples", str(summary.total_samples))
    table.add_row("selected", f"{summary.selected} ({summary.retention:.2%})")
    table.add_row("clusters k / Lloyd rounds", f"{summary.k} / {summary.kmeans_rounds}")
    if summary.bytes_up is not None and summary.bytes_down is not None:
        table.add_row(
            "bytes up / down",
            f"{summary.bytes_up['total']:,} / {summary.bytes_down['total']:,}",
        )
    for name, v in summary.v_information.items():
        table.add_row(
            f"V-information of the {name} (bits)",
            f"{v['objective']:.3f} = diversity {v['diversity']:.3f} + hardness {v['hardness']:.3f}",
        )
    if summary.synthesized is not None:
        table.add_row("mosaics made at the centers", str(summary.synthesized["mosaics"]))
    if summary.privacy_line:
        table.add_row("privacy", summary.privacy_line)
    table.add_row("wall time", f"{summary.wall_s:.1f} s")
    console.print(table)
    quality = summary.quality
    if quality:
        compare = Table(title="against ground truth (evaluation only)")
        compare.add_column("measure")
        compare.add_column(summary.method, justify="right")
        compare.add_column("random, same R", justify="right")
        baseline = quality.get("random_baseline", {})
        for key, label, form in QUALITY_ROWS:
            if key not in quality["selection"]:  # the truth has no such column
                continue
            compare.add_row(
                label,
                form.format(quality["selection"][key]),
                form.format(baseline[key]) if key in baseline else "",
            )
        console.print(compare)
    for warning in summary.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    for failure in summary.failed_centers:
        console.print(
            f"[yellow]failed center[/] {failure.center} in {failure.phase}: {failure.reason}"
        )


def federation_table(federation: dict) -> Table:
    keys = ("pool", "test", "disruptive", "duplicates", "corrupt")
    kind = "real-image" if federation.get("source") == "packages" else "synthetic"
    table = Table(
        title=f"{kind} federation (scale {federation['scale']}, seed {federation['seed']}, "
        f"{federation['size']} px)"
    )
    table.add_column("center")
    for key in keys:
        table.add_column(key, justify="right")
    for center in federation["centers"]:
        table.add_row(center["name"], *(str(center[key]) for key in keys))
    totals = [sum(c[key] for c in federation["centers"]) for key in keys]
    table.add_section()
    table.add_row("total", *(str(t) for t in totals), style="bold")
    return table
