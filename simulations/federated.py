"""A simulated federation on one machine: the real ServerApp and ClientApp, two engines.

- `ray`: Flower's simulation engine (`run_simulation`), one virtual SuperNode per center, one
  CPU per virtual client.
- `inprocess`: the apps driven by simulations/inprocess.py.InProcessGrid (no Ray): fast, used by
  tests, and the same protocol byte for byte.

Each virtual center maps its `partition-id` to the i-th center folder of the federation; its
state directory is `<state_root>/<center>`. Its privacy floor is the safe default, or the
[privacy] section of a `center.toml` in its folder, or the `policy` a caller passes for all.
After the round the center manifests are gathered under `RUN/centers/<center>/` and
concatenated into `RUN/selection.csv`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import ServerApp

from feddel.client.app import build_client_app
from feddel.client.handlers import CenterPaths
from feddel.client.site import load_privacy_policy
from feddel.common.config import CurationConfig
from feddel.common.data.manifest import MANIFEST_COLUMNS, manifest_name, read_manifest
from feddel.common.errors import ConfigError, DataError
from feddel.common.io import atomic_write_bytes, write_csv
from feddel.common.privacy.policy import PrivacyPolicy
from feddel.common.reports.summary import RoundSummary
from feddel.server.app import build_server_app
from feddel.simulations.inprocess import InProcessGrid
from feddel.simulations.layout import center_dirs

log = logging.getLogger(__name__)

ENGINES = ("ray", "inprocess")
MAX_WORKERS = 8  # in-process threads at most (see worker_threads)


SITE_FILE = "center.toml"  # a simulated center's own settings; only [privacy] is read


def simulation_resolver(centers: list[Path], state_root: Path, policy: PrivacyPolicy | None = None):
    """Map a virtual node's partition-id to its center folder, state folder and policy."""

    def resolve(context: Context) -> CenterPaths:
        partition = int(context.node_config["partition-id"])
        if not 0 <= partition < len(centers):
            raise DataError(
                f"partition-id {partition} has no center folder (federation has {len(centers)})"
            )
        folder = centers[partition]
        return CenterPaths(folder.name, folder, state_root / folder.name, center_policy(folder))

    def center_policy(folder: Path) -> PrivacyPolicy:
        if policy is not None:
            return policy
        site = folder / SITE_FILE
        return load_privacy_policy(site) if site.is_file() else PrivacyPolicy()

    return resolve


def run_federated(
    data_dir: str | Path,
    out_dir: str | Path,
    config: CurationConfig,
    *,
    engine: str = "ray",
    state_root: str | Path | None = None,
    observer: Callable[[int, Message], None] | None = None,
    policy: PrivacyPolicy | None = None,
) -> RoundSummary:
    """Run one federated curation round over the federation in `data_dir`; return the summary.
    `policy`: every simulated center's privacy floor (default: each its own, see above)."""
    centers = center_dirs(data_dir)
    out = Path(out_dir)
    state = Path(state_root) if state_root else out / "centers"
    config = dataclasses.replace(
        config, out=str(out.parent), run_name=out.name, min_centers=len(centers)
    )
    captured: list[RoundSummary] = []
    server_app = build_server_app(lambda _context: config, on_summary=captured.append)
    workers = worker_threads(config.phase_timeout)
    run_apps(server_app, centers, state, engine, observer, workers, policy)
    if not captured:
        raise DataError(f"the simulated round wrote no summary; see the log above (output: {out})")
    gather_manifests(centers, state, out, config, captured[0])
    return captured[0]


def run_apps(
    server_app: ServerApp,
    centers: list[Path],
    state_root: Path,
    engine: str,
    observer: Callable[[int, Message], None] | None = None,
    workers: int = MAX_WORKERS,
    policy: PrivacyPolicy | None = None,
) -> None:
    """Run `server_app` against one simulated center per folder, on the chosen engine
    (`workers`: in-process threads, see `worker_threads`; `policy`: see run_federated)."""
    if engine not in ENGINES:
        raise ConfigError(f"engine={engine!r} must be one of {', '.join(ENGINES)}")
    client_app = build_client_app(simulation_resolver(centers, state_root, policy))
    if engine == "ray":
        _run_ray(server_app, client_app, len(centers))
        return
    grid = InProcessGrid(
        client_app, len(centers), workers=min(len(centers), workers), observer=observer
    )
    try:
        server_app(
            grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
        )
    finally:
        grid.shutdown()


def worker_threads(phase_timeout: float) -> int:
    """In-process threads for a run. With phase timeouts, one per center up to 8: a hung center
    holds its thread until the phase times out, and the others must not queue behind it.
    Without, one per core (at least 2): more only contend for the GIL. On 2 cores a FedAvg
    round of 4 centers took 7.8 s with 2 threads, 8.1 s with 8 and 10.5 s with 1; a FedSGD
    round 1.13 s with 2, 1.54 s with 8."""
    return MAX_WORKERS if phase_timeout else min(MAX_WORKERS, max(2, os.cpu_count() or 1))


def gather_manifests(
    centers: list[Path], state_root: Path, out: Path, config: CurationConfig, summary: RoundSummary
) -> Path:
    """Copy the manifest of each center that selected in this round (`summary.per_center`) to
    RUN/centers/<center>/ and concatenate RUN/selection.csv. A manifest of the same name from
    an earlier run into the same folder, at a center that has since dropped out, is left out."""
    rows: list[list[str]] = []
    name = manifest_name(config.run_name, 0)
    for folder in centers:
        source = state_root / folder.name / name
        if folder.name not in summary.per_center or not source.is_file():
            continue
        target = out / "centers" / folder.name / name
        if source.resolve() != target.resolve():
            atomic_write_bytes(target, source.read_bytes())
        rows.extend([row[c] for c in MANIFEST_COLUMNS] for row in read_manifest(source))
    return write_csv(out / "selection.csv", MANIFEST_COLUMNS, rows)


def _run_ray(server_app, client_app, num_centers: int) -> None:
    from flwr.simulation import run_simulation

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_centers,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": max(1, min(os.cpu_count() or 1, 2)),
                "include_dashboard": False,
            },
        },
    )
