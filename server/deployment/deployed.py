"""The ServerApp component `feddel-coordinator curate` submits: server/app.py's round, plus one
progress line per phase.

Flower 1.41 mirrors a ServerApp's stdout and stderr into the run's log, which `flwr run
--stream` shows the operator; FedDEL's own loggers are otherwise silent below WARNING. So this
component logs, to stdout, how many centers answered each phase and how long it took.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import cast

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from feddel.server.app import build_server_app, config_from_run_config

log = logging.getLogger(__name__)

_round = build_server_app(config_from_run_config)


class ProgressGrid:
    """A Grid that logs each fan-out (phase, answers, errors, seconds) and delegates the rest."""

    def __init__(self, grid: Grid):
        self._grid = grid

    def __getattr__(self, name: str) -> object:
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        started = time.monotonic()
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        failed = sum(reply.has_error() for reply in replies)
        phase = messages[0].metadata.message_type if messages else "(none)"
        log.info(
            "%s: %d of %d centers answered, %d with an error, in %.1f s",
            phase,
            len(replies) - failed,
            len(messages),
            failed,
            time.monotonic() - started,
        )
        return replies


def _log_progress() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("feddel %(message)s"))
    server_log = logging.getLogger("feddel.server")
    server_log.addHandler(handler)
    server_log.setLevel(logging.INFO)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    _log_progress()
    _round(cast(Grid, ProgressGrid(grid)), context)
