"""Shared test setup: one BLAS/OpenMP/torch thread per process, and the real-image federation.

On a shared 2-core machine, multi-threaded BLAS and OpenMP busy-wait against each other and a
0.1 s k-means test can take 6 s; results do not depend on the thread count.
"""

import os
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_limits

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


@pytest.fixture(autouse=True, scope="session")
def _single_threaded():
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="session")
def packaged_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real-image federation (`feddel-sim data --source packages`, seed 0, 64 px), built
    once per session (about 5 s): 7 centers, ~450 samples of real medical images with truth."""
    from feddel.simulations.packaged import build_packaged_federation

    out = tmp_path_factory.mktemp("packaged") / "fed"
    build_packaged_federation(out, seed=0, size=64)
    return out
