"""`feddel-center join --config center.toml`: this center's Flower SuperNode.

FedDEL checks the site (data folder, state folder, CA, key) before Flower sees it, then runs
`flower-supernode` with TLS (`--root-certificates`: only the federation's CA is trusted), node
authentication (`--auth-supernode-private-key`), and the node config file that tells the
ClientApp where the data and the state are (`data-path`, `state-path`, `center-name`). Flower
1.41 SuperNodes do not install app dependencies unless told to; nothing here tells them to.

The node config also names center.toml itself (`center-config`), so the ClientApp applies the
center's [policy] to every round (client/policy.py).

While the SuperNode runs, its connection is recorded in the state folder's events.jsonl
(connected with its node id, connection lost, connected again), which `feddel-center status`
reports. When the SuperNode gives up, its last lines are turned into one sentence that says
what to fix (FedDEL's SuperLink names the reason itself: key not registered, revoked, or already
connected elsewhere; otherwise wrong CA, certificate not naming the address or expired,
plaintext server), recorded for `status` too. A refusal that can pass by itself (the key is
registered later) exits 1, so systemd tries again; one that needs a person (another CA, a
revoked key, a certificate naming another host) exits 2, which the unit does not restart.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import threading
from pathlib import Path
from typing import NamedTuple

from feddel.client.policy import CENTER_CONFIG_KEY
from feddel.client.site import CenterSite, load_center_site
from feddel.client.state import CenterState
from feddel.common.cliutil import EXIT_OK, console
from feddel.common.deployment.certs import (
    certificate_expiry,
    check_center_private_key,
    describe_expiry,
)
from feddel.common.deployment.sites import (
    FlowerProcess,
    add_hold_argument,
    flower_env,
    flower_program,
    hold_on_error,
    stop_on_signals,
    toml_document,
)
from feddel.common.errors import ConfigError, DataError, RunFailed
from feddel.common.io import atomic_write_text, require_writable_folder

NODE_CONFIG_FILE = "node-config.toml"


def add_join_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, required=True, metavar="FILE",
        help="center.toml: name, data and state folders, SuperLink address, CA and key",
    )  # fmt: skip
    add_hold_argument(parser)


def run_join(args: argparse.Namespace) -> int:
    return hold_on_error(args.hold_on_error, lambda: _join(args.config))


def _join(config: Path) -> int:
    site = load_center_site(config)
    require_writable_folder(site.state, "[center] state in center.toml")
    ca_expires = _check_site(site)
    state = CenterState(site.state)
    env = flower_env(site.flwr_home)
    node_config = site.flwr_home / NODE_CONFIG_FILE
    atomic_write_text(node_config, toml_document(node_config_values(site, config)))
    console.print(
        f"center {site.name} joining {site.address} (CA expires {describe_expiry(ca_expires)}); "
        f"data {site.data} (read-only), state {site.state}"
    )
    state.record("join", superlink=site.address, pid=os.getpid())
    watch = ConnectionWatch(state, site.address)
    with stop_on_signals() as stop:
        node, code = _supervise(supernode_argv(site, node_config), env, watch, stop)
    if stop.is_set():
        state.record("leave", superlink=site.address)
        console.print(f"center {site.name} left the federation")
        return EXIT_OK
    failure = explain_failure(node.output(), site)
    state.record("error", phase="connect", reason=failure.reason, exit_code=code)
    raise (RunFailed if failure.retry else ConfigError)(failure.reason)


def _supervise(
    argv: list[str], env: dict[str, str], watch: ConnectionWatch, stop: threading.Event
) -> tuple[FlowerProcess, int]:
    """Run the SuperNode until it exits or `stop` is set; return it and its exit code. When
    the SuperLink lets the node go (its key was unregistered: Flower then ends "gracefully"),
    start it once more, so that the SuperLink's refusal says why."""
    for attempt in range(2):
        node = FlowerProcess(argv, env, echo=sys.stdout, on_line=watch.line)
        while node.poll() is None and not stop.wait(0.5):
            pass
        code = node.stop()
        if stop.is_set() or attempt or _GRACEFUL not in node.output():
            break
        watch.lost()
    return node, code


def node_config_values(site: CenterSite, config_file: Path) -> dict[str, str]:
    """What the ClientApp reads from its node config (client/app.py paths_from_node_config,
    client/policy.py admit)."""
    return {
        "data-path": str(site.data),
        "state-path": str(site.state),
        "center-name": site.name,
        CENTER_CONFIG_KEY: str(Path(config_file).resolve()),
    }


class ConnectionWatch:
    """Turns the SuperNode's log lines into connection events for `feddel-center status`:
    connected (with the node id), connection lost, connected again. Each change is recorded
    once, not every retry."""

    def __init__(self, state: CenterState, address: str):
        self.state = state
        self.address = address
        self.connected: bool | None = None

    def line(self, text: str) -> None:
        if (match := _NODE_ID.search(text)) is not None:
            self._change(True, node=match.group(1))
        elif "Connection successful" in text or "Received successfully" in text:
            self._change(True)
        elif "Connection attempt failed" in text:
            self.lost()

    def lost(self) -> None:
        self._change(False)

    def _change(self, connected: bool, **details: str) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        event = "connected" if connected else "connection-lost"
        self.state.record(event, superlink=self.address, **details)


_NODE_ID = re.compile(r"SuperNode ID: (\d+)")
_GRACEFUL = "SuperNode terminated gracefully"  # the node stopped without being asked to


def supernode_argv(site: CenterSite, node_config: Path) -> list[str]:
    return [
        flower_program("flower-supernode"),
        "--superlink", site.address,
        "--root-certificates", str(site.ca_cert),
        "--auth-supernode-private-key", str(site.key),
        "--node-config", str(node_config),
        "--host", "127.0.0.1",
        "--port", str(site.runtime_port),
    ]  # fmt: skip


class Failure(NamedTuple):
    reason: str  # one sentence: what happened and what to do
    retry: bool  # may pass by itself: exit 1, so systemd tries again; else exit 2, a person acts


# FedDEL's SuperLink replaces Flower's generic activation error by its reason (gate.py).
_GATE_REASON = re.compile(r"\[code: 2004\] (.+)")
_GENERIC_ACTIVATION = "Failed to activate SuperNode."

# (texts in Flower's output, retry, explanation); the first match wins: specific first.
_FAILURES: tuple[tuple[tuple[str, ...], bool, str], ...] = (
    (
        ("Failed to activate SuperNode",),
        True,
        "the SuperLink at {address} refused to activate this center: either its key {key} "
        "is not registered (ask the coordinator to run `feddel-coordinator certs add-center "
        "{name}` with `feddel-coordinator start` running, and to send you that key), or a "
        "SuperNode with this key is still connected (another `feddel-center join` with the "
        "same key, or one stopped uncleanly less than a minute ago)",
    ),
    (
        ("Hostname mismatch", "IP address mismatch"),
        False,
        "the SuperLink's certificate does not name the host in {address}; ask the coordinator "
        "to reissue it with `feddel-coordinator certs init --force --host` including that name",
    ),
    (
        ("certificate has expired",),
        False,
        "the SuperLink's certificate has expired; ask the coordinator to renew it with "
        "`feddel-coordinator certs init --force`",
    ),
    (
        ("CERTIFICATE_VERIFY_FAILED",),
        False,
        "the server at {address} is not signed by the CA in {ca}: it is not this federation's "
        "SuperLink, or you hold another federation's ca.crt; get ca.crt from the coordinator",
    ),
    (
        ("WRONG_VERSION_NUMBER",),
        False,
        "the server at {address} does not speak TLS; check the address and port",
    ),
)


def explain_failure(output: str, site: CenterSite) -> Failure:
    """Why flower-supernode stopped, in one sentence, from the tail of its output."""
    gate = [m.group(1).strip() for m in _GATE_REASON.finditer(output)]
    if gate and gate[-1] != _GENERIC_ACTIVATION:
        reason = f"the SuperLink at {site.address} refused this center: {gate[-1]}"
        return Failure(reason, retry="revoked" not in gate[-1])
    fields = {"address": site.address, "key": site.key, "ca": site.ca_cert, "name": site.name}
    for needles, retry, message in _FAILURES:
        if any(needle.lower() in output.lower() for needle in needles):
            return Failure(message.format(**fields), retry)
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    exits = [i for i, line in enumerate(lines) if "Exit Code" in line]
    detail = " ".join(lines[exits[-1] : exits[-1] + 3]) if exits else (lines or ["no output"])[-1]
    return Failure(f"the SuperNode stopped: {detail}", retry=True)


def _check_site(site: CenterSite) -> datetime.datetime:
    """Everything Flower would fail on later, named now; returns the CA's expiry."""
    if not site.data.is_dir():
        raise DataError(f"data folder {site.data} does not exist or is not a folder")
    check_center_private_key(site.key)
    if not site.ca_cert.is_file():
        raise ConfigError(
            f"CA certificate {site.ca_cert} does not exist; copy it from the coordinator"
        )
    site.state.mkdir(parents=True, exist_ok=True, mode=0o700)
    expires = certificate_expiry(site.ca_cert)
    if expires <= datetime.datetime.now(datetime.UTC):
        raise ConfigError(
            f"CA certificate {site.ca_cert} expired on {expires:%Y-%m-%d}; get the current "
            "ca.crt from the coordinator"
        )
    return expires
