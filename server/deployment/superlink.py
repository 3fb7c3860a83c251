"""`feddel-coordinator start`: Flower's SuperLink as FedDEL deploys it.

One SuperLink process (Flower's, started through server/deployment/linkserver.py) with
- TLS on its single HTTPS port (Flower 1.41 serves the Fleet, Control and Runtime APIs on
  `--host`/`--port`): `--ssl-certfile/--ssl-keyfile/--ssl-ca-certfile` from `certs init`;
- SuperNode authentication (`--enable-supernode-auth`): only registered public keys connect;
- operator authentication and the gate: the Control API, Runtime API and /docs answer only
  the operator networks, and every Control call needs an operator token;
- no runtime installation of app dependencies (`--disable-runtime-dependency-installation`,
  Flower 1.41 enables it by default);
- its state in a SQLite file (`--database`), so registered nodes and past runs survive a
  restart. A run that was under way when the SuperLink stopped cannot go on (its ServerApp
  died with it): `start` marks it stopped, so it fails cleanly instead of hanging.

While the SuperLink runs, the SuperLink's key registry is kept equal to certs/centers/: a new
folder is registered within RESCAN_SECONDS, a replaced key (add-center --force) or a removed
or revoked folder is unregistered, and any node the SuperLink knows that FedDEL did not
register is unregistered (checked at start and every SWEEP_SECONDS). Node ids are remembered in
<state>/registered.json.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.markup import escape

from feddel.common.cliutil import EXIT_OK, console
from feddel.common.deployment.certs import (
    SuperLinkFiles,
    check_superlink_files,
    describe_expiry,
    registered_centers,
)
from feddel.common.deployment.sites import (
    FlowerProcess,
    add_hold_argument,
    hold_on_error,
    stop_on_signals,
    superlink_health,
)
from feddel.common.errors import RunFailed
from feddel.common.io import require_writable_folder, write_json
from feddel.server.deployment.flwrcli import (
    CONNECTION,
    error_message,
    flwr_json,
    write_connection,
)
from feddel.server.deployment.operators import service_token
from feddel.server.deployment.site import CoordinatorSite, load_site

RESCAN_SECONDS = 10.0
SWEEP_SECONDS = 60.0  # how often the SuperLink's own node list is compared with FedDEL's
READY_TIMEOUT = 120.0  # seconds for the SuperLink to answer /health after it starts
EXPIRY_WARNING_DAYS = 30
REGISTRY_FILE = "registered.json"


def add_site_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and the flags that override it (shared by `start` and `curate`)."""
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="coordinator.toml (see deploy/)"
    )
    parser.add_argument(
        "--certs", type=Path, metavar="DIR", help="certificate folder (default /etc/feddel/certs)"
    )
    parser.add_argument(
        "--state", type=Path, metavar="DIR",
        help="SuperLink state: database, Flower apps, registrations "
        "(default /var/lib/feddel/coordinator)",
    )  # fmt: skip


def add_start_arguments(parser: argparse.ArgumentParser) -> None:
    add_site_arguments(parser)
    parser.add_argument("--host", help="address to listen on (default 0.0.0.0: all interfaces)")
    parser.add_argument("--port", type=int, help="HTTPS port centers dial (default 9093)")
    add_hold_argument(parser)


def run_start(args: argparse.Namespace) -> int:
    return hold_on_error(args.hold_on_error, lambda: _start(args))


def _start(args: argparse.Namespace) -> int:
    site = load_site(
        args.config, certs=args.certs, state=args.state, host=args.host, port=args.port
    )
    require_writable_folder(site.state, "--state (or [coordinator] state)")
    files = check_superlink_files(site.certs)
    _print_expiry(files)
    site.state.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = service_token(site.state)
    env = write_connection(site.flwr_home, site.local_address, files.ca_cert, token)
    started = _now()
    link = FlowerProcess(superlink_argv(site, files), env, echo=sys.stdout)
    with stop_on_signals() as stop:
        try:
            if _wait_until_healthy(link, site, files.ca_cert, stop):
                stop_orphaned_runs(env, started)
                _serve(link, Registrar(site, env), site, stop)
        finally:
            code = link.stop()
    if stop.is_set():
        console.print("SuperLink stopped")
        return EXIT_OK
    raise RunFailed(f"flower-superlink exited with code {code}: {link.last_line()}")


def _serve(
    link: FlowerProcess, registrar: Registrar, site: CoordinatorSite, stop: threading.Event
) -> None:
    """Register the keys, say so, then keep the registrations in step until stopped."""
    count = registrar.sync(verify=True)
    console.print(
        f"SuperLink ready on {site.host}:{site.port}: {count} center(s) registered; new keys "
        f"in {site.certs / 'centers'} are registered within {RESCAN_SECONDS:g} s"
    )
    last_sweep = time.monotonic()
    while not stop.wait(RESCAN_SECONDS) and link.poll() is None:
        sweep = time.monotonic() - last_sweep >= SWEEP_SECONDS
        registrar.sync(verify=sweep)
        last_sweep = time.monotonic() if sweep else last_sweep


def stop_orphaned_runs(env: dict[str, str], started: datetime.datetime) -> list[str]:
    """Mark stopped every run submitted before this SuperLink `started` that the database
    still says is starting or running: its ServerApp died with the previous SuperLink. (A run
    submitted since, in the seconds before this check, is left alone.) Returns their ids."""
    reply = flwr_json(["list", CONNECTION], env)
    if not reply.get("success"):
        raise RunFailed(f"could not list the SuperLink's runs: {error_message(reply)}")
    orphans = [
        str(run["run-id"])
        for run in reply.get("runs", [])
        if str(run.get("status", "")).split(":")[0] in ("starting", "running")
        and _timestamp(run.get("pending-at")) < started
    ]
    for run_id in orphans:
        outcome = flwr_json(["stop", run_id, CONNECTION], env)
        result = "marked stopped" if outcome.get("success") else error_message(outcome)
        console.print(
            f"[yellow]run {run_id} was under way when the SuperLink stopped and cannot go on: "
            f"{escape(result)}; submit the round again under a new --run-name[/]"
        )
    return orphans


def superlink_argv(site: CoordinatorSite, files: SuperLinkFiles) -> list[str]:
    """FedDEL's SuperLink (linkserver.py), then `--` and the flags of `flower-superlink`."""
    return [
        sys.executable, "-m", "feddel.server.deployment.linkserver",
        "--certs", str(site.certs), "--state", str(site.state),
        "--operators-from", ",".join(site.operators_from),
        "--",
        "--ssl-certfile", str(files.server_cert),
        "--ssl-keyfile", str(files.server_key),
        "--ssl-ca-certfile", str(files.ca_cert),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--database", str(site.database),
        "--host", site.host,
        "--port", str(site.port),
    ]  # fmt: skip


def registered_nodes(site: CoordinatorSite) -> dict[str, dict[str, Any]]:
    """What `start` registered: center name -> {"key": digest, "node": node id}."""
    path = site.state / REGISTRY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


class Registrar:
    """Keeps the SuperLink's registered keys equal to the public keys in certs/centers/."""

    def __init__(self, site: CoordinatorSite, env: dict[str, str]):
        self.certs = site.certs
        self.env = env
        self.path = site.state / REGISTRY_FILE
        self.records = registered_nodes(site)
        self._seen: dict[str, str] = {}

    def sync(self, *, verify: bool = False) -> int:
        """Register new keys, unregister removed or replaced ones; return the registered count.

        With `verify`, records are checked against the SuperLink's own node list first, so a
        lost or replaced database is repaired instead of trusted, and any node FedDEL did not
        register (a key that reached the registry some other way) is unregistered.
        """
        keys = registered_centers(self.certs)
        digests = {name: _key_digest(path) for name, path in keys.items()}
        if not verify and digests == self._seen:
            return len(self.records)
        live = self._live_nodes() if verify else None
        if live is not None:
            self._remove_strangers(live)
        for name in sorted(set(self.records) - set(keys)):
            self._unregister(name, "its key folder was removed")
        for name, path in keys.items():
            record = self.records.get(name)
            if record is not None and record["key"] != digests[name]:
                self._unregister(name, "its key was replaced")
                record = None
            if record is None or (live is not None and record["node"] not in live):
                self._register(name, path, digests[name])
        self._seen = digests
        write_json(self.path, self.records)
        return len(self.records)

    def _live_nodes(self) -> set[str]:
        reply = flwr_json(["supernode", "list", CONNECTION], self.env)
        if not reply.get("success"):
            raise RunFailed(f"could not list the SuperLink's nodes: {error_message(reply)}")
        return {
            str(node["node-id"])
            for node in reply.get("nodes", [])
            if node.get("status") != "unregistered"
        }

    def _remove_strangers(self, live: set[str]) -> None:
        ours = {record["node"] for record in self.records.values()}
        for node in sorted(live - ours):
            reply = flwr_json(["supernode", "unregister", node, CONNECTION], self.env)
            outcome = "unregistered" if reply.get("success") else error_message(reply)
            console.print(
                f"[yellow]node {node} is not a center FedDEL registered "
                f"(`certs add-center`): {escape(outcome)}[/]"
            )

    def _register(self, name: str, path: Path, digest: str) -> None:
        reply = flwr_json(
            ["supernode", "register", str(path), CONNECTION, "--name", name], self.env
        )
        if reply.get("success"):
            node = str(reply["node-id"])
            console.print(f"center {name}: key registered (node {node})")
        elif "already in use" in str(reply.get("error-message", "")).lower():
            node = ""
            console.print(f"center {name}: key already registered")
        else:
            console.print(f"[red]center {name}: not registered: {escape(error_message(reply))}[/]")
            return
        self.records[name] = {"key": digest, "node": node}

    def _unregister(self, name: str, why: str) -> None:
        node = self.records.pop(name)["node"]
        if not node:
            console.print(
                f"[yellow]center {name}: {why}, but its node id is unknown; unregister it with "
                "`flwr supernode list` and `flwr supernode unregister NODE_ID`[/]"
            )
            return
        reply = flwr_json(["supernode", "unregister", node, CONNECTION], self.env)
        outcome = "unregistered" if reply.get("success") else error_message(reply)
        if "not found" in outcome.lower() or "unregistered" in outcome.lower():
            outcome = "unregistered"  # `certs revoke` already did it
        console.print(f"center {name}: {why}; node {node} {escape(outcome)}")


def _key_digest(path: Path) -> str:
    """The key itself (not its comment) decides whether a registration is current."""
    fields = path.read_text(encoding="ascii", errors="replace").split()
    return hashlib.sha256(" ".join(fields[:2]).encode()).hexdigest()


def _wait_until_healthy(
    link: FlowerProcess, site: CoordinatorSite, ca_cert: Path, stop: threading.Event
) -> bool:
    """True once GET /health answers over TLS; False if stopped; raises if the link died."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not stop.is_set():
        if link.poll() is not None:
            raise RunFailed(f"flower-superlink exited with code {link.poll()}: {link.last_line()}")
        problem = superlink_health(site.local_address, ca_cert)
        if problem is None:
            return True
        if time.monotonic() > deadline:
            raise RunFailed(f"the SuperLink is {problem} {READY_TIMEOUT:g} s after it started")
        stop.wait(0.5)
    return False


def _print_expiry(files: SuperLinkFiles) -> None:
    soon = files.expires - _now() < datetime.timedelta(days=EXPIRY_WARNING_DAYS)
    style = "yellow" if soon else "default"
    console.print(
        f"[{style}]SuperLink certificate {files.server_cert} expires "
        f"{describe_expiry(files.expires)}[/]"
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _timestamp(text: object) -> datetime.datetime:
    """`flwr list`'s "2026-03-01 12:00:00Z"; an unreadable one counts as long ago."""
    try:
        return datetime.datetime.fromisoformat(str(text))
    except ValueError:
        return datetime.datetime.min.replace(tzinfo=datetime.UTC)
