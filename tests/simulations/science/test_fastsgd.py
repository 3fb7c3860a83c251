"""The fast exact path computes the federated FedSGD run: same gradients, same weights.

Tolerances (measured on the 3-center federation below, 2 of 3 centers per round):
- fp32: the fast gradient equals the federated pseudo-gradient global - mean(w_c) within 1e-5
  relative L2 (measured 0.9e-6 to 2.8e-6: the wire carries w - g in float32), the per-round
  losses within 1e-5, and after 3 rounds the weights' update within 1e-3 (measured 2.4e-4:
  Adam turns rounding noise on gradients that are exactly zero, the attention key biases, into
  steps of up to lr).
- bf16 autocast (what train_mae uses on CPUs with native bf16 and on GPUs): the gradient within
  2e-2 (measured 2e-3 to 3.4e-3: a batch of 8 and two batches of 4 round differently in bf16).
"""

from pathlib import Path

import pytest
import torch

from feddel.client.app import build_client_app
from feddel.client.handlers import CenterPaths
from feddel.common.errors import ConfigError
from feddel.common.models import mae as mae_module
from feddel.common.models.embed import EncoderSpec
from feddel.common.models.mae import MAE, load_mae_checkpoint
from feddel.server.broadcast import Broadcaster
from feddel.server.training import fedadam
from feddel.server.training.pretrain import PretrainConfig, run_pretraining
from feddel.simulations.federated import simulation_resolver
from feddel.simulations.inprocess import InProcessGrid
from feddel.simulations.layout import center_dirs
from feddel.simulations.science import fastsgd
from feddel.simulations.science.fastsgd import run_fast_pretraining
from feddel.simulations.synth import generate_federation

FEDSGD = dict(
    uniform_fraction=0.5, image_size=32, rounds=3, local_steps=1, local_lr=1.0, fedadam=True,
    batch_size=4, centers_per_round=2, lr=1.5e-4, seed=3,
)  # fmt: skip


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fastsgd") / "data"
    generate_federation(root, centers=3, scale="small", seed=0, size=32)
    return root


def _federated(data: Path, state: Path, out: Path, config: PretrainConfig):
    centers = center_dirs(data)
    grid = InProcessGrid(build_client_app(simulation_resolver(centers, state)), 3, workers=2)
    try:
        cast = Broadcaster(grid, min_fraction=1.0, timeout=None, group="t", min_centers=3)
        return run_pretraining(cast, config, out)
    finally:
        grid.shutdown()


def _fast(data: Path, state: Path, out: Path, config: PretrainConfig, **kwargs):
    centers = [CenterPaths(c.name, c, state / c.name) for c in center_dirs(data)]
    return run_fast_pretraining(centers, config, out, **kwargs)


def _gradients(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """Every gradient the server's AdamW is about to apply, in order."""
    seen: list[dict[str, torch.Tensor]] = []
    real = fedadam.ServerAdam.apply

    def spy(self, round_):
        seen.append({n: p.grad.detach().clone() for n, p in self.mae.named_parameters()})
        return real(self, round_)

    monkeypatch.setattr(fedadam.ServerAdam, "apply", spy)
    return seen


def _relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], origin=None) -> float:
    """||a - b|| / ||a - origin|| over every tensor (origin 0: plain relative difference)."""
    origin = origin or {k: torch.zeros_like(v) for k, v in a.items()}
    num = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a)
    return (num / sum(float(((a[k] - origin[k]) ** 2).sum()) for k in a)) ** 0.5


@pytest.mark.parametrize("weighting", ["examples", "equal"])
def test_fast_path_gives_the_federated_gradients_and_weights_in_fp32(
    federation, tmp_path, monkeypatch, weighting
):
    for module in (mae_module, fastsgd):
        monkeypatch.setattr(module, "autocast_dtype", lambda *_a, **_k: None)
    gradients = _gradients(monkeypatch)
    config = PretrainConfig(run="w", center_weighting=weighting, **FEDSGD)
    fed = _federated(federation, tmp_path / "s1", tmp_path / "fed", config)
    fast = _fast(federation, tmp_path / "s2", tmp_path / "fast", config)
    rounds = FEDSGD["rounds"]
    assert len(gradients) == 2 * rounds
    for r in range(rounds):
        assert _relative(gradients[r], gradients[rounds + r]) < 1e-5, f"round {r}"
    assert fast.losses == pytest.approx(fed.losses, rel=1e-5)
    assert fast.examples == fed.examples  # the last round drew the same centers
    start = MAE(EncoderSpec(config.model, config.image_size, seed=config.seed)).state_dict()
    a = load_mae_checkpoint(fed.checkpoint).state_dict()
    b = load_mae_checkpoint(fast.checkpoint).state_dict()
    assert _relative(a, b, origin=start) < 1e-3
    assert (fast.bytes_down, fast.bytes_up) == (0, 0)


def test_fast_path_gradient_agrees_at_the_training_precision(federation, tmp_path, monkeypatch):
    gradients = _gradients(monkeypatch)
    config = PretrainConfig(run="w", **{**FEDSGD, "rounds": 2})
    fed = _federated(federation, tmp_path / "s1", tmp_path / "fed", config)
    fast = _fast(federation, tmp_path / "s2", tmp_path / "fast", config)
    for r in range(2):
        assert _relative(gradients[r], gradients[2 + r]) < 2e-2, f"round {r}"
    assert fast.losses == pytest.approx(fed.losses, rel=1e-3)


def test_fast_path_killed_mid_run_resumes_to_the_same_weights(federation, tmp_path, monkeypatch):
    config = PretrainConfig(run="w", **FEDSGD)
    whole = _fast(federation, tmp_path / "s", tmp_path / "whole", config)
    real, calls = fastsgd._round_gradient, []

    def dies_in_round_three(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fastsgd, "_round_gradient", dies_in_round_three)
    with pytest.raises(KeyboardInterrupt):
        _fast(federation, tmp_path / "s", tmp_path / "split", config, commit_every=2)
    monkeypatch.setattr(fastsgd, "_round_gradient", real)
    resumed = _fast(federation, tmp_path / "s", tmp_path / "split", config, commit_every=2)
    assert (resumed.rounds_done, resumed.resumed_from) == (3, 2)
    assert resumed.losses == whole.losses
    a = load_mae_checkpoint(whole.checkpoint).state_dict()
    b = load_mae_checkpoint(resumed.checkpoint).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("change", [{"fedadam": False}, {"local_steps": 2}, {"local_lr": 0.5}])
def test_fast_path_refuses_anything_but_fedsgd_with_a_server_adam(tmp_path, change):
    config = PretrainConfig(run="w", **{**FEDSGD, **change})
    with pytest.raises(ConfigError, match="fast path"):
        run_fast_pretraining([], config, tmp_path)
