"""Shared test setup: one BLAS/OpenMP/torch thread per process.

On a shared 2-core machine, multi-threaded BLAS and OpenMP busy-wait against each other and a
0.1 s k-means test can take 6 s; results do not depend on the thread count.
"""

import os

import pytest
import torch
from threadpoolctl import threadpool_limits

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


@pytest.fixture(autouse=True, scope="session")
def _single_threaded():
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
