"""The ServerApp component `feddel-coordinator curate` submits: server/app.py's round, plus
progress that operators and `feddel-coordinator status` can follow.

Flower 1.41 mirrors a ServerApp's stdout and stderr into the run's log, which `flwr run
--stream` shows the operator; FedDEL's own loggers are otherwise silent below WARNING. So this
component logs, to stdout, how many centers answered each phase and how long it took (a dropped
center is logged by name and phase by the round itself), and keeps the same in
<out>/<run-name>/progress.json, which `status` reads while the round runs and after it ended.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from feddel.common.config import CurationConfig
from feddel.common.deployment.sites import log_to_stdout
from feddel.common.io import write_json
from feddel.server.app import build_server_app
from feddel.server.deployment.fab import OPERATOR_KEY, curation_settings

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"


def _config(context: Context) -> CurationConfig:
    return CurationConfig.from_run_config(curation_settings(dict(context.run_config)))


_round = build_server_app(_config)


class Progress:
    """The round's phases so far, in <out>/<run-name>/progress.json (rewritten atomically)."""

    def __init__(self, path: Path, run: dict[str, Any]):
        self.path = path
        self.record: dict[str, Any] = {**run, "state": "running", "phases": [], "error": None}
        self._save()

    def phase(self, phase: str, asked: int, answered: int, errors: int, seconds: float) -> None:
        self.record["phases"].append(
            {
                "phase": phase,
                "asked": asked,
                "answered": answered,
                "errors": errors,
                "seconds": round(seconds, 2),
                "time": _now(),
            }
        )
        self._save()

    def end(self, error: BaseException | None) -> None:
        self.record["state"] = "failed" if error else "finished"
        self.record["error"] = str(error) if error else None
        self.record["ended"] = _now()
        self._save()

    def _save(self) -> None:
        write_json(self.path, self.record)


class ProgressGrid:
    """A Grid that logs and records each fan-out (phase, answers, errors, seconds) and
    delegates the rest."""

    def __init__(self, grid: Grid, progress: Progress):
        self._grid = grid
        self._progress = progress

    def __getattr__(self, name: str) -> object:
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        started = time.monotonic()
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        seconds = time.monotonic() - started
        failed = sum(reply.has_error() for reply in replies)
        phase = messages[0].metadata.message_type if messages else "(none)"
        log.info(
            "%s: %d of %d centers answered, %d with an error, in %.1f s",
            phase,
            len(replies) - failed,
            len(messages),
            failed,
            seconds,
        )
        self._progress.phase(phase, len(messages), len(replies) - failed, failed, seconds)
        return replies


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    log_to_stdout("feddel.server")
    config = _config(context)
    progress = Progress(
        Path(config.out) / config.run_name / PROGRESS_FILE,
        {
            "run": config.run_name,
            "run_id": context.run_id,
            "operator": context.run_config.get(OPERATOR_KEY, ""),
            "method": config.method,
            "budget": config.budget,
            "started": _now(),
        },
    )
    try:
        _round(cast(Grid, ProgressGrid(grid, progress)), context)
    except BaseException as exc:
        progress.end(exc)
        raise
    progress.end(None)
