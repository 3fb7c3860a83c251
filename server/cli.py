"""feddel-coordinator: run and inspect curation rounds from the coordinating server."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from feddel.common.cliutil import EXIT_OK, Command, console, dispatch, run_cli
from feddel.common.cliutil import build_parser as build_parser_for
from feddel.common.config import CurationConfig, parse_overrides
from feddel.common.io import write_json
from feddel.server.deployment.certs import add_certs_arguments, run_certs
from feddel.server.deployment.submit import add_curate_arguments, run_curate
from feddel.server.deployment.superlink import add_start_arguments, run_start

DESCRIPTION = """\
Coordinate FedDEL curation rounds. The coordinator never sees images, embeddings or sample
ids: centers send it per-cluster counts, sums and score histograms only.

Commands:
  config   resolve and validate a curation configuration (defaults + --set overrides)
  certs    create the CA, the SuperLink certificate and the centers' keys (init, add-center)
  start    run the SuperLink (TLS, center authentication) and keep center keys registered
  curate   submit a curation round to the SuperLink, stream it, and show its summary

Deployment step by step: deploy/README.md.
"""


def _cmd_config(args: argparse.Namespace) -> int:
    config = CurationConfig.from_run_config(parse_overrides(args.set))
    resolved = config.to_run_config()
    for key, value in resolved.items():
        console.print(f"{key:>18} = {value}")
    if args.json:
        write_json(args.json, resolved)
        console.print(f"wrote {args.json}")
    return EXIT_OK


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
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
        summary="resolve and validate a curation configuration",
        description="Print the curation configuration a round would use: the defaults "
        "(pyproject [tool.flwr.app.config]) with your overrides applied and checked.",
        add_arguments=_add_config_arguments,
        run=_cmd_config,
    ),
    Command(
        name="certs",
        summary="create the CA, the SuperLink certificate and the centers' keys",
        description="`certs init` creates the federation's CA and the SuperLink's TLS "
        "certificate; `certs add-center NAME` makes a center's node-authentication key pair. "
        "Private keys are written with mode 0600 and never replaced without --force.",
        add_arguments=add_certs_arguments,
        run=run_certs,
    ),
    Command(
        name="start",
        summary="run the SuperLink with TLS and center authentication",
        description="Run Flower's SuperLink with TLS, SuperNode authentication, runtime "
        "dependency installation disabled and its state in <state>/superlink.db, and keep "
        "the public keys in <certs>/centers/ registered. Stops cleanly on SIGTERM or Ctrl-C.",
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
)


def build_parser() -> argparse.ArgumentParser:
    return build_parser_for("feddel-coordinator", DESCRIPTION, COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda args: dispatch(build_parser(), args), argv)
