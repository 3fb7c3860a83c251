"""The coordinator's site settings: coordinator.toml, overridden by command-line flags.

    [coordinator]
    certs = "/etc/feddel/certs"            # `feddel-coordinator certs init --out` folder
    state = "/var/lib/feddel/coordinator"  # superlink.db, Flower's app folder, registrations
    host = "0.0.0.0"                       # address the SuperLink listens on
    port = 9093
    runs = "/var/lib/feddel/coordinator/runs"  # where `curate` writes summaries and reports
    operators-from = ["10.0.5.7"]          # besides loopback: where operators may call from

    [round]                                # defaults for every `curate` (any config key)
    min-centers = 31

Relative paths are taken relative to the file's folder, so a site folder can be moved whole.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feddel.common.config import CurationConfig
from feddel.common.deployment.sites import read_site_config
from feddel.common.errors import ConfigError

DEFAULT_CERTS = Path("/etc/feddel/certs")
DEFAULT_STATE = Path("/var/lib/feddel/coordinator")
DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 9093
LOOPBACK = ("127.0.0.1/32", "::1/128")  # operators on the coordinator itself, and its ServerApp
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_SCHEMA: dict[str, dict[str, type]] = {
    "coordinator": {
        "certs": str,
        "state": str,
        "host": str,
        "port": int,
        "runs": str,
        "operators-from": list,
    },
    "round": {key: type(value) for key, value in CurationConfig().to_run_config().items()},
}


@dataclass(frozen=True)
class CoordinatorSite:
    certs: Path
    state: Path
    host: str
    port: int
    runs: Path
    round: dict[str, Any] = field(default_factory=dict)  # run-config defaults for `curate`
    # Addresses or networks, besides loopback, allowed to reach the operator APIs (Control,
    # Runtime, /docs); centers never need them.
    operators_from: tuple[str, ...] = ()

    @property
    def database(self) -> Path:
        """The SuperLink's state: registered nodes and runs survive a restart."""
        return self.state / "superlink.db"

    @property
    def flwr_home(self) -> Path:
        """FLWR_HOME of the SuperLink, its ServerApps and the registration CLI calls."""
        return self.state / "flwr"

    def round_config(self, overrides: dict[str, Any]) -> CurationConfig:
        """A round's settings: CurationConfig's defaults, then this site's [round], then
        `overrides` (what the operator asked for on the command line)."""
        return CurationConfig.from_run_config({**self.round, **overrides})

    @property
    def local_address(self) -> str:
        """Where programs on this machine reach the SuperLink (always in the certificate)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


def load_site(config: Path | None = None, **flags: Any) -> CoordinatorSite:
    """Built-in defaults, then coordinator.toml (if given), then non-None `flags`."""
    values: dict[str, Any] = {}
    round_defaults: dict[str, Any] = {}
    base = Path.cwd()
    if config is not None:
        sections = read_site_config(config, _SCHEMA)
        values = sections["coordinator"]
        round_defaults = sections["round"]
        base = Path(config).resolve().parent
        CurationConfig.from_run_config(round_defaults)  # fail now, naming the key
    values.update({key: value for key, value in flags.items() if value is not None})
    operator_networks(values.get("operators-from", []))  # fail now, naming the entry
    port = int(values.get("port", DEFAULT_PORT))
    if not 1 <= port <= 65535:
        raise ConfigError(f"port={port} must be in 1..65535")
    state = _path(values.get("state", DEFAULT_STATE), base)
    return CoordinatorSite(
        certs=_path(values.get("certs", DEFAULT_CERTS), base),
        state=state,
        host=str(values.get("host", DEFAULT_HOST)),
        port=port,
        runs=_path(values.get("runs", state / "runs"), base),
        round=round_defaults,
        operators_from=tuple(values.get("operators-from", [])),
    )


def operator_networks(extra: Iterable[str] = ()) -> tuple[Network, ...]:
    """Loopback plus `extra` (`operators-from`: addresses or networks), checked by name."""
    networks = []
    for entry in (*LOOPBACK, *extra):
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"operators-from entry {entry!r} is not an IP address or network, "
                "e.g. 10.0.5.7 or 10.0.5.0/24"
            ) from None
    return tuple(dict.fromkeys(networks))


def _path(value: str | Path, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()
