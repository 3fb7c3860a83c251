"""feddel-coordinator: run and inspect curation rounds from the coordinating server."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from common.cliutil import EXIT_OK, Command, console, dispatch, run_cli
from common.cliutil import build_parser as build_parser_for
from common.config import CurationConfig, parse_overrides
from common.io import write_json

DESCRIPTION = """\
Coordinate FedDEL curation rounds. The coordinator never sees images, embeddings or sample
ids: centers send it per-cluster counts, sums and score histograms only.

Commands:
  config   resolve and validate a curation configuration (defaults + --set overrides)
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
)


def build_parser() -> argparse.ArgumentParser:
    return build_parser_for("feddel-coordinator", DESCRIPTION, COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda args: dispatch(build_parser(), args), argv)
