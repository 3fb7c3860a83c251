"""Phase 5: federated MAE pre-training (FedAvg) on each center's own selected samples.

Compute-matched as in MedDEL: every retention gets the same `rounds x local_steps` optimizer
steps per participating center, one cosine schedule across the rounds (round r trains steps
r*local .. (r+1)*local of it). A probe first asks every center how many training images it
holds; each round then trains at the centers that hold some, or at `centers_per_round` of them
drawn by seed and round (FedAvg's client sampling: on shared CPUs, 4 centers x 25 steps make
more progress than 28 x 4). Weights are averaged by example count (or, with
`center_weighting="equal"`, each center alike); with `fedadam` the average
is a pseudo-gradient for an AdamW at the server instead (server/training/fedadam.py). The global
model is
checkpointed after every round (atomically, with a progress file), so a killed run started
again with the same settings resumes after the last finished round.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from feddel.common.config import DEFAULT_MODEL, with_field_defaults
from feddel.common.errors import ConfigError, DataError, ProtocolError, RunFailed
from feddel.common.io import write_json
from feddel.common.models.embed import EncoderSpec
from feddel.common.models.mae import MAE, checkpoint_extra, load_mae_checkpoint, save_mae_checkpoint
from feddel.common.wire.fedavg import State, fedavg, read_weights, weights_record
from feddel.common.wire.trainproto import TrainReply, TrainRequest
from feddel.server.broadcast import Broadcaster
from feddel.server.training.fedadam import ServerAdam

log = logging.getLogger(__name__)

CHECKPOINT, PROGRESS = "checkpoint.pt", "progress.json"
# How the round's centers weigh in the average: by training images (McMahan et al.), or each
# center alike, a center-balanced objective (docs/experiments.md, "FedSGD through the pipeline")
CENTER_WEIGHTINGS = ("examples", "equal")


@dataclass(frozen=True)
class PretrainConfig:
    """One federated pre-training run. `selection` names the curation run whose manifests are
    the training sets; `uniform_fraction` > 0 trains on a uniform sample instead (warm-up)."""

    run: str
    selection: str = ""
    uniform_fraction: float = 0.0
    model: str = DEFAULT_MODEL
    image_size: int = 64
    init: str = ""  # MAE checkpoint to start from; "" = random init seeded `seed`
    rounds: int = 10
    local_steps: int = 10
    batch_size: int = 16
    lr: float = 1.5e-4
    centers_per_round: int = 0  # 0 = every center that holds training images
    fedadam: bool = False  # centers take SGD steps at `local_lr`, the server AdamW at `lr`
    local_lr: float = 1.0  # FedAdam's center learning rate (1 with 1 local step: FedSGD)
    center_weighting: str = "examples"  # FedAvg's weight per center: "examples" or "equal"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.local_steps < 1 or self.batch_size < 1:
            raise ConfigError(
                f"rounds={self.rounds}, local-steps={self.local_steps} and "
                f"batch-size={self.batch_size} must be >= 1"
            )
        if self.center_weighting not in CENTER_WEIGHTINGS:
            raise ConfigError(
                f"center-weighting={self.center_weighting!r} must be one of "
                f"{', '.join(CENTER_WEIGHTINGS)}"
            )
        if not 0 < self.local_lr <= 1:
            raise ConfigError(f"local-lr={self.local_lr} must be in (0, 1]")
        if self.centers_per_round < 0:
            raise ConfigError(f"centers-per-round={self.centers_per_round} must be >= 0 (0 = all)")
        if not 0.0 <= self.uniform_fraction <= 1.0:
            raise ConfigError(f"uniform-fraction={self.uniform_fraction} must be in [0, 1]")
        if self.uniform_fraction == 0.0 and not self.selection:
            raise ConfigError("pre-training needs a selection run or a uniform-fraction > 0")
        if self.init and not Path(self.init).is_file():
            raise ConfigError(f"init={self.init} is not a file; give an MAE checkpoint")

    @property
    def total_steps(self) -> int:
        return self.rounds * self.local_steps


@dataclass
class PretrainResult:
    checkpoint: Path
    rounds_done: int
    resumed_from: int  # rounds already done when this call started
    examples: dict[str, int]  # center -> training images (centers with none omitted)
    losses: list[float]  # example-weighted mean local loss per round
    wall_s: float
    bytes_down: int  # serialized bytes sent to centers over every round so far (resumes too)
    bytes_up: int  # ... and received from them

    @classmethod
    def of_run(
        cls, out: Path, progress: dict[str, Any], resumed_from: int, started: float, **traffic: int
    ) -> PretrainResult:
        """The result of the run in `out` after `progress` (`started`: its perf_counter)."""
        return cls(
            out / CHECKPOINT,
            progress["rounds_done"],
            resumed_from,
            dict(progress["examples"]),
            list(progress["losses"]),
            time.perf_counter() - started,
            **traffic,
        )


def run_pretraining(
    broadcaster: Broadcaster, config: PretrainConfig, out_dir: str | Path
) -> PretrainResult:
    """Run (or resume) the rounds; the global MAE is in `out_dir/checkpoint.pt` afterwards."""
    out = Path(out_dir)
    started = time.perf_counter()
    mae, progress = resume_or_start(config, out)
    resumed_from = progress["rounds_done"]
    server = ServerAdam(mae, config.lr, config.rounds) if config.fedadam else None
    if server is not None and resumed_from:
        server.load(out, resumed_from)
    traffic = _TrafficSince(broadcaster, progress)
    holders = _probe(broadcaster, config) if resumed_from < config.rounds else {}
    equal = config.center_weighting == "equal"
    for round_ in range(resumed_from, config.rounds):
        participants = [holders[name] for name in sample_centers(holders, config, round_)]
        states, replies = _train_round(broadcaster, config, mae, round_, participants)
        weights = [1 if equal else replies[node].examples for node in states]
        averaged = fedavg(list(states.values()), weights)
        if server is None:
            mae.load_state_dict(averaged)
        else:
            server.step(averaged, round_)
        progress["rounds_done"] = round_ + 1
        progress["examples"] = {replies[n].center: replies[n].examples for n in states}
        progress["losses"].append(_mean_loss([replies[n] for n in states]))
        progress.update(traffic.totals())
        commit(out, mae, server, progress)
        log.info(
            "pretrain %s: round %d/%d, %d centers, loss %.4f",
            config.run,
            round_ + 1,
            config.rounds,
            len(states),
            progress["losses"][-1],
        )
    return PretrainResult.of_run(out, progress, resumed_from, started, **traffic.totals())


def commit(out: Path, mae: MAE, server: ServerAdam | None, progress: dict[str, Any]) -> None:
    """Save the state after `progress["rounds_done"]` rounds. The checkpoint carries its
    progress: that one atomic file is the commit point; the server's state is written before
    it and the older states removed after it, so a kill anywhere leaves a resumable run."""
    done = progress["rounds_done"]
    if server is not None:
        server.save(out, done)
    save_mae_checkpoint(mae, out / CHECKPOINT, extra={"round": done, "progress": progress})
    write_json(out / PROGRESS, progress)  # a readable copy
    if server is not None:
        server.prune(out, done)


class _TrafficSince:
    """The run's bytes each way: those of earlier calls (in `progress`, so a resumed run keeps
    counting) plus what `broadcaster` moved for pre-training since this call began."""

    def __init__(self, broadcaster: Broadcaster, progress: dict[str, Any]):
        self._traffic = broadcaster.traffic
        self._earlier = (progress.get("bytes_down", 0), progress.get("bytes_up", 0))
        self._start = self._now()

    def _now(self) -> tuple[int, int]:
        phase = TrainReply.ACTION
        return self._traffic.down.get(phase, 0), self._traffic.up.get(phase, 0)

    def totals(self) -> dict[str, int]:
        (down, up), (down0, up0), (before_down, before_up) = self._now(), self._start, self._earlier
        return {"bytes_down": before_down + down - down0, "bytes_up": before_up + up - up0}


def _mean_loss(replies: list[TrainReply]) -> float:
    """The round's loss per training image, whatever the centers' weights in the average."""
    return sum(r.loss * r.examples for r in replies) / sum(r.examples for r in replies)


def train_request(config: PretrainConfig, round_: int, steps: int) -> TrainRequest:
    return TrainRequest(
        run=config.run,
        round=round_,
        selection=config.selection,
        uniform_fraction=config.uniform_fraction,
        model=config.model,
        image_size=config.image_size,
        steps=steps,
        step_offset=round_ * config.local_steps,
        total_steps=config.total_steps,
        batch_size=config.batch_size,
        lr=config.local_lr if config.fedadam else config.lr,
        seed=config.seed,
        local_sgd=config.fedadam,
    )


def _probe(broadcaster: Broadcaster, config: PretrainConfig) -> dict[str, int]:
    """Center name -> node id of every live center that holds training images."""
    replies = broadcaster.ask(train_request(config, 0, steps=0), TrainReply)
    holders = {reply.center: node for node, reply in replies.items() if reply.examples > 0}
    if not holders:
        raise RunFailed(
            f"pre-training {config.run}: no center holds training images of {_source(config)}; "
            "run the curation round first (its manifests are the training sets)"
        )
    return holders


def sample_centers(holders: Iterable[str], config: PretrainConfig, round_: int) -> list[str]:
    """The round's centers (sorted names): all holders, or `centers_per_round` of them drawn by
    (seed, round). Drawn by center name, not node id, so a resumed run trains the same ones."""
    names = sorted(holders)
    count = config.centers_per_round
    if 0 < count < len(names):
        rng = np.random.default_rng([config.seed, round_])
        names = sorted(rng.choice(names, size=count, replace=False).tolist())
    return names


def _source(config: PretrainConfig) -> str:
    if config.uniform_fraction:
        return f"a {config.uniform_fraction:g} uniform sample"
    return f"selection '{config.selection}'"


def _train_round(
    broadcaster: Broadcaster,
    config: PretrainConfig,
    mae: MAE,
    round_: int,
    participants: list[int],
) -> tuple[dict[int, State], dict[int, TrainReply]]:
    reference = mae.state_dict()
    request = train_request(config, round_, config.local_steps).with_weights(
        weights_record(reference)
    )
    states: dict[int, State] = {}

    def check(node: int, reply: TrainReply) -> None:
        if reply.examples > 0:
            if reply.weights is None:
                raise ProtocolError("TrainReply: trained but sent no weights")
            states[node] = read_weights(reply.to_record(), reference, "TrainReply")

    replies = broadcaster.ask(request, TrainReply, participants, check)
    states = {node: states[node] for node in replies if node in states}
    if not states:
        raise RunFailed(
            f"pre-training round {round_}: none of the {len(participants)} centers asked "
            f"trained on {_source(config)} (they dropped out or lost their images)"
        )
    return states, replies


def resume_or_start(config: PretrainConfig, out: Path) -> tuple[MAE, dict[str, Any]]:
    """The last checkpoint when `out` holds a run with these settings, else a start (settings
    added since that run was written count as their defaults)."""
    settings = dataclasses.asdict(config)
    progress_path = out / PROGRESS
    if progress_path.is_file() and (out / CHECKPOINT).is_file():
        progress = json.loads(progress_path.read_text())
        if with_field_defaults(progress.get("config", {}), PretrainConfig) != settings:
            raise ConfigError(
                f"{out} holds a pre-training run with other settings; use another output "
                f"folder or delete {progress_path} to start over"
            )
        # a kill between the checkpoint and progress.json leaves the checkpoint one round ahead
        progress = checkpoint_extra(out / CHECKPOINT).get("progress", progress)
        log.info("pretrain %s: resuming after round %d", config.run, progress["rounds_done"])
        return load_mae_checkpoint(out / CHECKPOINT), progress
    if config.init:
        mae = load_mae_checkpoint(config.init)
        if mae.spec.model != config.model or mae.spec.image_size != config.image_size:
            raise DataError(
                f"init={config.init} holds {mae.spec.model} at {mae.spec.image_size} px; "
                f"the run trains {config.model} at {config.image_size} px"
            )
    else:
        mae = MAE(EncoderSpec(config.model, config.image_size, seed=config.seed))
    return mae, {"config": settings, "rounds_done": 0, "examples": {}, "losses": []}
