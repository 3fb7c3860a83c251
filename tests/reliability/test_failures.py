"""A center that fails or hangs in any phase is named and the round finishes without it."""

import time

import pytest

from feddel.client import app as client_app
from feddel.common.config import CurationConfig
from feddel.common.errors import DataError
from feddel.server.broadcast import RoundFailed
from feddel.simulations.federated import run_federated
from feddel.simulations.synth import generate_federation

PHASES = ("inventory", "keys", "seed", "lloyd", "score", "select")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    generate_federation(root / "data", centers=5, scale="small", seed=2, size=32)
    return root


def _break(monkeypatch, phase, centers, behaviour):
    request_type, handler = client_app.PHASES[phase]

    def broken(request, paths):
        if paths.name in centers:
            behaviour()
        return handler(request, paths)

    monkeypatch.setitem(client_app.PHASES, phase, (request_type, broken))


def _raise():
    raise DataError("disk unreadable (injected)")


def _run(federation, name, **changes):
    config = CurationConfig(image_size=32, k=4, budget=0.1, **changes)
    return run_federated(
        federation / "data", federation / name, config, engine="inprocess",
        state_root=federation / "state",
    )  # fmt: skip


@pytest.mark.parametrize("phase", PHASES)
def test_failure_in_any_phase_is_named_and_the_round_finishes(federation, monkeypatch, phase):
    _break(monkeypatch, phase, {"center-01"}, _raise)
    summary = _run(federation, f"fail-{phase}")
    (failure,) = summary.failed_centers
    assert failure.phase == phase
    # before the inventory reply the coordinator knows only the node id; the reason names it
    assert failure.center == "center-01" or failure.reason.startswith("center-01: ")
    assert "disk unreadable (injected)" in failure.reason
    assert summary.centers == 4 and "center-01" not in summary.per_center
    assert summary.selected > 0


def test_a_center_that_hangs_past_the_timeout_is_dropped(federation, monkeypatch):
    _break(monkeypatch, "score", {"center-03"}, lambda: time.sleep(8))
    summary = _run(federation, "hang", phase_timeout=4.0)
    assert [(f.center, f.phase) for f in summary.failed_centers] == [("center-03", "score")]
    assert "no reply within 4 s" in summary.failed_centers[0].reason
    assert summary.selected > 0


def test_round_fails_clearly_below_min_fraction(federation, monkeypatch):
    _break(monkeypatch, "seed", {"center-00", "center-01", "center-02"}, _raise)
    with pytest.raises(RoundFailed, match=r"only 2 of 5 centers remain after phase 'seed'"):
        _run(federation, "quorum", min_fraction=0.6)
