"""Flower's real simulation engine (Ray) with 31 virtual centers on small data."""

import math

import pytest

from feddel.common.config import CurationConfig
from feddel.common.io import read_csv
from feddel.simulations.federated import run_federated
from feddel.simulations.synth import generate_federation


@pytest.mark.integration
def test_ray_simulation_runs_a_31_center_round_like_the_inprocess_engine(tmp_path):
    """Slow-ish (about a minute on 2 cores): Ray starts actors that import torch."""
    generate_federation(tmp_path / "data", centers=31, scale="small", seed=1, size=32)
    config = CurationConfig(image_size=32, k=4, budget=0.1)
    state = tmp_path / "state"
    ray = run_federated(tmp_path / "data", tmp_path / "ray", config, engine="ray", state_root=state)
    local = run_federated(
        tmp_path / "data", tmp_path / "local", config, engine="inprocess", state_root=state
    )
    assert ray.centers == 31 and ray.failed_centers == []
    assert ray.selected == local.selected > 0
    assert abs(ray.selected - math.ceil(0.1 * ray.total_samples)) <= 4 * 16
    ray_rows = {(r["center"], r["sample_id"]) for r in read_csv(tmp_path / "ray" / "selection.csv")}
    local_rows = {
        (r["center"], r["sample_id"]) for r in read_csv(tmp_path / "local" / "selection.csv")
    }
    assert ray_rows == local_rows  # same protocol, same seed: the engine changes nothing
