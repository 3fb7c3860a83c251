"""The coordinator's calls to Flower's `flwr` command-line tool.

In Flower 1.41 `flwr` reaches a SuperLink only through a named connection in
$FLWR_HOME/config.toml (the pyproject `[tool.flwr.federations]` table is legacy), and
registering a SuperNode's public key is a Control API call (`flwr supernode register`) against
a running SuperLink. The Control API is served on the same TLS port as the Fleet API, so the
connection trusts our CA like the centers do, and FedDEL's SuperLink answers it only with an
operator token (server/deployment/operators.py), stored where `flwr` reads it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from feddel.common.deployment.sites import flower_env, flower_program, toml_document
from feddel.common.errors import RunFailed
from feddel.common.io import atomic_write_text
from feddel.server.deployment.operators import write_cli_credentials

CONNECTION = "feddel"  # the connection name in config.toml
CLI_TIMEOUT = 120.0  # seconds for one `flwr` call (it retries while the SuperLink starts)


def write_connection(flwr_home: Path, address: str, ca_cert: Path, token: str) -> dict[str, str]:
    """Write $FLWR_HOME/config.toml with one TLS connection and the operator token `flwr`
    sends on it; return the environment for `flwr`."""
    env = flower_env(flwr_home)
    write_cli_credentials(env["FLWR_HOME"], address, token)
    text = (
        f"[superlink]\n{toml_document({'default': CONNECTION})}\n"
        f"[superlink.{CONNECTION}]\n"
        + toml_document({"address": address, "root-certificates": str(Path(ca_cert).resolve())})
    )
    atomic_write_text(Path(env["FLWR_HOME"]) / "config.toml", text)
    return env


def flwr_json(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run `flwr ARGS --format json`; return its JSON (which has `success` and, on failure,
    `error-message`; `flwr` exits 0 in both cases)."""
    argv = [flower_program("flwr"), *args, "--format", "json"]
    try:
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        command = " ".join(args)
        raise RunFailed(f"`flwr {command}` gave no answer within {CLI_TIMEOUT:g} s") from None
    start = done.stdout.find("{")
    try:
        reply = json.loads(done.stdout[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        reply = None
    if not isinstance(reply, dict):
        return {"success": False, "error-message": (done.stdout + done.stderr).strip()[-500:]}
    return reply


def error_message(reply: dict[str, Any]) -> str:
    """The last line of a failed reply's message (Flower prefixes the connection it used)."""
    lines = str(reply.get("error-message", "no answer")).strip().splitlines()
    return lines[-1] if lines else "no answer"


def boxed_error(output: str) -> str:
    """The message of the last error box `flwr` draws (╭─ Error ─╮ │ text │ ╰─╯) on one line,
    else the last non-empty line of `output`."""
    lines = [line.strip() for line in output.splitlines()]
    tops = [i for i, line in enumerate(lines) if line.startswith("╭")]
    if tops:
        body = []
        for line in lines[tops[-1] + 1 :]:
            if line.startswith("╰"):
                break
            body.append(line.strip("│").strip())
        if text := " ".join(part for part in body if part):
            return text
    filled = [line for line in lines if line]
    return filled[-1] if filled else "no output"
