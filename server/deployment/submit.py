"""`feddel-coordinator curate`: submit one curation round to the running SuperLink with
`flwr run`, stream its progress, and show the summary the ServerApp wrote.

The round's settings are, from weakest to strongest: CurationConfig's defaults, `[round]` of
coordinator.toml, `--method`/`--budget`, then `--set KEY=VALUE`. The run's Flower app is
configuration only (server/deployment/fab.py), submitted with the operator's token, and its run
config names the operator, which the SuperLink checks against the token and every center's
policy may check against its list of allowed operators.

The ServerApp runs on the coordinator under the SuperLink and writes <out>/<run-name>/
(progress.json while it runs, then summary.json, report.html, centroids.npy); `out` is passed
as an absolute path in the run config, because the ServerApp's working directory is Flower's,
not the operator's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from rich.markup import escape

from feddel.common.cliutil import EXIT_OK, console
from feddel.common.config import CurationConfig, parse_overrides
from feddel.common.curation.methods import METHOD_HELP, METHOD_NAMES
from feddel.common.deployment.sites import (
    FlowerProcess,
    flower_program,
    stop_on_signals,
    toml_document,
)
from feddel.common.errors import ConfigError, RunFailed
from feddel.common.io import atomic_write_text, require_writable_folder
from feddel.common.reports.summary import RoundSummary
from feddel.server.deployment.fab import OPERATOR_KEY, write_app
from feddel.server.deployment.flwrcli import (
    CONNECTION,
    boxed_error,
    error_message,
    flwr_json,
    write_connection,
)
from feddel.server.deployment.operators import add_operator_token_argument, operator_token
from feddel.server.deployment.site import CoordinatorSite, load_site
from feddel.server.deployment.superlink import add_site_arguments
from feddel.server.report import SUMMARY_FILE

_RUN_ID = re.compile(r"Successfully started run (\d+)")


def add_curate_arguments(parser: argparse.ArgumentParser) -> None:
    add_site_arguments(parser)
    parser.add_argument(
        "--superlink", metavar="HOST:PORT",
        help="the SuperLink to submit to (default 127.0.0.1:<port> of coordinator.toml)",
    )  # fmt: skip
    parser.add_argument(
        "--method", choices=METHOD_NAMES,
        help=f"{METHOD_HELP}. A [round] method in coordinator.toml replaces the default",
    )  # fmt: skip
    parser.add_argument(
        "--budget", type=float,
        help="target retention R, e.g. 0.05 = 5%% (default: [round] budget, else 0.05)",
    )  # fmt: skip
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
    add_operator_token_argument(parser)


def run_curate(args: argparse.Namespace) -> int:
    site = load_site(args.config, certs=args.certs, state=args.state)
    config = round_config(args, site)
    run_dir = Path(config.out) / config.run_name
    require_writable_folder(config.out, "--out (or [coordinator] runs)")
    if (run_dir / SUMMARY_FILE).exists():
        raise ConfigError(f"{run_dir} already holds a round; choose another --run-name")
    address = args.superlink or site.local_address
    ca_cert = site.certs / "ca.crt"
    if not ca_cert.is_file():
        raise ConfigError(f"{ca_cert} does not exist; pass --certs DIR (from `certs init`)")
    token = operator_token(args, site.state)
    operator = token.split(":", 1)[0]
    with tempfile.TemporaryDirectory(prefix="feddel-curate-") as tmp:
        env = write_connection(Path(tmp) / "flwr", address, ca_cert, token)
        app = write_app(Path(tmp) / "app")
        overrides = Path(tmp) / "run-config.toml"
        run_config = {**config.to_run_config(), OPERATOR_KEY: operator}
        atomic_write_text(overrides, toml_document(run_config))
        console.print(f"submitting round {config.run_name!r} to {address} as operator "
                      f"{operator} ({config.method}, budget {config.budget:g}); results go to "
                      f"{run_dir}")  # fmt: skip
        run_id = _run_and_stream(app, overrides, env)
        status = _run_status(run_id, env)
    summary_path = run_dir / SUMMARY_FILE
    if not summary_path.is_file():
        if status is None:
            raise RunFailed(
                f"lost the SuperLink at {address} during run {run_id} (it stopped or "
                "restarted); the round did not finish and no center kept a selection. The "
                "centers need nothing: once `feddel-coordinator status` shows the SuperLink "
                "up, submit the round again with a new --run-name"
            )
        raise RunFailed(
            f"run {run_id} ended {status} and wrote no {summary_path}; the lines above (or "
            "the SuperLink's log) say why"
        )
    _print_summary(RoundSummary.from_json(json.loads(summary_path.read_text())), run_dir, run_id)
    return EXIT_OK


def round_config(args: argparse.Namespace, site: CoordinatorSite) -> CurationConfig:
    """Defaults < [round] of coordinator.toml < --method/--budget < --set; `out` and `run-name`
    from the site and the flags."""
    flags = {"method": args.method, "budget": args.budget}
    overrides = {
        **{key: value for key, value in flags.items() if value is not None},
        **parse_overrides(args.set),
        "out": str((args.out or site.runs).expanduser().resolve()),
    }
    config = site.round_config(overrides)
    if args.run_name:
        return dataclasses.replace(config, run_name=args.run_name)
    if "run-name" in site.round or "run-name" in overrides:
        return config
    return dataclasses.replace(config, run_name=f"{config.method}-{time.strftime('%Y%m%d-%H%M%S')}")


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
                        f"{boxed_error(process.output())}")  # fmt: skip
    return run_ids[0]


def _run_status(run_id: str, env: dict[str, str]) -> str | None:
    """How the run ended, as the SuperLink says; None when the SuperLink does not answer."""
    reply = flwr_json(["list", CONNECTION, "--run-id", run_id], env)
    runs = reply.get("runs") or []
    if not reply.get("success") or not runs:
        if "unavailable" in str(reply.get("error-message", "")).lower():
            return None
        return f"in an unknown state ({error_message(reply)})"
    details = runs[0].get("status-details") or ""
    return f"{runs[0].get('status', 'unknown')}{f' ({details})' if details else ''}"


def _print_summary(summary: RoundSummary, run_dir: Path, run_id: str) -> None:
    console.print(
        f"[bold]run {run_id}[/]: {summary.centers} centers, selected {summary.selected:,} of "
        f"{summary.total_samples:,} samples ({summary.retention:.2%}) with {summary.method}"
    )
    if summary.privacy_line:
        console.print(f"privacy: {summary.privacy_line}")
    for failure in summary.failed_centers:
        console.print(
            f"[yellow]dropped {failure.center} in {failure.phase}: {escape(failure.reason)}[/]"
        )
    for warning in summary.warnings:
        console.print(f"[yellow]warning: {escape(warning)}[/]")
    console.print(f"wrote {run_dir / SUMMARY_FILE} and {run_dir / 'report.html'}; each center's "
                  "manifest stays in its state folder (feddel-center status)")  # fmt: skip
