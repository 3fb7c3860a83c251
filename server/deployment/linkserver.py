"""FedDEL's SuperLink process: Flower 1.41's `flower-superlink`, with operator authentication
and the gate (server/deployment/gate.py) in front of it.

`feddel-coordinator start` runs

    python -m feddel.server.deployment.linkserver --certs DIR --state DIR
        [--operators-from NET,...] -- FLOWER-SUPERLINK-ARGS...

which builds Flower's own SuperLink app from the same flags `flower-superlink` takes, with two
changes: Flower's account authentication gets FedDEL's plugin (operator tokens instead of the
no-op that accepts everyone), and the app is wrapped in the gate. Everything else (TLS, node
authentication, the database, the SuperExec that runs ServerApps) is Flower's code unchanged.

It also turns TLS handshakes that fail into one log line with the reason (plaintext client,
a client that trusts another CA or finds the certificate expired), which Flower leaves silent.
This module uses Flower internals of the 1.41 series that pyproject pins; tests/deploy covers
the calls so that an upgrade that moves them fails a test, not a hospital.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from flwr.common.constant import ACCESS_TOKEN_KEY, NOOP_FLWR_AID, AuthnType
from flwr.supercore.auth.typing import AccountAuthCredentials, AccountAuthLoginDetails, AccountInfo
from flwr.supercore.http_logging import get_uvicorn_log_config
from flwr.supercore.logger import console_handler
from flwr.superlink.auth_plugin import ControlAuthnPlugin
from flwr.superlink.cli.flower_superlink import (
    SuperLinkLifespan,
    _parse_superlink_lifespan_config,
)
from flwr.superlink.main import create_app

from feddel.common.deployment.audit import AuditLog
from feddel.common.deployment.sites import log_to_stdout
from feddel.server.deployment.gate import Gate, GateSettings
from feddel.server.deployment.operators import OperatorRegistry
from feddel.server.deployment.site import operator_networks

log = logging.getLogger("feddel.server.deployment.gate")

# Flower starts extra gRPC servers (Fleet on 9092, Control on 9093) outside the HTTPS app when
# these are "1"; they would bypass the gate, so they are removed from the environment.
_BYPASSING_ENV = ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API")

# OpenSSL's reasons for a failed server-side handshake, in words (the rest are quoted as is).
_HANDSHAKE_REASONS = {
    "HTTP_REQUEST": "the client spoke plain HTTP, not TLS (a SuperNode started with "
    "--insecure, or an http:// address)",
    "WRONG_VERSION_NUMBER": "the client did not speak TLS",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust this SuperLink's CA (it holds "
    "another federation's or an old ca.crt)",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the client finds the SuperLink certificate expired; "
    "renew it with `feddel-coordinator certs init --force`",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client rejected the SuperLink certificate (does it "
    "name the address the client dials?)",
}


class ExplainedSSLObject(ssl.SSLObject):
    """An SSLObject that logs, in one line, why a client's handshake failed."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except ssl.SSLWantReadError:
            raise
        except ssl.SSLError as exc:
            reason = _HANDSHAKE_REASONS.get(exc.reason or "", exc.reason or str(exc))
            log.warning("refused a connection during the TLS handshake: %s", reason)
            raise


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """FedDEL's own flags, then `--`, then flower-superlink's flags."""
    args = list(argv)
    split = args.index("--") if "--" in args else len(args)
    parser = argparse.ArgumentParser(prog="python -m feddel.server.deployment.linkserver")
    parser.add_argument("--certs", type=Path, required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--operators-from", default="")
    return parser.parse_args(args[:split]), args[split + 1 :]


def main(argv: Sequence[str] | None = None) -> None:
    ours, flower_args = parse_args(sys.argv[1:] if argv is None else argv)
    for name in _BYPASSING_ENV:
        os.environ.pop(name, None)
    log_to_stdout(log.name, "%(levelname)-8s: feddel %(message)s")

    sys.argv = ["flower-superlink", *flower_args]  # Flower parses its flags from sys.argv
    config = _parse_superlink_lifespan_config()
    operators = OperatorRegistry(ours.state)
    config.authn_plugin = OperatorTokens(operators)
    settings = GateSettings(
        certs=ours.certs,
        operators=operators,
        networks=operator_networks(filter(None, ours.operators_from.split(","))),
        audit=AuditLog.in_folder(ours.state),
    )
    app = Gate(create_app(config, SuperLinkLifespan), settings)
    server_config = uvicorn.Config(
        app=app,
        host=config.host,
        port=config.port,
        reload=False,
        access_log=True,
        log_config=get_uvicorn_log_config(console_handler.level),
        ssl_keyfile=config.ssl_keyfile,
        ssl_certfile=config.ssl_certfile,
        workers=1,  # Flower's lifespan starts the SuperExec once
    )
    server_config.load()
    if server_config.ssl is not None:
        server_config.ssl.sslobject_class = ExplainedSSLObject
    log.info(
        "FedDEL SuperLink on %s:%s: operator APIs from %s only, operator tokens required",
        config.host,
        config.port,
        ", ".join(map(str, settings.networks)),
    )
    uvicorn.Server(server_config).run()


class OperatorTokens(ControlAuthnPlugin):
    """Flower's account authentication, answered from FedDEL's operator tokens.

    Flower's no-op federation manager admits only its single built-in account, so every
    operator maps to that account id, with the operator's own name as the account name. The
    gate has already refused calls without a valid token; this plugin is the second lock.
    """

    def __init__(self, operators: OperatorRegistry) -> None:
        self.operators = operators

    def get_login_details(self) -> AccountAuthLoginDetails:
        return AccountAuthLoginDetails(AuthnType.NOOP, "", "", 0, 0)  # no interactive login

    def validate_tokens_in_metadata(
        self, metadata: Sequence[tuple[str, str | bytes]]
    ) -> tuple[bool, AccountInfo | None]:
        token = dict(metadata).get(ACCESS_TOKEN_KEY)
        name = self.operators.identify(token.decode() if isinstance(token, bytes) else token)
        return (True, AccountInfo(NOOP_FLWR_AID, name)) if name else (False, None)

    def get_auth_tokens(self, device_code: str) -> AccountAuthCredentials | None:
        return None

    def refresh_tokens(
        self, metadata: Sequence[tuple[str, str | bytes]]
    ) -> tuple[Sequence[tuple[str, str | bytes]] | None, AccountInfo | None]:
        return None, None


if __name__ == "__main__":
    main()
