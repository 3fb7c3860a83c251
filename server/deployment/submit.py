"""`feddel-coordinator curate`: submit one curation round to the running SuperLink with
`flwr run`, stream its progress, and show the summary the ServerApp wrote.

The run's Flower app is generated into a temporary folder: a pyproject.toml whose components are
FedDEL's installed ServerApp (server/deployment/deployed.py) and ClientApp (client/app.py) and whose
config
defaults are CurationConfig's. The FAB therefore carries configuration, no code: each center
runs the FedDEL version its IT staff installed, whatever the coordinator has checked out.

The ServerApp runs on the coordinator under the SuperLink and writes <out>/<run-name>/
(summary.json, report.html, centroids.npy); `out` is passed as an absolute path in the run
config, because the ServerApp's working directory is Flower's, not the operator's.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.markup import escape

from feddel.common.cliutil import EXIT_OK, console
from feddel.common.config import CurationConfig, parse_overrides
from feddel.common.curation.methods import FEDDEL, METHOD_HELP, METHOD_NAMES
from feddel.common.deployment.sites import (
    FlowerProcess,
    flower_program,
    stop_on_signals,
    toml_document,
)
from feddel.common.errors import ConfigError, RunFailed
from feddel.common.io import atomic_write_text, require_writable_folder
from feddel.common.reports.summary import RoundSummary
from feddel.server.deployment.flwrcli import CONNECTION, error_message, flwr_json, write_connection
from feddel.server.deployment.site import load_site
from feddel.server.deployment.superlink import add_site_arguments
from feddel.server.report import SUMMARY_FILE

COMPONENTS = {
    "serverapp": "feddel.server.deployment.deployed:app",
    "clientapp": "feddel.client.app:app",
}
_RUN_ID = re.compile(r"Successfully started run (\d+)")


def add_curate_arguments(parser: argparse.ArgumentParser) -> None:
    add_site_arguments(parser)
    parser.add_argument(
        "--superlink", metavar="HOST:PORT",
        help="the SuperLink to submit to (default 127.0.0.1:<port> of coordinator.toml)",
    )  # fmt: skip
    parser.add_argument("--method", choices=METHOD_NAMES, default=FEDDEL.name, help=METHOD_HELP)
    parser.add_argument(
        "--budget", type=float, default=0.05, help="target retention R, e.g. 0.05 = 5%%"
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR",
        help="runs folder on this machine (default: runs of coordinator.toml)",
    )  # fmt: skip
    parser.add_argument(
        "--run-name", metavar="NAME", help="name of this run's folder (default METHOD-TIMESTAMP)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="any other round setting, e.g. --set min-centers=31 "
        "(list: feddel-coordinator config)",
    )  # fmt: skip


def run_curate(args: argparse.Namespace) -> int:
    site = load_site(args.config, certs=args.certs, state=args.state)
    config = _round_config(args, site.round, site.runs)
    run_dir = Path(config.out) / config.run_name
    require_writable_folder(config.out, "--out (or [coordinator] runs)")
    if (run_dir / SUMMARY_FILE).exists():
        raise ConfigError(f"{run_dir} already holds a round; choose another --run-name")
    address = args.superlink or site.local_address
    ca_cert = site.certs / "ca.crt"
    if not ca_cert.is_file():
        raise ConfigError(f"{ca_cert} does not exist; pass --certs DIR (from `certs init`)")
    with tempfile.TemporaryDirectory(prefix="feddel-curate-") as tmp:
        env = write_connection(Path(tmp) / "flwr", address, ca_cert)
        app = write_app(Path(tmp) / "app")
        overrides = Path(tmp) / "run-config.toml"
        atomic_write_text(overrides, toml_document(config.to_run_config()))
        console.print(f"submitting round {config.run_name!r} to {address} ({config.method}, "
                      f"budget {config.budget:g}); results go to {run_dir}")  # fmt: skip
        run_id = _run_and_stream(app, overrides, env)
        status = _run_status(run_id, env)
    summary_path = run_dir / SUMMARY_FILE
    if not summary_path.is_file():
        raise RunFailed(
            f"run {run_id} ended {status} and wrote no {summary_path}; the lines above (or "
            "the SuperLink's log) say why"
        )
    _print_summary(RoundSummary.from_json(json.loads(summary_path.read_text())), run_dir, run_id)
    return EXIT_OK


def write_app(folder: Path) -> Path:
    """The Flower app of a deployed round: pyproject.toml only (see the module docstring)."""
    version = importlib.metadata.version("feddel")
    lines = [
        "[project]",
        toml_document({
            "name": "feddel", "version": version, "license": "Apache-2.0",
            "description": "FedDEL federated curation round (configuration only)",
        }),
        "[tool.flwr.app]", toml_document({"publisher": "feddel"}),
        "[tool.flwr.app.components]", toml_document(COMPONENTS),
        "[tool.flwr.app.config]", toml_document(CurationConfig().to_run_config()),
    ]  # fmt: skip
    atomic_write_text(folder / "pyproject.toml", "\n".join(lines))
    return folder


def _round_config(
    args: argparse.Namespace, site_round: dict[str, Any], runs: Path
) -> CurationConfig:
    overrides = {
        **site_round,
        "method": args.method,
        "budget": args.budget,
        **parse_overrides(args.set),
        "out": str((args.out or runs).expanduser().resolve()),
        "run-name": args.run_name or f"{args.method}-{time.strftime('%Y%m%d-%H%M%S')}",
    }
    return CurationConfig.from_run_config(overrides)


def _run_and_stream(app: Path, overrides: Path, env: dict[str, str]) -> str:
    """`flwr run --stream`: relay its lines; on Ctrl-C/SIGTERM stop the run, not just the
    stream (`flwr run` alone would leave the round running on the SuperLink)."""
    argv = [flower_program("flwr"), "run", str(app), CONNECTION]
    argv += ["--run-config", str(overrides), "--stream"]
    run_ids: list[str] = []
    process = FlowerProcess(
        argv, env, echo=sys.stdout, on_line=lambda line: run_ids.extend(_RUN_ID.findall(line))
    )
    with stop_on_signals() as stop:
        while process.poll() is None and not stop.wait(0.5):
            pass
    code = process.stop()  # also waits until every line has been relayed
    if stop.is_set():
        if run_ids:
            flwr_json(["stop", run_ids[0], CONNECTION], env)
        raise KeyboardInterrupt
    if not run_ids:
        raise RunFailed(f"flwr run could not start the round (exit code {code}): "
                        f"{process.last_line()}")  # fmt: skip
    return run_ids[0]


def _run_status(run_id: str, env: dict[str, str]) -> str:
    reply = flwr_json(["list", CONNECTION, "--run-id", run_id], env)
    runs = reply.get("runs") or []
    if not reply.get("success") or not runs:
        return f"in an unknown state ({error_message(reply)})"
    details = runs[0].get("status-details") or ""
    return f"{runs[0].get('status', 'unknown')}{f' ({details})' if details else ''}"


def _print_summary(summary: RoundSummary, run_dir: Path, run_id: str) -> None:
    console.print(
        f"[bold]run {run_id}[/]: {summary.centers} centers, selected {summary.selected:,} of "
        f"{summary.total_samples:,} samples ({summary.retention:.2%}) with {summary.method}"
    )
    for failure in summary.failed_centers:
        console.print(
            f"[yellow]dropped {failure.center} in {failure.phase}: {escape(failure.reason)}[/]"
        )
    for warning in summary.warnings:
        console.print(f"[yellow]warning: {escape(warning)}[/]")
    console.print(f"wrote {run_dir / SUMMARY_FILE} and {run_dir / 'report.html'}; each center's "
                  "manifest stays in its state folder (feddel-center status)")  # fmt: skip
