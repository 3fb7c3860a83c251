"""`feddel-coordinator start`: Flower's SuperLink as FedDEL deploys it.

One `flower-superlink` process with
- TLS on its single HTTPS port (Flower 1.41 serves the Fleet, Control and Runtime APIs on
  `--host`/`--port`): `--ssl-certfile/--ssl-keyfile/--ssl-ca-certfile` from `certs init`;
- SuperNode authentication (`--enable-supernode-auth`): only registered public keys connect;
- no runtime installation of app dependencies (`--disable-runtime-dependency-installation`,
  Flower 1.41 enables it by default);
- its state in a SQLite file (`--database`), so registered nodes and past runs survive a
  restart.

While the SuperLink runs, the centers' keys in certs/centers/ are kept registered: a new
folder is registered within RESCAN_SECONDS, a replaced key (add-center --force) or a removed
folder is unregistered. Node ids are remembered in <state>/registered.json.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
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
from feddel.common.deployment.sites import FlowerProcess, flower_program, stop_on_signals
from feddel.common.errors import RunFailed
from feddel.common.io import require_writable_folder, write_json
from feddel.server.deployment.flwrcli import CONNECTION, error_message, flwr_json, write_connection
from feddel.server.deployment.site import CoordinatorSite, load_site

RESCAN_SECONDS = 10.0
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


def run_start(args: argparse.Namespace) -> int:
    site = load_site(
        args.config, certs=args.certs, state=args.state, host=args.host, port=args.port
    )
    require_writable_folder(site.state, "--state (or [coordinator] state)")
    files = check_superlink_files(site.certs)
    _print_expiry(files)
    site.state.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = write_connection(site.flwr_home, site.local_address, files.ca_cert)
    link = FlowerProcess(superlink_argv(site, files), env, echo=sys.stdout)
    with stop_on_signals() as stop:
        try:
            if _wait_until_healthy(link, site, files.ca_cert, stop):
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
    while not stop.wait(RESCAN_SECONDS) and link.poll() is None:
        registrar.sync()


def superlink_argv(site: CoordinatorSite, files: SuperLinkFiles) -> list[str]:
    return [
        flower_program("flower-superlink"),
        "--ssl-certfile", str(files.server_cert),
        "--ssl-keyfile", str(files.server_key),
        "--ssl-ca-certfile", str(files.ca_cert),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--database", str(site.database),
        "--host", site.host,
        "--port", str(site.port),
    ]  # fmt: skip


class Registrar:
    """Keeps the SuperLink's registered keys equal to the public keys in certs/centers/."""

    def __init__(self, site: CoordinatorSite, env: dict[str, str]):
        self.certs = site.certs
        self.env = env
        self.path = site.state / REGISTRY_FILE
        self.records: dict[str, dict[str, Any]] = (
            json.loads(self.path.read_text()) if self.path.is_file() else {}
        )
        self._seen: dict[str, str] = {}

    def sync(self, *, verify: bool = False) -> int:
        """Register new keys, unregister removed or replaced ones; return the registered count.

        With `verify`, records are checked against the SuperLink's own node list first, so a
        lost or replaced database is repaired instead of trusted.
        """
        keys = registered_centers(self.certs)
        digests = {name: _key_digest(path) for name, path in keys.items()}
        if not verify and digests == self._seen:
            return len(self.records)
        live = self._live_nodes() if verify else None
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
        console.print(f"center {name}: {why}; node {node} {escape(outcome)}")


def _key_digest(path: Path) -> str:
    """The key itself (not its comment) decides whether a registration is current."""
    fields = path.read_text(encoding="ascii", errors="replace").split()
    return hashlib.sha256(" ".join(fields[:2]).encode()).hexdigest()


def _wait_until_healthy(
    link: FlowerProcess, site: CoordinatorSite, ca_cert: Path, stop: threading.Event
) -> bool:
    """True once GET /health answers over TLS; False if stopped; raises if the link died."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    url = f"https://{site.local_address}/health"
    deadline = time.monotonic() + READY_TIMEOUT
    while not stop.is_set():
        if link.poll() is not None:
            raise RunFailed(f"flower-superlink exited with code {link.poll()}: {link.last_line()}")
        try:
            with urllib.request.urlopen(url, context=context, timeout=5):
                return True
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise RunFailed(
                    f"the SuperLink did not answer {url} within {READY_TIMEOUT:g} s"
                ) from None
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
