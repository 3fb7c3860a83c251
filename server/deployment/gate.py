"""The gate in front of FedDEL's SuperLink: who may reach which of its APIs.

Flower 1.41 serves the Fleet API (SuperNodes), the Control API (operators: runs, keys), the
Runtime API (the coordinator's own ServerApp) and /docs on one HTTPS port. The gate, an ASGI
layer around Flower's app (server/deployment/linkserver.py), sorts every request:

- `/health` and the Fleet API (`/v1/fleet/...`) are open to every TLS client; Flower's node
  authentication decides which SuperNodes get in. When it refuses one, the gate says why, in
  one line on both sides (the SuperNode prints the gate's reason): the key is not registered,
  was revoked, or belongs to a center that is already connected.
- Everything else (Control and Runtime APIs, /docs, /openapi.json) answers only clients from
  the operator networks (loopback unless coordinator.toml's `operators-from` adds more).
- Every Control API call needs an operator token (server/deployment/operators.py). Starting a
  run also needs the run config's `operator` to name the token's holder (what each center's
  policy checks) and a configuration-only FedDEL app (server/deployment/fab.py); registering a
  key needs a key the coordinator admitted with `certs add-center`.
- Starting or stopping runs and registering or unregistering keys are written to the audit
  log, allowed or refused, with the operator and the address the call came from.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.common.constant import FAB_MAX_SIZE
from flwr.proto.control_pb2 import (  # pylint: disable=no-name-in-module
    RegisterNodeRequest,
    StartRunRequest,
    StopRunRequest,
    UnregisterNodeRequest,
)
from flwr.proto.fleet_pb2 import ActivateNodeRequest  # pylint: disable=no-name-in-module
from google.protobuf.message import DecodeError

from feddel.common.deployment.audit import AuditLog
from feddel.common.deployment.certs import (
    KnownKey,
    key_fingerprint,
    known_center_keys,
    presented_key,
    spki,
)
from feddel.server.deployment.fab import OPERATOR_KEY, check_fab
from feddel.server.deployment.operators import OperatorRegistry
from feddel.server.deployment.site import Network

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

FLEET_PREFIX = "/v1/fleet/"
CONTROL_PREFIX = "/v1/control/"
OPEN_PATHS = ("/health",)
ACTIVATE_PATH = "/v1/fleet/activate-node"
AUDITED = {
    "/v1/control/start-run": "start-run",
    "/v1/control/stop-run": "stop-run",
    "/v1/control/register-node": "register-key",
    "/v1/control/unregister-node": "unregister-key",
}
MAX_BODY = FAB_MAX_SIZE + (1 << 20)  # a start-run request carries the FAB


@dataclass(frozen=True)
class GateSettings:
    certs: Path  # centers/ and revoked/: the keys the coordinator admitted or revoked
    operators: OperatorRegistry
    networks: tuple[Network, ...]
    audit: AuditLog


class Refusal(Exception):
    """A request the gate answers itself: HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Gate:
    """ASGI middleware that sorts requests before Flower sees them (see the module docstring)."""

    def __init__(self, app: ASGIApp, settings: GateSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, peer = scope["path"], _peer(scope)
        try:
            if path == ACTIVATE_PATH:
                await self._activation(scope, receive, send, peer)
            elif path in OPEN_PATHS or path.startswith(FLEET_PREFIX):
                await self.app(scope, receive, send)
            elif not self._from_operator_network(peer):
                raise Refusal(
                    403,
                    f"{path} answers the coordinator's operators only (from "
                    f"{', '.join(map(str, self.settings.networks))}; `operators-from` in "
                    "coordinator.toml adds more)",
                )
            elif path.startswith(CONTROL_PREFIX):
                await self._control(scope, receive, send, peer)
            else:
                await self.app(scope, receive, send)
        except Refusal as refusal:
            log.warning("refused %s %s from %s: %s", scope["method"], path, peer, refusal.reason)
            await _answer(send, refusal.status, refusal.reason)

    def _from_operator_network(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack listener's view of an IPv4 client
        return any(address in network for network in self.settings.networks)

    # --- Control API ----------------------------------------------------------------------

    async def _control(self, scope: Scope, receive: Receive, send: Send, peer: str) -> None:
        action = AUDITED.get(scope["path"])
        operator = self.settings.operators.identify(_bearer(scope))
        if operator is None:
            if action is not None:
                self.settings.audit.append(
                    action, actor="unauthenticated", outcome="refused", peer=peer
                )
            raise Refusal(
                403,
                "operator authentication failed: this call needs an operator token "
                "(`feddel-coordinator operator add NAME` makes one)",
            )
        if action is None:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        try:
            details = _CHECKS[action](self, body, operator)
        except Refusal as refusal:
            self.settings.audit.append(
                action, actor=operator, outcome="refused", peer=peer, reason=refusal.reason
            )
            raise
        status = await _forward(self.app, scope, body, receive, send)
        outcome = "allowed" if status < 400 else f"failed (HTTP {status})"
        self.settings.audit.append(action, actor=operator, outcome=outcome, peer=peer, **details)
        log.info("%s by %s from %s: %s %s", action, operator, peer, outcome, details)

    def _check_start_run(self, body: bytes, operator: str) -> dict[str, Any]:
        request = _decode(StartRunRequest, body)
        config = {key: _scalar(value) for key, value in request.override_config.items()}
        details = {key: config.get(key) for key in ("run-name", "method", "budget")}
        if config.get(OPERATOR_KEY) != operator:
            raise Refusal(
                403,
                f"the run config says operator = {config.get(OPERATOR_KEY)!r} but the token "
                f"belongs to {operator!r}; submit rounds with `feddel-coordinator curate`",
            )
        if request.app_spec or not request.fab.content:
            raise Refusal(
                403, "only a FedDEL round built by `feddel-coordinator curate` can run here"
            )
        reason = check_fab(request.fab.content)
        if reason is not None:
            raise Refusal(403, reason)
        return details

    def _check_register_key(self, body: bytes, operator: str) -> dict[str, Any]:
        request = _decode(RegisterNodeRequest, body)
        key = presented_key(request.public_key)
        known = known_center_keys(self.settings.certs).get(spki(key)) if key else None
        if key is None or known is None or known.revoked:
            what = "revoked" if known else "not admitted by the coordinator"
            raise Refusal(
                403,
                f"this key is {what}: keys enter the federation only through "
                "`feddel-coordinator certs add-center NAME --public-key FILE`",
            )
        return {"center": known.center, "key": known.fingerprint}

    def _check_stop_run(self, body: bytes, operator: str) -> dict[str, Any]:
        return {"run_id": _decode(StopRunRequest, body).run_id}

    def _check_unregister_key(self, body: bytes, operator: str) -> dict[str, Any]:
        return {"node_id": _decode(UnregisterNodeRequest, body).node_id}

    # --- Fleet API: activation -------------------------------------------------------------

    async def _activation(self, scope: Scope, receive: Receive, send: Send, peer: str) -> None:
        """Forward a SuperNode's activation; when Flower refuses it, replace Flower's generic
        "Failed to activate SuperNode." by the reason, and log and audit it here too."""
        body = await _read_body(receive)
        try:
            key = presented_key(ActivateNodeRequest.FromString(body).public_key)
        except DecodeError:
            key = None
        known = known_center_keys(self.settings.certs).get(spki(key)) if key else None
        who = known.center if known else "unknown key"

        def explain(status: int, payload: bytes) -> bytes:
            if status < 400:
                log.info("center %s connected from %s", who, peer)
                return payload
            reason = _activation_refusal(key, known)
            log.warning("refused a SuperNode from %s: %s", peer, reason)
            self.settings.audit.append(
                "connect", actor=who, outcome="refused", peer=peer, reason=reason
            )
            return _with_detail(payload, reason)

        await _forward(self.app, scope, body, receive, send, rewrite=explain)


def _activation_refusal(key: Any, known: KnownKey | None) -> str:
    """Why Flower refused to activate a SuperNode with this key, for both sides to read."""
    if key is None:
        return "the SuperNode presented no readable EC public key"
    if known is None:
        return (
            f"this SuperNode's key ({key_fingerprint(key)}) is not registered with this "
            "federation; send center.pub to the coordinator, who runs `feddel-coordinator "
            "certs add-center NAME --public-key center.pub`"
        )
    if known.revoked:
        return f"this SuperNode's key was revoked by the coordinator (center {known.center})"
    return (
        f"center {known.center} is already connected from another SuperNode with this key; "
        "stop the other `feddel-center join`, or wait a minute after an unclean stop"
    )


_CHECKS: dict[str, Callable[[Gate, bytes, str], dict[str, Any]]] = {
    "start-run": Gate._check_start_run,
    "stop-run": Gate._check_stop_run,
    "register-key": Gate._check_register_key,
    "unregister-key": Gate._check_unregister_key,
}


# --- ASGI helpers ---------------------------------------------------------------------------


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


async def _read_body(receive: Receive) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refusal(400, "the client disconnected before sending its request")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise Refusal(413, f"request larger than {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _forward(
    app: ASGIApp,
    scope: Scope,
    body: bytes,
    receive: Receive,
    send: Send,
    rewrite: Callable[[int, bytes], bytes] | None = None,
) -> int:
    """Run `app` on a request whose body was already read; return the response status.
    With `rewrite`, the response body is collected and replaced by rewrite(status, body)."""
    replayed = False
    status = 500
    held: Message | None = None
    collected: list[bytes] = []

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    async def capture(message: Message) -> None:
        nonlocal status, held
        if message["type"] == "http.response.start":
            status = message["status"]
            if rewrite is None:
                await send(message)
            else:
                held = message
            return
        if rewrite is None or message["type"] != "http.response.body" or held is None:
            await send(message)
            return
        collected.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        payload = rewrite(status, b"".join(collected))
        headers = [(k, v) for k, v in held.get("headers", []) if k.lower() != b"content-length"]
        await send({**held, "headers": [*headers, (b"content-length", b"%d" % len(payload))]})
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    await app(scope, replay, capture)
    return status


async def _answer(send: Send, status: int, reason: str) -> None:
    """A JSON error the flwr CLI and SuperNodes print as it is: {"detail": reason}."""
    payload = json.dumps({"detail": reason}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


def _with_detail(payload: bytes, reason: str) -> bytes:
    """Flower's JSON error ({"code": ..., "detail": ...}) with our reason as its detail."""
    try:
        error = json.loads(payload)
    except ValueError:
        return payload
    if not isinstance(error, dict) or "detail" not in error:
        return payload
    return json.dumps({**error, "detail": reason}).encode()


def _decode(message_type: Any, body: bytes) -> Any:
    try:
        return message_type.FromString(body)
    except DecodeError:
        raise Refusal(400, f"the request is not a {message_type.__name__}") from None


def _scalar(value: Any) -> Any:
    """The Python value of a protobuf Scalar (Flower's run-config values)."""
    which = value.WhichOneof("scalar")
    return getattr(value, which) if which else None
