"""What a deployed coordinator and a deployed center share: site configuration files, and
Flower's own programs (flower-superlink, flower-supernode, flwr) run as supervised children.

FedDEL adds no network layer of its own: `feddel-coordinator start` and `feddel-center join`
validate the site's settings, then run Flower's programs with the right flags, relay their
output (to the terminal or journald), stop them cleanly on SIGTERM/SIGINT, and keep the last
lines of their output so a failure can be explained in one line.

Every Flower program started here runs offline: no telemetry, no update check, and no runtime
installation of app dependencies (a hospital server must not fetch packages because a run
asked for them). No Flower import here; only its command-line programs are used.
"""

from __future__ import annotations

import argparse
import collections
import logging
import math
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from rich.text import Text

from feddel.common.cliutil import EXIT_USER_ERROR, err_console
from feddel.common.errors import ConfigError, FedDELError, RunFailed

OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",  # Flower sends usage events unless told not to
    "FLWR_DISABLE_UPDATE_CHECK": "1",  # and asks its servers for newer versions
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # and may `uv sync` an app's deps
}
STOP_TIMEOUT = 20.0  # seconds a Flower program gets to deregister and exit after SIGTERM
TAIL_LINES = 200


def flower_env(flwr_home: str | Path) -> dict[str, str]:
    """The environment for a Flower program: ours, offline, with its own FLWR_HOME.

    FLWR_HOME is where Flower keeps installed apps and the `flwr` CLI's connections; each site
    role gets its own so nothing lands in a user's ~/.flwr. PATH starts with this Python's
    folder because Flower starts its helpers (flower-superexec, flwr-serverapp,
    flwr-clientapp) by name, and a systemd unit or a test runner does not put the venv on PATH.
    """
    home = Path(flwr_home)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(home.resolve()), "PATH": path}


def flower_program(name: str) -> str:
    """Path of a Flower program: the one installed beside this Python first (the venv FedDEL
    runs from), then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ConfigError(
            f"{name} is not installed beside {sys.executable} nor on PATH; "
            "install FedDEL (it brings Flower) into this environment"
        )
    return found


def superlink_health(address: str, ca_cert: str | Path, timeout: float = 5.0) -> str | None:
    """None when the SuperLink at HOST:PORT answers GET /health over TLS (trusting only
    `ca_cert`), else why not, in a few words. /health is open to every TLS client."""
    url = f"https://{address}/health"
    try:
        context = ssl.create_default_context(cafile=str(ca_cert))
        with urllib.request.urlopen(url, context=context, timeout=timeout):
            return None
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        return f"not answering at {url} ({getattr(exc, 'reason', exc)})"


def log_to_stdout(logger: str, fmt: str = "feddel %(message)s") -> None:
    """Send `logger`'s INFO and higher lines to stdout in `fmt`, once per process: a
    deployed process's stdout is what `start`, `join` and `flwr run --stream` relay to the
    operator and the journal, while FedDEL's loggers are otherwise silent below WARNING."""
    target = logging.getLogger(logger)
    if any(getattr(h, "feddel_stdout", False) for h in target.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.feddel_stdout = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(fmt))
    target.addHandler(handler)
    target.setLevel(logging.INFO)
    target.propagate = False


# --- site configuration files --------------------------------------------------------------


def read_site_config(
    path: str | Path, schema: Mapping[str, Mapping[str, type]]
) -> dict[str, dict[str, Any]]:
    """Read a TOML site file; reject unknown sections and keys and wrong types by name.

    `schema` maps section -> key -> type (str, int, float, bool, or list: a list of strings).
    Missing keys are left out, so callers apply defaults and say which required keys are missing.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"configuration file {file} does not exist")
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        raise ConfigError(
            f"{file}: unknown section(s) {', '.join(unknown)}; known: {', '.join(schema)}"
        )
    result: dict[str, dict[str, Any]] = {}
    for section, keys in schema.items():
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{file}: [{section}] must be a table of key = value lines")
        extra = sorted(set(table) - set(keys))
        if extra:
            raise ConfigError(
                f"{file}: unknown key(s) {', '.join(extra)} in [{section}]; "
                f"known: {', '.join(keys)}"
            )
        for key, value in table.items():
            _check_type(file, section, key, value, keys[key])
        result[section] = dict(table)
    return result


def toml_document(values: Mapping[str, str | int | float | bool]) -> str:
    """Flat `key = value` TOML lines (the format of Flower's run and node config files)."""
    return "".join(f"{key} = {_toml_value(value)}\n" for key, value in values.items())


def _toml_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"value {value!r} is not a finite number")
        return repr(value)
    escaped = "".join(
        f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c
        for c in value.replace("\\", "\\\\").replace('"', '\\"')
    )
    return f'"{escaped}"'


def _check_type(file: Path, section: str, key: str, value: Any, kind: type) -> None:
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if kind is list:
        ok = ok and all(isinstance(item, str) for item in value)
    if not ok:
        raise ConfigError(
            f"{file}: [{section}] {key} = {value!r} must be {_KIND_NAMES.get(kind, kind.__name__)}"
        )


_KIND_NAMES = {
    str: "a quoted string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: 'a list of quoted strings, e.g. ["a", "b"]',
}


# --- supervised Flower programs -------------------------------------------------------------


class FlowerProcess:
    """One Flower program as a child: output relayed line by line (to `echo`, and to
    `on_line` for callers that watch for a line) and its last TAIL_LINES lines kept."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        echo: TextIO | None = None,
        on_line: Callable[[str], None] | None = None,
    ):
        self.argv = list(argv)
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._echo = echo
        self._on_line = on_line
        self._process = subprocess.Popen(
            self.argv,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._relay, name=f"relay-{argv[0]}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def poll(self) -> int | None:
        return self._process.poll()

    def wait(self, timeout: float | None = None) -> int:
        code = self._process.wait(timeout)
        self._reader.join(timeout=5)
        return code

    def output(self) -> str:
        return "".join(self.tail)

    def last_line(self) -> str:
        """The last non-empty output line: what a one-line error message quotes."""
        lines = [line.strip() for line in self.tail if line.strip()]
        return lines[-1] if lines else "no output"

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (Flower deregisters and exits), then SIGKILL after `timeout` seconds."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
        return self.wait()

    def _relay(self) -> None:
        stream = self._process.stdout  # never None: Popen(stdout=PIPE)
        for line in stream or ():
            self.tail.append(line)
            if self._on_line is not None:
                self._on_line(line)
            if self._echo is not None:
                self._echo.write(line)
                self._echo.flush()


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """While inside, SIGTERM and SIGINT set the returned event instead of killing Python, so
    the caller can stop its Flower program cleanly (systemd sends SIGTERM on `stop`)."""
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda _signum, _frame: stop.set())
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def add_hold_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hold-on-error", action="store_true",
        help="on a configuration error (exit 2), print it and stay up until stopped instead "
        "of exiting: for containers, whose restart policy cannot tell exit 2 from a crash",
    )  # fmt: skip


def hold_on_error(enabled: bool, command: Callable[[], int]) -> int:
    """Run `command`; with `enabled`, a user error (ConfigError, DataError: exit 2) is printed
    and the process then waits for SIGTERM, so a container does not restart in a loop on a
    mistake that only a person can fix. Failures that may pass by themselves (RunFailed,
    exit 1) still end the process, for the restart policy to retry."""
    try:
        return command()
    except FedDELError as exc:
        if not enabled or isinstance(exc, RunFailed):
            raise
        err_console.print(Text.assemble(("error: ", "bold red"), str(exc)))
        err_console.print("holding until stopped (--hold-on-error): fix the above, then restart")
        with stop_on_signals() as stop:
            stop.wait()
        return EXIT_USER_ERROR
