"""The server half of FedAdam: one AdamW step along the centers' averaged update."""

import pytest
import torch

from feddel.common.errors import DataError
from feddel.common.models.embed import EncoderSpec
from feddel.common.models.mae import MAE
from feddel.common.wire.fedavg import fedavg
from feddel.server.training.fedadam import ServerAdam


def _mae() -> MAE:
    return MAE(EncoderSpec(image_size=32, seed=0))


def test_first_step_moves_every_weight_by_lr_against_the_example_weighted_update():
    mae = _mae()
    start = {k: v.clone() for k, v in mae.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    # center b moves half as far the other way: weighted 1:3 the mean update is -x/8 (equal
    # weights would give +x/4), and |x| >= 0.5 keeps every sign clear of rounding
    x = {k: torch.rand(v.shape, generator=generator) + 0.5 for k, v in start.items()}
    x = {
        k: v * torch.where(torch.rand(v.shape, generator=generator) < 0.5, -1.0, 1.0)
        for k, v in x.items()
    }
    centers = [{k: start[k] - x[k] for k in start}, {k: start[k] + 0.5 * x[k] for k in start}]
    averaged = fedavg(centers, [1, 3])
    server = ServerAdam(mae, lr=1e-3, rounds=20, weight_decay=0.0)  # warmup: 1 round
    server.step(averaged, 0)
    for name, value in mae.state_dict().items():
        # Adam's bias-corrected first step is lr * sign(gradient), whatever its scale
        expected = start[name] + 1e-3 * torch.sign(x[name])
        assert torch.allclose(value, expected, atol=1e-5), name  # a flip would be 2e-3


def test_state_round_trips_and_a_missing_state_names_the_fix(tmp_path):
    mae = _mae()
    server = ServerAdam(mae, lr=1e-3, rounds=5)
    server.step({k: v - 0.01 for k, v in mae.state_dict().items()}, 0)
    server.save(tmp_path, 1)
    restored = ServerAdam(_mae(), lr=1e-3, rounds=5)
    restored.load(tmp_path, 1)
    first = next(iter(server.optimizer.state.values()))
    again = next(iter(restored.optimizer.state.values()))
    assert torch.equal(first["exp_avg_sq"], again["exp_avg_sq"])
    with pytest.raises(DataError, match=r"progress\.json"):
        restored.load(tmp_path, 2)
