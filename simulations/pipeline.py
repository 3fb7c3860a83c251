"""The whole FedDEL pipeline on a simulated federation: warm-up, curate, pre-train, evaluate.

For each seed the random-init encoder is scored once as the floor (`scratch`). Then for each
(method, budget) cell: a curation round with the seed's curation encoder, federated MAE
pre-training on the selection from the seed's random init (the same init and the same number of
steps for every cell: compute-matched, so the selection is the only difference), and downstream
evaluation. The curation encoder is a separate artefact, never a cell's starting point: a short
MAE warm-up on a uniform sample (`curation_encoder="warmup"`, docs/design.md) or the random init
itself (`"random-init"`). Control cells (simulations/science/controls.py) take their selection from
the simulation's truth instead of a curation round. `fast` pre-trains with the fast exact
FedSGD path (simulations/science/fastsgd.py) instead of over the wire.

Everything a cell produces lives under RUN/cells/<cell>/ and a finished cell is not run again,
so a killed `compare` started again picks up where it stopped (pre-training also resumes
inside a cell, from its last finished round). RUN/settings.json records the settings and a
fingerprint of FedDEL's code: cells of other settings or other code are never mixed in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.serverapp import Grid

from feddel import client, common, server, simulations
from feddel.client.handlers import CenterPaths
from feddel.common.config import CurationConfig, with_field_defaults
from feddel.common.errors import ConfigError
from feddel.common.io import write_json
from feddel.common.models.embed import EncoderSpec
from feddel.common.models.mae import MAE, save_mae_checkpoint
from feddel.common.models.segmentation import HeadConfig
from feddel.common.reports.metrics import del_score, norm_del
from feddel.common.reports.summary import RoundSummary
from feddel.server.broadcast import Broadcaster
from feddel.server.curation.round import run_round
from feddel.server.report import write_round
from feddel.server.training.downstream import run_evaluation
from feddel.server.training.pretrain import (
    CHECKPOINT,
    PretrainConfig,
    PretrainResult,
    run_pretraining,
)
from feddel.simulations.evaluate import selected_files, truth_measures
from feddel.simulations.federated import gather_manifests
from feddel.simulations.science.controls import (
    CONTROLS,
    Frame,
    control_selection,
    pool_frames,
    write_control_manifests,
)
from feddel.simulations.science.fastsgd import check_fedsgd, run_fast_pretraining

log = logging.getLogger(__name__)

SCRATCH = "scratch"  # the row of the random-init encoder: no pre-training at all
# what curation embeds with: the seed's MAE warm-up on a uniform sample, or its random init
CURATION_ENCODERS = ("warmup", "random-init")


@dataclass(frozen=True)
class Cell:
    method: str
    budget: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-{self.budget:g}-s{self.seed}"


@dataclass(frozen=True)
class PipelineSettings:
    """Pre-training and evaluation settings shared by every cell (compute-matched)."""

    rounds: int = 8
    local_steps: int = 25
    centers_per_round: int = 4
    warmup_rounds: int = 8
    warmup_fraction: float = 0.05
    batch_size: int = 16
    lr: float = 1.5e-4
    fedadam: bool = False
    local_lr: float = 1.0
    center_weighting: str = "examples"
    head: HeadConfig = field(default_factory=HeadConfig)
    alpha: float = 1.0
    curation_encoder: str = "warmup"
    fast: bool = False  # pre-train with the fast exact FedSGD path (no wire)

    def __post_init__(self) -> None:
        if self.curation_encoder not in CURATION_ENCODERS:
            raise ConfigError(
                f"curation-encoder={self.curation_encoder!r} must be one of "
                f"{', '.join(CURATION_ENCODERS)}"
            )
        for rounds in (self.warmup_rounds, self.rounds):  # refused now, not an hour into a run
            config = self.pretrain_config(
                run="check", uniform_fraction=self.warmup_fraction, rounds=rounds
            )
            if self.fast:
                check_fedsgd(config)

    def pretrain_config(self, **run: Any) -> PretrainConfig:
        """A pre-training run (`run`: name, data, init, rounds, seed, model) with these settings."""
        return PretrainConfig(
            local_steps=self.local_steps,
            batch_size=self.batch_size,
            lr=self.lr,
            centers_per_round=self.centers_per_round,
            fedadam=self.fedadam,
            local_lr=self.local_lr,
            center_weighting=self.center_weighting,
            **run,
        )


Row = dict[str, Any]


# What a run folder holds besides its data: `--fresh` removes exactly these.
RESULT_PATHS = (
    "cells", "warmup", "state", "settings.json", "results.csv", "results.md", "results.png",
)  # fmt: skip


SOURCE_FOLDERS = ("client", "common", "server", "simulations")


def code_fingerprint() -> str:
    """A hash of FedDEL's own Python sources, so cells computed by other code are not reused."""
    digest = hashlib.sha256()
    for package in (client, common, server, simulations):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root.parent).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def source_commit() -> str:
    """The git commit FedDEL runs from, "+dirty" when its sources differ from it; "" outside a
    git checkout (an installed wheel). Recorded per cell, beside the code fingerprint."""
    root = Path(simulations.__file__).resolve().parents[1]
    git = ["git", "-C", str(root)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode:
            return ""
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", *SOURCE_FOLDERS],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ""
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def discard_results(out: Path) -> list[Path]:
    """Delete what earlier runs left in `out` (RESULT_PATHS only; a data/ folder stays)."""
    removed = [out / name for name in RESULT_PATHS if (out / name).exists()]
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def _with_new_defaults(stored: dict[str, Any], code: str) -> dict[str, Any]:
    """Stored settings plus the defaults of pipeline settings added since they were written
    (e.g. `center_weighting`): those cells were made with the default, so they still match. Folders
    written before the code fingerprint existed cannot be told apart, so they are taken as is."""
    return {
        "code": code,
        **stored,
        "pipeline": with_field_defaults(stored.get("pipeline", {}), PipelineSettings),
    }


@dataclass
class Pipeline:
    """Runs cells on one Grid; `base` carries the curation settings (k, eta, model, size...)."""

    grid: Grid
    base: CurationConfig
    settings: PipelineSettings
    out: Path
    centers: list[Path]
    state_root: Path
    on_row: Callable[[Row], None] = lambda row: None
    _warm: dict[int, Path] = field(default_factory=dict)
    _frames: list[Frame] = field(default_factory=list)  # the pool with its truth (controls)

    def run(self, cells: list[Cell]) -> list[Row]:
        """Every cell's row, preceded per seed by the random-init (scratch) row."""
        self._check_settings()
        rows: list[Row] = []
        for seed in sorted({cell.seed for cell in cells}):
            rows.append(self._cached(Cell(SCRATCH, 0.0, seed), self._scratch))
            for cell in (c for c in cells if c.seed == seed):
                rows.append(self._cached(cell, self._cell))
        return rows

    def _check_settings(self) -> None:
        """Finished cells are reused, so they must come from the same settings."""
        settings = json.loads(
            json.dumps(
                {
                    "pipeline": dataclasses.asdict(self.settings),
                    "curation": self.base.to_run_config(),
                    "code": code_fingerprint(),
                }
            )
        )
        path = self.out / "settings.json"
        stored = settings
        if path.is_file():
            stored = _with_new_defaults(json.loads(path.read_text()), settings["code"])
        if stored != settings:
            only_code = {**stored, "code": ""} == {**settings, "code": ""}
            raise ConfigError(
                f"{self.out} holds results made with "
                f"{'other FedDEL code' if only_code else 'other settings'} ({path}); "
                "use another --out, or add --fresh to discard them and start over"
            )
        write_json(path, settings)

    def _cached(self, cell: Cell, compute: Callable[[Cell], Row]) -> Row:
        path = self.out / "cells" / cell.name / "row.json"
        if path.is_file():
            row = json.loads(path.read_text())
        else:
            started, cpu = time.perf_counter(), time.process_time()
            row = compute(cell)
            row["wall_s"] = round(time.perf_counter() - started, 1)
            # CPU seconds of every thread: what the cell costs on a machine shared with others
            row["cpu_s"] = round(time.process_time() - cpu, 1)
            row["commit"] = source_commit()
            write_json(path, row)
        self.on_row(row)
        return row

    def _scratch(self, cell: Cell) -> Row:
        spec = EncoderSpec(self.base.model, self.base.image_size, seed=cell.seed)
        result = run_evaluation(self._cast(cell.name), spec, cell.name, self._head(cell.seed))
        return self._row(cell, 0.0, result.miou, {})

    def _cell(self, cell: Cell) -> Row:
        control = cell.method in CONTROLS
        cell_dir = self.out / "cells" / cell.name
        run_name = f"{cell.name}-c0"
        if control:
            retention, quality = self._control(cell, run_name)
        else:
            encoder = self.curation_encoder(cell.seed)
            summary, quality = self._curate(cell, run_name, encoder, cell_dir)
            retention = summary.retention
        pretrain = self._pretrain_config(
            run=f"{run_name}-mae",
            selection=run_name,
            init="",  # the seed's random init: every cell starts from the same weights
            rounds=self.settings.rounds,
            seed=cell.seed,
        )
        done = self._pretrain(pretrain, cell_dir / "mae-c0")
        spec = EncoderSpec(self.base.model, self.base.image_size, str(done.checkpoint), cell.seed)
        result = run_evaluation(self._cast(cell.name), spec, cell.name, self._head(cell.seed))
        row = self._row(cell, retention, result.miou, quality)
        row["curation_encoder"] = "truth" if control else self.settings.curation_encoder
        row["pretrain_engine"] = "fast" if self.settings.fast else "federated"
        if not self.settings.fast:  # the fast path moves nothing
            # the warm-up's bytes are shared by the seed's cells and not counted here
            row["pretrain_gb"] = round((done.bytes_down + done.bytes_up) / 1e9, 4)
        return row

    def curation_encoder(self, seed: int) -> Path:
        """The MAE checkpoint the seed's curation rounds embed with (made once, reused)."""
        if self.settings.curation_encoder == "random-init":
            path = self.out / "warmup" / f"random-s{seed}" / CHECKPOINT
            if not path.is_file():  # optidel needs an MAE (decoder too), not just an encoder
                spec = EncoderSpec(self.base.model, self.base.image_size, seed=seed)
                save_mae_checkpoint(MAE(spec), path)
            return path
        return self.warm_up(seed)

    def warm_up(self, seed: int) -> Path:
        """The seed's warm-up MAE checkpoint (trained once, then reused by every cell)."""
        if seed not in self._warm:
            config = self._pretrain_config(
                run=f"warmup-s{seed}",
                uniform_fraction=self.settings.warmup_fraction,
                rounds=self.settings.warmup_rounds,
                seed=seed,
            )
            out = self.out / "warmup" / f"s{seed}"
            self._warm[seed] = self._pretrain(config, out).checkpoint
        return self._warm[seed]

    def _pretrain(self, config: PretrainConfig, out: Path) -> PretrainResult:
        if self.settings.fast:
            paths = [CenterPaths(c.name, c, self.state_root / c.name) for c in self.centers]
            return run_fast_pretraining(paths, config, out)
        return run_pretraining(self._cast(config.run), config, out)

    def _control(self, cell: Cell, run_name: str) -> tuple[float, dict[str, Any]]:
        """A control's selection from truth, written as the centers' manifests of `run_name`;
        returns its retention and its truth measures."""
        if not self._frames:
            self._frames = pool_frames(self.centers)
        total = len(self._frames)
        chosen = control_selection(
            cell.method, self._frames, math.ceil(cell.budget * total), cell.seed
        )
        write_control_manifests(chosen, self.state_root, run_name)
        selection: dict[str, list[str]] = {}
        for frame in chosen:
            selection.setdefault(frame.center, []).append(frame.file)
        retention = len(chosen) / total
        measures = truth_measures(self.centers, selection, None, retention, cell.seed)
        return retention, measures["selection"] if measures else {}

    def _pretrain_config(self, **run: Any) -> PretrainConfig:
        """A pre-training run (`run`: name, data, init, rounds, seed) of this pipeline's model."""
        return self.settings.pretrain_config(
            model=self.base.model, image_size=self.base.image_size, **run
        )

    def _curate(
        self, cell: Cell, run_name: str, encoder: Path, cell_dir: Path
    ) -> tuple[RoundSummary, dict[str, Any]]:
        config = dataclasses.replace(
            self.base,
            method=cell.method,
            budget=cell.budget,
            seed=cell.seed,
            weights=str(encoder),
            run_name=run_name,
            out=str(cell_dir),
        )
        result = run_round(self._cast(run_name), config)
        run_dir = cell_dir / run_name
        summary = write_round(result, run_dir)
        selection = gather_manifests(self.centers, self.state_root, run_dir, config, summary)
        measures = truth_measures(
            self.centers, selected_files(selection), None, summary.retention, cell.seed
        )
        quality = measures["selection"] if measures else {}
        return summary, quality

    def _cast(self, run: str) -> Broadcaster:
        return Broadcaster(
            self.grid,
            min_fraction=self.base.min_fraction,
            timeout=self.base.phase_timeout or None,
            group=run,
            min_centers=len(self.centers),
            connect_timeout=self.base.connect_timeout,
            min_roster=self.base.min_roster,
        )

    def _head(self, seed: int) -> HeadConfig:
        return dataclasses.replace(self.settings.head, seed=seed)

    def _row(self, cell: Cell, retention: float, miou: float, quality: dict[str, Any]) -> Row:
        alpha = self.settings.alpha
        row: Row = {
            "method": cell.method,
            "budget": cell.budget,
            "R": round(retention, 4),
            "seed": cell.seed,
            "mIoU": round(miou, 4),
            "DEL": round(del_score(miou, retention, alpha), 4),
            "NormDEL": round(norm_del(miou, retention, alpha), 4),
        }
        row.update({f"quality_{key}": value for key, value in quality.items()})
        return row
