"""Operator authentication: who may submit, stop and list rounds and register center keys.

Flower 1.41's open-source SuperLink accepts every Control API call (its account authentication
needs Flower's enterprise OIDC plugin). FedDEL's SuperLink (server/deployment/linkserver.py)
plugs an authentication plugin of its own into Flower's account authentication, and its gate
(server/deployment/gate.py) checks a bearer token on every Control API call:

    <state>/operators.json   operator name -> SHA-256 of its secret (never the secret itself)
    <state>/operator.token   the service's own token (operator "coordinator"), mode 0600: used
                             by `start` to register keys, and by `curate`, `status` and
                             `certs revoke` when they run as the service user
    NAME.token               a named operator's token (`feddel-coordinator operator add NAME`),
                             handed to that person; `curate --operator-token FILE` uses it

A token is one line, `NAME:SECRET`. The `flwr` CLI sends it as Flower's own OIDC client sends
an access token: FedDEL writes it into the CLI's credential store for the connection it uses.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import hmac
import json
import re
import secrets
from pathlib import Path

from feddel.common.cliutil import EXIT_OK, console
from feddel.common.deployment.certs import check_name, is_name
from feddel.common.errors import ConfigError
from feddel.common.io import atomic_write_bytes, require_writable_file
from feddel.server.deployment.site import load_site

OPERATORS_FILE = "operators.json"
SERVICE_OPERATOR = "coordinator"
SERVICE_TOKEN_FILE = "operator.token"
CREDENTIALS_FILE = "credentials.yaml"  # the flwr CLI's credential store in $FLWR_HOME
_SECRET = re.compile(r"^[A-Za-z0-9_-]{32,}$")


def add_operator(state: str | Path, name: str, *, force: bool = False) -> str:
    """Create operator `name` and return its token (shown once: only its hash is kept)."""
    check_name(name, "operator")
    operators = _load(state)
    if name in operators and not force:
        raise ConfigError(
            f"operator {name!r} already exists; pass --force to issue a new token (the old "
            "one stops working at once)"
        )
    secret = secrets.token_urlsafe(32)
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    operators[name] = {"sha256": _digest(secret), "created": now}
    _save(state, operators)
    return f"{name}:{secret}"


def remove_operator(state: str | Path, name: str) -> None:
    operators = _load(state)
    if name not in operators:
        known = ", ".join(sorted(operators)) or "none"
        raise ConfigError(f"there is no operator {name!r} (operators: {known})")
    if name == SERVICE_OPERATOR:
        raise ConfigError(
            f"{name!r} is the service's own operator; `feddel-coordinator start` needs it"
        )
    del operators[name]
    _save(state, operators)


def list_operators(state: str | Path) -> dict[str, str]:
    """Operator name -> when it was created (ISO 8601, UTC)."""
    return {name: entry["created"] for name, entry in sorted(_load(state).items())}


def service_token(state: str | Path) -> str:
    """The service's own token: reused while it is still valid, else issued anew (mode 0600)."""
    path = Path(state) / SERVICE_TOKEN_FILE
    if path.is_file():
        token = path.read_text(encoding="ascii", errors="replace").strip()
        if OperatorRegistry(state).identify(token) == SERVICE_OPERATOR:
            return token
    token = add_operator(state, SERVICE_OPERATOR, force=True)
    atomic_write_bytes(path, (token + "\n").encode(), mode=0o600)
    return token


def read_token(path: str | Path) -> str:
    """A token file's `NAME:SECRET`, checked for shape (not validity: the SuperLink decides)."""
    file = Path(path)
    try:
        token = file.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise ConfigError(
            f"operator token {file} does not exist; `feddel-coordinator operator add NAME` "
            "makes one"
        ) from None
    except PermissionError:
        raise ConfigError(
            f"cannot read operator token {file}; run as the service user (sudo -u feddel) or "
            "pass --operator-token FILE with your own token"
        ) from None
    except UnicodeDecodeError:
        token = ""
    name, _, secret = token.partition(":")
    if not (is_name(name) and _SECRET.match(secret)):
        raise ConfigError(f"{file} is not an operator token (one line, NAME:SECRET)")
    return token


class OperatorRegistry:
    """The operators of <state>/operators.json, re-read when the file changes (an operator
    added or removed takes effect without restarting the SuperLink)."""

    def __init__(self, state: str | Path):
        self.path = Path(state) / OPERATORS_FILE
        self._stamp: tuple[int, int] | None = None
        self._digests: dict[str, str] = {}

    def identify(self, token: str | None) -> str | None:
        """The operator whose token this is, or None."""
        name, _, secret = (token or "").partition(":")
        digest = self._current().get(name)
        if digest is None or not secret:
            return None
        return name if hmac.compare_digest(digest, _digest(secret)) else None

    def _current(self) -> dict[str, str]:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp != self._stamp:
            self._digests = {name: entry["sha256"] for name, entry in _load_file(self.path).items()}
            self._stamp = stamp
        return self._digests


def write_cli_credentials(flwr_home: str | Path, address: str, token: str) -> Path:
    """Put `token` into the flwr CLI's credential store for `address` (mode 0600), where
    Flower's OIDC client keeps its access token: every `flwr` call then sends it as
    `Authorization: Bearer`. Flower refreshes only after a 401; the gate answers 403."""
    encoded = base64.b64encode(token.encode()).decode()
    prefix = f"flower.account-auth.{address}"
    store = {  # YAML; JSON is a subset of it
        f"{prefix}.authn-type": base64.b64encode(b"oidc").decode(),
        f"{prefix}.oidc-access-token": encoded,
        f"{prefix}.oidc-refresh-token": encoded,
    }
    return atomic_write_bytes(
        Path(flwr_home) / CREDENTIALS_FILE, json.dumps(store).encode(), mode=0o600
    )


# --- `feddel-coordinator operator add|remove|list` ------------------------------------------


def add_operator_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add", help="create an operator and write its token file",
        description="Create operator NAME and write its token (NAME:SECRET, mode 0600) to "
        "--out; only its hash is kept. Hand the file to that person: `curate --operator-token "
        "FILE` submits as NAME, which centers' policies can allow or refuse.",
    )  # fmt: skip
    add.add_argument("name", metavar="NAME")
    add.add_argument("--out", type=Path, required=True, metavar="FILE", help="token file")
    add.add_argument("--force", action="store_true", help="replace the operator's token")
    remove = actions.add_parser(
        "remove", help="remove an operator: its token stops working at once"
    )
    remove.add_argument("name", metavar="NAME")
    actions.add_parser("list", help="the operators and when each was created")
    for action in actions.choices.values():
        action.add_argument("--config", type=Path, metavar="FILE", help="coordinator.toml")
        action.add_argument("--state", type=Path, metavar="DIR", help="SuperLink state folder")


def run_operator(args: argparse.Namespace) -> int:
    state = load_site(args.config, state=args.state).state
    if args.action == "add":
        require_writable_file(args.out, "--out")  # before the registry keeps a token it lost
        token = add_operator(state, args.name, force=args.force)
        atomic_write_bytes(args.out, (token + "\n").encode(), mode=0o600)
        console.print(f"operator {args.name}: token written to {args.out} (mode 0600); "
                      "give it to that person only, e.g. `feddel-coordinator curate "
                      f"--operator-token {args.out.name}`")  # fmt: skip
    elif args.action == "remove":
        remove_operator(state, args.name)
        console.print(f"operator {args.name} removed; its token no longer works")
    else:
        for name, created in list_operators(state).items():
            console.print(f"{name:<24} created {created}")
    return EXIT_OK


def add_operator_token_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--operator-token", type=Path, metavar="FILE",
        help=f"your operator token (`feddel-coordinator operator add NAME`; default "
        f"<state>/{SERVICE_TOKEN_FILE}, the service's own, readable by the service user)",
    )  # fmt: skip


def operator_token(args: argparse.Namespace, state: Path) -> str:
    """The token of --operator-token, else the service's own in `state`."""
    return read_token(args.operator_token or state / SERVICE_TOKEN_FILE)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _load(state: str | Path) -> dict[str, dict[str, str]]:
    return _load_file(Path(state) / OPERATORS_FILE)


def _load_file(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise ConfigError(f"{path} is not valid JSON; restore it from a backup") from None
    if not isinstance(data, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("sha256"), str) for entry in data.values()
    ):
        raise ConfigError(f"{path} is not an operator list; restore it from a backup")
    return data


def _save(state: str | Path, operators: dict[str, dict[str, str]]) -> None:
    text = json.dumps(operators, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(Path(state) / OPERATORS_FILE, text.encode(), mode=0o600)
