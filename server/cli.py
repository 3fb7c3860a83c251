"""feddel-coordinator: run and inspect curation rounds from the coordinating server."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from feddel.common.cliutil import EXIT_OK, Command, console, dispatch, run_cli
from feddel.common.cliutil import build_parser as build_parser_for
from feddel.common.config import CurationConfig, parse_overrides
from feddel.common.deployment.audit import AuditLog
from feddel.common.io import require_writable_file, write_json
from feddel.server.deployment.certs import add_certs_arguments, run_certs
from feddel.server.deployment.operators import add_operator_arguments, run_operator
from feddel.server.deployment.site import CoordinatorSite, load_site, operator_networks
from feddel.server.deployment.status import add_status_arguments, run_status
from feddel.server.deployment.submit import add_curate_arguments, run_curate
from feddel.server.deployment.superlink import add_start_arguments, run_start

DESCRIPTION = """\
Coordinate FedDEL curation rounds. The coordinator never sees images, embeddings or sample
ids: centers send it per-cluster counts, sums and score histograms only.

Commands:
  config    the site's effective settings: coordinator.toml, [round], defaults, --set
  certs     the CA and SuperLink certificate; admit or revoke centers (init, add-center, revoke)
  operator  who may submit rounds: operator tokens (add, remove, list)
  start     run the SuperLink (TLS, center and operator authentication), keep keys registered
  curate    submit a curation round to the SuperLink, stream it, and show its summary
  status    SuperLink health, centers connected, recent rounds and their phases, errors

Deployment step by step: deploy/README.md.
"""


def _cmd_config(args: argparse.Namespace) -> int:
    if args.json:
        require_writable_file(args.json, "--json")
    overrides = parse_overrides(args.set)
    site = load_site(args.config) if args.config else None
    config = site.round_config(overrides) if site else CurationConfig.from_run_config(overrides)
    resolved = config.to_run_config()
    sources = {
        key: "--set" if key in overrides else "[round]" if site and key in site.round else ""
        for key in resolved
    }
    report: dict[str, Any] = {"round": resolved, "round_sources": sources}
    if site is not None:
        report["coordinator"] = site_settings(site)
        console.print(f"{args.config} (relative paths resolved):", markup=False)
        for key, value in report["coordinator"].items():
            console.print(f"{key:>18} = {value}", markup=False)
        console.print("round (defaults, then [round] of the file, then --set):", markup=False)
    for key, value in resolved.items():
        source = f"  (from {sources[key]})" if sources[key] else ""
        console.print(f"{key:>18} = {value}{source}", markup=False)
    if args.json:
        write_json(args.json, report)
        console.print(f"wrote {args.json}")
    return EXIT_OK


def site_settings(site: CoordinatorSite) -> dict[str, Any]:
    """What `start` and `curate` use from coordinator.toml, with the paths they derive."""
    return {
        "certs": str(site.certs),
        "state": str(site.state),
        "host": site.host,
        "port": site.port,
        "runs": str(site.runs),
        "operators-from": ", ".join(map(str, operator_networks(site.operators_from))),
        "database": str(site.database),
        "audit log": str(AuditLog.in_folder(site.state).path),
        "local address": site.local_address,
    }


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, metavar="FILE",
        help="coordinator.toml: show its settings and apply its [round] to the round's",
    )  # fmt: skip
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set budget=0.1 --set k=64 (repeatable)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the resolved config as JSON")


COMMANDS: tuple[Command, ...] = (
    Command(
        name="config",
        summary="the site's effective settings and a round's configuration",
        description="Print the settings `start` and `curate` would use: with --config, the "
        "coordinator.toml values (paths resolved, database and audit log) and the round's "
        "configuration: the defaults (pyproject [tool.flwr.app.config]), then the file's "
        "[round], then --set, each checked; the source of each non-default value is shown.",
        add_arguments=_add_config_arguments,
        run=_cmd_config,
    ),
    Command(
        name="certs",
        summary="create the CA, the SuperLink certificate and the centers' keys",
        description="`certs init` creates the federation's CA and the SuperLink's TLS "
        "certificate; `certs add-center NAME --public-key FILE` admits a center with the key "
        "it made (`feddel-center keygen`); `certs revoke NAME` removes it. Private keys are "
        "written with mode 0600 and never replaced without --force.",
        add_arguments=add_certs_arguments,
        run=run_certs,
    ),
    Command(
        name="operator",
        summary="who may submit rounds: operator tokens",
        description="Every Control API call (submit, stop or list rounds, register keys) needs "
        "an operator token. `start` makes the service's own (<state>/operator.token); "
        "`operator add NAME --out FILE` makes one for a person, `remove` revokes it.",
        add_arguments=add_operator_arguments,
        run=run_operator,
    ),
    Command(
        name="start",
        summary="run the SuperLink with TLS and center authentication",
        description="Run Flower's SuperLink with TLS, SuperNode authentication, operator "
        "authentication (the Control API answers operator networks with a token only), runtime "
        "dependency installation disabled and its state in <state>/superlink.db; keep the "
        "SuperLink's key registry equal to <certs>/centers/. Stops cleanly on SIGTERM or Ctrl-C.",
        add_arguments=add_start_arguments,
        run=run_start,
    ),
    Command(
        name="curate",
        summary="submit a curation round to the SuperLink and show its summary",
        description="Submit one curation round with `flwr run`, stream its progress, and "
        "print the summary the ServerApp wrote to <out>/<run-name>/ (summary.json, "
        "report.html). Run it on the coordinator, as the user the SuperLink runs as.",
        add_arguments=add_curate_arguments,
        run=run_curate,
    ),
    Command(
        name="status",
        summary="SuperLink health, centers, recent rounds and their phases, errors",
        description="Report whether the SuperLink answers, which centers are admitted, "
        "registered and online, the recent rounds (operator, method, phases, state, selected) "
        "and refused requests, as text; --json and --prometheus write the same for machines. "
        "Exits 1 when the SuperLink does not answer; --check asks nothing else.",
        add_arguments=add_status_arguments,
        run=run_status,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    return build_parser_for("feddel-coordinator", DESCRIPTION, COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda args: dispatch(build_parser(), args), argv)
