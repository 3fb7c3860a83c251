"""The Flower ServerApp of the coordinator: run one curation round and write its summary.

Deployed (`flwr run` against a SuperLink), the round's configuration comes from the run config
(defaults in pyproject's [tool.flwr.app.config], overrides with `--run-config`). In simulation,
`build_server_app` receives a ready CurationConfig, because `run_simulation` passes none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from feddel.common.config import CurationConfig
from feddel.common.reports.summary import RoundSummary
from feddel.server.broadcast import Broadcaster
from feddel.server.curation.round import run_round
from feddel.server.report import write_round

log = logging.getLogger(__name__)

ConfigSource = Callable[[Context], CurationConfig]


def config_from_run_config(context: Context) -> CurationConfig:
    return CurationConfig.from_run_config(context.run_config)


def build_server_app(
    config_source: ConfigSource, on_summary: Callable[[RoundSummary], None] | None = None
) -> ServerApp:
    """A ServerApp that runs one round with the config `config_source` gives for the run."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = config_source(context)
        broadcaster = Broadcaster(
            grid,
            min_fraction=config.min_fraction,
            timeout=config.phase_timeout or None,
            group=f"{config.run_name}-0",
            min_centers=config.min_centers,
            connect_timeout=config.connect_timeout,
            min_roster=config.min_roster,
        )
        result = run_round(broadcaster, config)
        out_dir = Path(config.out) / config.run_name
        summary = write_round(result, out_dir)
        log.info(
            "round %s: selected %d of %d samples",
            config.run_name,
            summary.selected,
            summary.total_samples,
        )
        if on_summary is not None:
            on_summary(summary)

    return app


app = build_server_app(config_from_run_config)
