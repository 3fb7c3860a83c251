"""`feddel-center status`: this center's connection, rounds, phase progress and errors, from its
state folder alone.

Reads <state>/events.jsonl (written by `join` and by the ClientApp, see client/state.py), the
audit log (client/policy.py) and the manifests beside them: whether the SuperNode is connected
(`join` still running, and with --config the SuperLink answering from here), the runs seen with
the phases each one went through, the manifests written (and whether they are still there),
rounds the center's policy refused, and the last error with its phase. Works whether or not the
SuperNode is running, so IT staff can check a center without touching the federation. `--check`
exits 1 unless the center is connected (a container or monitoring health check); `--prometheus
FILE` writes the same as gauges.
"""

from __future__ import annotations

import argparse
import datetime
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from feddel.client.budget import ledger_summary
from feddel.client.site import load_center_site
from feddel.client.state import CenterState
from feddel.common.cliutil import EXIT_FAILED, EXIT_OK, console
from feddel.common.deployment.audit import AuditLog
from feddel.common.deployment.metrics import Gauge, require_status_files, write_status_files
from feddel.common.deployment.sites import superlink_health
from feddel.common.errors import DataError
from feddel.common.privacy.policy import PrivacyPolicy

# Connection events `join` records, and what the last of them means.
CONNECTION_STATES = {
    "join": "connecting",
    "connected": "connected",
    "connection-lost": "reconnecting",
    "leave": "stopped",
}


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, metavar="FILE", help="center.toml (its state)")
    source.add_argument("--state", type=Path, metavar="DIR", help="the center's state folder")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the status as JSON")
    parser.add_argument(
        "--prometheus", type=Path, metavar="FILE",
        help="also write gauges for node_exporter's textfile collector (e.g. "
        "/var/lib/node_exporter/textfile/feddel-center.prom)",
    )  # fmt: skip
    parser.add_argument(
        "--check", action="store_true",
        help="exit 1 unless the center is connected (for health checks)",
    )  # fmt: skip


def run_status(args: argparse.Namespace) -> int:
    require_status_files(args.json, args.prometheus)
    probe = None
    privacy = PrivacyPolicy()
    if args.config:
        site = load_center_site(args.config)
        state_dir, name, privacy = site.state, site.name, site.privacy
        probe = partial(superlink_health, site.address, site.ca_cert)
    else:
        state_dir, name = args.state, args.state.name
    status = center_status(state_dir, name, probe, privacy)
    _print_status(status)
    write_status_files(status, center_gauges, args.json, args.prometheus)
    if args.check and status["connection"]["state"] != "connected":
        return EXIT_FAILED
    return EXIT_OK


def center_status(
    state_dir: Path,
    name: str | None = None,
    probe: Callable[[], str | None] | None = None,
    privacy: PrivacyPolicy | None = None,
) -> dict[str, Any]:
    """Connection, runs with their phases, manifests, refusals, errors and the privacy ledger
    (client/budget.py), JSON-ready. `probe` asks the SuperLink's /health from here (None:
    judge by the recorded events); `privacy`: the center's policy (its budget and delta)."""
    if not state_dir.is_dir():
        raise DataError(
            f"state folder {state_dir} does not exist; this center has not joined a round yet"
        )
    events = CenterState(state_dir).events()
    runs: dict[str, dict[str, Any]] = {}
    manifests = []
    for event in events:
        if "run" in event:
            run = runs.setdefault(
                event["run"], {"run": event["run"], "first_seen": event["time"], "phases": []}
            )
            run["last_seen"] = event["time"]
            if event["event"] == "inventory":
                run["samples"] = event.get("samples")
            if event["event"] == "phase":
                run["phases"].append(event["phase"])
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
    refused = [e for e in AuditLog.in_folder(state_dir).entries() if e["outcome"] == "refused"]
    return {
        "center": name or state_dir.name,
        "state": str(state_dir.resolve()),
        "connection": _connection(events, probe),
        "runs": list(runs.values()),
        "last_round": list(runs.values())[-1] if runs else None,
        "manifests": manifests,
        "refused_rounds": refused,
        "last_error": errors[-1] if errors else None,
        "errors": len(errors),
        "privacy_ledger": ledger_summary(state_dir, privacy or PrivacyPolicy()),
    }


def _connection(
    events: list[dict[str, Any]], probe: Callable[[], str | None] | None
) -> dict[str, Any]:
    """Whether the SuperNode is connected now: `join` must still run (its pid is alive) and,
    when the site is known, the SuperLink must answer from here; else the last event says."""
    changes = [e for e in events if e["event"] in CONNECTION_STATES or _refused_at_connect(e)]
    if not changes:
        return {"state": "never joined", "since": None}
    last = changes[-1]
    if _refused_at_connect(last):
        return {"state": "refused", "since": last["time"], "reason": last.get("reason")}
    joined = next(e for e in reversed(changes) if e["event"] in ("join", "leave"))
    node = next((e.get("node") for e in reversed(changes) if e.get("node")), None)
    result = {"since": last["time"], "superlink": last.get("superlink"), "node": node}
    if joined["event"] == "leave":
        return {**result, "state": "stopped"}
    if not _alive(joined.get("pid")):
        return {**result, "state": "stopped", "reason": "`feddel-center join` is not running"}
    problem = probe() if probe is not None else None
    if problem is not None:
        return {**result, "state": "reconnecting", "reason": f"the SuperLink is {problem}"}
    state = "connected" if probe is not None else CONNECTION_STATES[last["event"]]
    return {**result, "state": state}


def _alive(pid: Any) -> bool:
    """True while the process `join` recorded runs (on this host; unknown pids count)."""
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _refused_at_connect(event: dict[str, Any]) -> bool:
    return event["event"] == "error" and event.get("phase") == "connect"


def center_gauges(status: dict[str, Any]) -> list[Gauge]:
    center = status["center"]
    last = status["last_round"] or {}
    return [
        Gauge("feddel_center_connected", "1 when the SuperNode is connected to the SuperLink")
        .add(float(status["connection"]["state"] == "connected"), center=center),
        Gauge("feddel_center_runs", "curation runs this center took part in")
        .add(len(status["runs"]), center=center),
        Gauge("feddel_center_errors", "errors recorded by this center").add(
            status["errors"], center=center
        ),
        Gauge("feddel_center_refused_rounds", "rounds this center's policy refused").add(
            len(status["refused_rounds"]), center=center
        ),
        Gauge("feddel_center_last_round_seen_timestamp_seconds", "last message of a round")
        .add(float(last.get("last_seen", 0.0)), center=center),
        Gauge("feddel_center_last_round_selected", "samples selected in the last round").add(
            float(last.get("selected") or 0), center=center
        ),
        Gauge("feddel_center_privacy_epsilon", "privacy loss charged to the center's ledger")
        .add(status["privacy_ledger"]["epsilon"], center=center),
    ]  # fmt: skip


def _print_status(status: dict[str, Any]) -> None:
    console.print(f"[bold]center {status['center']}[/]: {status['state']}")
    connection = status["connection"]
    style = "green" if connection["state"] == "connected" else "yellow"
    since = f" since {_when(connection['since'])}" if connection["since"] else ""
    node = f", node {connection['node']}" if connection.get("node") else ""
    console.print(f"[{style}]connection: {connection['state']}{since}{node}[/]")
    if connection.get("reason"):
        console.print(f"[red]  {escape(str(connection['reason']))}[/]")
    table = Table(title="runs seen", title_justify="left")
    for column in ("run", "first seen", "last seen", "phases", "samples", "selected"):
        table.add_column(column)
    for run in status["runs"]:
        table.add_row(
            run["run"],
            _when(run["first_seen"]),
            _when(run["last_seen"]),
            _phases(run["phases"]),
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
    for entry in status["refused_rounds"][-5:]:
        console.print(
            f"[yellow]refused round {entry.get('run')} from {entry['actor']} at "
            f"{entry['time']}: {escape(str(entry.get('reason', '')))}[/]"
        )
    ledger = status["privacy_ledger"]
    budget = ledger["max_epsilon"]
    damaged = ledger["damaged_lines"]
    console.print(
        f"privacy ledger: {ledger['releases']} releases charged, epsilon {ledger['epsilon']:.3g} "
        f"(delta {ledger['delta']:g}) of "
        + (f"a budget of {budget:g}" if budget is not None else "no budget (max-dp-epsilon unset)")
        + (f"; {damaged} line(s) cut short by a crash (never sent)" if damaged else "")
    )
    if error := status["last_error"]:
        console.print(
            f"[red]last error ({status['errors']} in all), {_when(error['time'])}, "
            f"phase {error.get('phase', '?')}: {escape(str(error.get('reason', '')))}[/]"
        )
    else:
        console.print("no errors recorded")


def _phases(phases: list[str]) -> str:
    """`inventory, keys, seed, lloyd x20, score, select`: repeated phases counted."""
    parts: list[list[Any]] = []
    for phase in phases:
        if parts and parts[-1][0] == phase:
            parts[-1][1] += 1
        else:
            parts.append([phase, 1])
    return ", ".join(f"{p} x{n}" if n > 1 else p for p, n in parts) or "-"


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")
