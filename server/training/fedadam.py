"""FedAdam (Reddi et al. 2021): the server steps MAE's AdamW with the centers' averaged update.

Plain FedAvg replaces the global model by the average of what the centers trained, and every
center starts a fresh AdamW each round. Here each center takes plain SGD steps and the average
update, w_global - mean(w_center), is a pseudo-gradient for one AdamW step at the server, which
keeps the moments, the weight decay and the cosine schedule across rounds. With one local step
at local lr 1 this is FedSGD with a server Adam: every optimizer step sees a batch mixed from
the round's centers, which is what MAE needs on small single-site training sets
(docs/experiments.md, "Where the federated gap comes from"). The state is saved after every
round, named by the rounds it has seen, so a killed run resumes exactly.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch

from feddel.common.errors import DataError
from feddel.common.io import atomic_write_bytes
from feddel.common.models.mae import MAE, cosine_factor, mae_adamw
from feddel.common.wire.fedavg import State


class ServerAdam:
    """The server's optimizer over `rounds` rounds (peak `lr`, 5% linear warmup, cosine)."""

    def __init__(self, mae: MAE, lr: float, rounds: int, weight_decay: float = 0.05) -> None:
        self.mae = mae
        self.lr = lr
        self.rounds = rounds
        self.warmup = max(1, round(0.05 * rounds))
        self.optimizer = mae_adamw(mae, lr, weight_decay)

    def step(self, averaged: State, round_: int) -> None:
        """Move the global model by one AdamW step along (global - averaged)."""
        trained = {name: p for name, p in self.mae.named_parameters() if p.requires_grad}
        with torch.no_grad():
            for name, param in trained.items():
                param.grad = param - averaged[name].to(param.dtype)
        untrained = {name: value for name, value in averaged.items() if name not in trained}
        self.mae.load_state_dict(untrained, strict=False)  # buffers, frozen parameters
        self.apply(round_)

    def apply(self, round_: int) -> None:
        """One AdamW step of round `round_` along the gradients the parameters hold (`step`
        sets them from the centers' update; simulations/science/fastsgd.py by backward)."""
        factor = cosine_factor(round_, self.rounds, self.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * factor
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def save(self, out: Path, rounds_done: int) -> Path:
        buffer = io.BytesIO()
        torch.save(self.optimizer.state_dict(), buffer)
        return atomic_write_bytes(state_path(out, rounds_done), buffer.getvalue())

    def load(self, out: Path, rounds_done: int) -> None:
        path = state_path(out, rounds_done)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.optimizer.load_state_dict(state)
        except (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as exc:
            raise DataError(
                f"{path}: cannot read the server optimizer to resume ({exc}); delete "
                f"{out / 'progress.json'} to start the run over"
            ) from exc

    @staticmethod
    def prune(out: Path, rounds_done: int) -> None:
        """Remove the states of earlier rounds (kept until the new round was committed)."""
        for path in out.glob("server-adam-r*.pt"):
            if path != state_path(out, rounds_done):
                path.unlink(missing_ok=True)


def state_path(out: Path, rounds_done: int) -> Path:
    return out / f"server-adam-r{rounds_done}.pt"
