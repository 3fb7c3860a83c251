"""`feddel-coordinator status`: is the SuperLink up, which centers are admitted, registered and
connected, the last rounds with their phases, and the errors, as text and JSON.

Sources: the SuperLink's /health over TLS; its node and run lists (`flwr`, with the operator
token); the runs folder, where every deployed round keeps progress.json (one entry per phase,
server/deployment/deployed.py) and, once finished, summary.json; and the audit log of the gate.
It exits 1 when the SuperLink does not answer (`--check` stops there: a health check that asks
nothing else); `--prometheus FILE` writes the same as gauges.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from feddel.common.cliutil import EXIT_FAILED, EXIT_OK, console
from feddel.common.deployment.audit import AuditLog
from feddel.common.deployment.certs import registered_centers
from feddel.common.deployment.metrics import Gauge, require_status_files, write_status_files
from feddel.common.deployment.sites import superlink_health
from feddel.server.deployment.deployed import PROGRESS_FILE
from feddel.server.deployment.flwrcli import CONNECTION, error_message, flwr_json, write_connection
from feddel.server.deployment.operators import add_operator_token_argument, operator_token
from feddel.server.deployment.site import CoordinatorSite, load_site
from feddel.server.deployment.superlink import add_site_arguments, registered_nodes
from feddel.server.report import SUMMARY_FILE

RECENT_RUNS = 10


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    add_site_arguments(parser)
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the status as JSON")
    parser.add_argument(
        "--prometheus", type=Path, metavar="FILE",
        help="also write gauges for node_exporter's textfile collector",
    )  # fmt: skip
    parser.add_argument(
        "--check", action="store_true",
        help="only ask the SuperLink's /health: exit 0 when it answers, 1 when not",
    )  # fmt: skip
    add_operator_token_argument(parser)


def run_status(args: argparse.Namespace) -> int:
    require_status_files(args.json, args.prometheus)
    site = load_site(args.config, certs=args.certs, state=args.state)
    health = superlink_health(site.local_address, site.certs / "ca.crt")
    if args.check:
        console.print(f"SuperLink {site.local_address}: {health or 'up'}")
        return EXIT_FAILED if health else EXIT_OK
    status = coordinator_status(site, health, lambda: operator_token(args, site.state))
    _print_status(status)
    write_status_files(status, coordinator_gauges, args.json, args.prometheus)
    return EXIT_FAILED if health else EXIT_OK


def coordinator_status(
    site: CoordinatorSite, health: str | None, token: Callable[[], str]
) -> dict[str, Any]:
    """Everything `status` shows; `token` is called only when the SuperLink is up."""
    nodes, runs_live, errors = {}, {}, []
    if health:
        errors.append(f"SuperLink {health}")
    else:
        env = write_connection(site.flwr_home.with_name("flwr-status"), site.local_address,
                               site.certs / "ca.crt", token())  # fmt: skip
        nodes, runs_live = _live(env, errors)
    centers = _centers(site, nodes)
    errors += [f"center {c['center']} is {c['connection']}" for c in centers if c["problem"]]
    runs = _runs(site.runs, runs_live)
    errors += [f"run {r['run']} {r['state']}: {r['error']}" for r in runs[-1:] if r["error"]]
    refused = [e for e in AuditLog.in_folder(site.state).entries() if e["outcome"] == "refused"]
    return {
        "superlink": {"address": site.local_address, "up": health is None, "problem": health},
        "centers": centers,
        "runs": runs,
        "last_round": runs[-1] if runs else None,
        "refusals": refused[-RECENT_RUNS:],
        "refusals_total": len(refused),
        "errors": errors,
    }


def _live(env: dict[str, str], errors: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The SuperLink's own node list (by node id) and run list (by run id)."""
    found = []
    for args, key, id_key in ((["supernode", "list"], "nodes", "node-id"),
                              (["list"], "runs", "run-id")):  # fmt: skip
        reply = flwr_json([*args, CONNECTION], env)
        if not reply.get("success"):
            errors.append(f"could not list the SuperLink's {key}: {error_message(reply)}")
        found.append({str(item[id_key]): item for item in reply.get(key, [])})
    return found[0], found[1]


def _centers(site: CoordinatorSite, nodes: dict[str, Any]) -> list[dict[str, Any]]:
    """Every admitted center: its node id and whether the SuperLink sees it online."""
    records = registered_nodes(site)
    rows = []
    for name in registered_centers(site.certs):
        node = records.get(name, {}).get("node") or None
        live = nodes.get(node or "", {})
        connection = live.get("status", "not registered" if node is None else "unknown")
        rows.append(
            {
                "center": name,
                "node": node,
                "connection": connection,
                "online_at": live.get("online-at"),
                "offline_at": live.get("offline-at"),
                "problem": bool(nodes) and connection != "online",
            }
        )
    return rows


def _runs(folder: Path, live: dict[str, Any]) -> list[dict[str, Any]]:
    """The recent rounds in the runs folder, oldest first, with the SuperLink's word on each."""
    rows = []
    for progress_file in folder.glob(f"*/{PROGRESS_FILE}") if folder.is_dir() else ():
        progress = json.loads(progress_file.read_text())
        summary_file = progress_file.with_name(SUMMARY_FILE)
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        superlink = live.get(str(progress.get("run_id")), {}).get("status")
        state = progress["state"]
        if state == "running" and superlink and not superlink.startswith("running"):
            state = f"interrupted ({superlink})"  # its ServerApp died: a SuperLink restart
        phases = progress.get("phases", [])
        rows.append(
            {
                "run": progress["run"],
                "run_id": progress.get("run_id"),
                "operator": progress.get("operator"),
                "method": progress.get("method"),
                "budget": progress.get("budget"),
                "started": progress.get("started"),
                "ended": progress.get("ended"),
                "state": state,
                "superlink_status": superlink,
                "phases": len(phases),
                "last_phase": phases[-1] if phases else None,
                "selected": summary.get("selected"),
                "total_samples": summary.get("total_samples"),
                "failed_centers": summary.get("failed_centers", []),
                "error": progress.get("error"),
            }
        )
    rows.sort(key=lambda row: row["started"] or "")
    return rows[-RECENT_RUNS:]


def coordinator_gauges(status: dict[str, Any]) -> list[Gauge]:
    last = status["last_round"] or {}
    online = Gauge("feddel_center_online", "1 when the SuperLink sees the center online")
    for center in status["centers"]:
        online.add(float(center["connection"] == "online"), center=center["center"])
    return [
        Gauge("feddel_superlink_up", "1 when the SuperLink answers /health")
        .add(float(status["superlink"]["up"])),
        online,
        Gauge("feddel_last_round_finished", "1 when the last round finished, 0 otherwise")
        .add(float(last.get("state") == "finished")),
        Gauge("feddel_last_round_selected", "samples the last round selected")
        .add(float(last.get("selected") or 0)),
        Gauge("feddel_refused_requests", "requests the gate refused (audit log)")
        .add(status["refusals_total"]),
        Gauge("feddel_errors", "problems status reports").add(len(status["errors"])),
    ]  # fmt: skip


def _print_status(status: dict[str, Any]) -> None:
    link = status["superlink"]
    state = "[green]up[/]" if link["up"] else f"[red]{escape(str(link['problem']))}[/]"
    console.print(f"[bold]SuperLink {link['address']}[/]: {state}")
    centers = Table(title="centers", title_justify="left")
    for column in ("center", "node", "connection", "online since", "offline since"):
        centers.add_column(column)
    for row in status["centers"]:
        centers.add_row(row["center"], row["node"] or "-", row["connection"],
                        row["online_at"] or "-", row["offline_at"] or "-")  # fmt: skip
    console.print(centers if status["centers"] else "centers: none admitted yet")
    runs = Table(title="recent rounds", title_justify="left")
    for column in ("run", "id", "operator", "method", "budget", "state", "phases", "selected"):
        runs.add_column(column)
    for row in status["runs"]:
        last = row["last_phase"] or {}
        phases = f"{row['phases']} (last {last.get('phase', '-')})"
        selected = (
            "-" if row["selected"] is None else f"{row['selected']} of {row['total_samples']}"
        )
        runs.add_row(row["run"], str(row["run_id"]), row["operator"] or "-", str(row["method"]),
                     f"{row['budget']:g}", row["state"], phases, selected)  # fmt: skip
    console.print(runs if status["runs"] else "recent rounds: none")
    for entry in status["refusals"][-5:]:
        reason = escape(str(entry.get("reason", "")))
        console.print(
            f"[yellow]refused {entry['action']} by {entry['actor']} from "
            f"{entry.get('peer', '?')} at {entry['time']}: {reason}[/]"
        )
    for error in status["errors"]:
        console.print(f"[red]{escape(error)}[/]")
    if not status["errors"]:
        console.print("no problems found")
