"""What every FedDEL command shares: exit codes, one-line errors, human + JSON output."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from rich.console import Console
from rich.text import Text

from feddel.common.errors import ConfigError, FedDELError, RunFailed

EXIT_OK = 0
EXIT_FAILED = 1  # the job ran but did not reach its goal (e.g. too few centers answered)
EXIT_USER_ERROR = 2  # bad path, bad value: the message says what to change
EXIT_INTERRUPTED = 130

# Piped to a log, rich assumes 80 columns and cuts table cells ("0.61…"); 120 keeps them whole.
_LOG_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120
console = Console(stderr=False, highlight=False, soft_wrap=True, width=_LOG_WIDTH)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a command's main; turn user errors into one line on stderr and an exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return main(argv)
    except RunFailed as exc:
        err_console.print(Text.assemble(("failed: ", "bold red"), str(exc)))
        return EXIT_FAILED
    except FedDELError as exc:
        err_console.print(Text.assemble(("error: ", "bold red"), str(exc)))
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        err_console.print("interrupted; finished outputs are kept, partial ones were not written")
        return EXIT_INTERRUPTED


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one error line (exit 2), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, help texts, argument declarations and the function it runs."""

    name: str
    summary: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def build_parser(prog: str, description: str, commands: Sequence[Command]) -> ArgumentParser:
    parser = ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands:
        child = sub.add_parser(
            command.name, help=command.summary.replace("%", "%%"), description=command.description
        )
        command.add_arguments(child)
        child.set_defaults(run=command.run)
    return parser


def dispatch(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # a command may start itself again
    return args.run(args)
