"""`feddel-center status`: what this center has taken part in, from its state folder alone.

Reads <state>/events.jsonl (written by the ClientApp and by `join`, see client/state.py) and
the manifests beside it: the runs seen, the manifests written (and whether they are still
there), the last join or leave, and the last error with its phase. Works whether or not the
SuperNode is running, so IT staff can check a center without touching the federation.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from feddel.client.site import load_center_site
from feddel.client.state import CenterState
from feddel.common.cliutil import EXIT_OK, console
from feddel.common.errors import ConfigError, DataError
from feddel.common.io import write_json


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, metavar="FILE", help="center.toml (its state)")
    source.add_argument("--state", type=Path, metavar="DIR", help="the center's state folder")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the status as JSON")


def run_status(args: argparse.Namespace) -> int:
    state_dir = load_center_site(args.config).state if args.config else args.state
    status = center_status(state_dir)
    _print_status(status)
    if args.json:
        write_json(args.json, status)
        console.print(f"wrote {args.json}")
    return EXIT_OK


def center_status(state_dir: Path) -> dict[str, Any]:
    """Runs seen, manifests written, last connection event and last error, as JSON-ready data."""
    if not state_dir.is_dir():
        raise DataError(
            f"state folder {state_dir} does not exist; this center has not joined a round yet"
        )
    try:
        events = CenterState(state_dir).events()
    except ValueError as exc:  # json.JSONDecodeError: a line cut by a crash
        raise ConfigError(f"{state_dir / 'events.jsonl'} has an unreadable line: {exc}") from None
    runs: dict[str, dict[str, Any]] = {}
    manifests = []
    for event in events:
        if "run" in event:
            run = runs.setdefault(event["run"], {"run": event["run"], "first_seen": event["time"]})
            run["last_seen"] = event["time"]
            if event["event"] == "inventory":
                run["samples"] = event.get("samples")
        if event["event"] == "manifest":
            path = state_dir / event["path"]
            manifests.append(
                {
                    "run": event["run"],
                    "round": event.get("round", 0),
                    "selected": event.get("selected"),
                    "path": str(path),
                    "present": path.is_file(),
                    "time": event["time"],
                }
            )
            runs[event["run"]]["selected"] = event.get("selected")
    errors = [e for e in events if e["event"] == "error"]
    connections = [e for e in events if e["event"] in ("join", "leave")]
    return {
        "state": str(state_dir.resolve()),
        "runs": list(runs.values()),
        "manifests": manifests,
        "last_connection": connections[-1] if connections else None,
        "last_error": errors[-1] if errors else None,
        "errors": len(errors),
    }


def _print_status(status: dict[str, Any]) -> None:
    console.print(f"[bold]{status['state']}[/]")
    if status["last_connection"]:
        event = status["last_connection"]
        console.print(f"last {event['event']}: {_when(event['time'])} ({event.get('superlink')})")
    table = Table(title="runs seen", title_justify="left")
    for column in ("run", "first seen", "last seen", "samples", "selected"):
        table.add_column(column)
    for run in status["runs"]:
        table.add_row(
            run["run"],
            _when(run["first_seen"]),
            _when(run["last_seen"]),
            str(run.get("samples", "-")),
            str(run.get("selected", "-")),
        )
    console.print(table if status["runs"] else "runs seen: none")
    for manifest in status["manifests"]:
        missing = "" if manifest["present"] else " [red](file missing)[/]"
        console.print(
            f"manifest {manifest['path']}: {manifest['selected']} selected, "
            f"{_when(manifest['time'])}{missing}"
        )
    if error := status["last_error"]:
        console.print(
            f"[red]last error ({status['errors']} in all), {_when(error['time'])}, "
            f"phase {error.get('phase', '?')}: {escape(str(error.get('reason', '')))}[/]"
        )
    else:
        console.print("no errors recorded")


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")
