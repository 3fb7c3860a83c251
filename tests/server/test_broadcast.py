"""The coordinator's broadcast over the in-process Grid: failures are named, quorum enforced."""

import threading

import numpy as np
import pytest
from flwr.app import Message
from flwr.clientapp import ClientApp

from feddel.client import app as client_app
from feddel.client.handlers import CenterPaths
from feddel.common.privacy import secagg
from feddel.common.privacy.policy import PrivacyPolicy
from feddel.common.wire.protocol import (
    LloydReply,
    LloydRequest,
    SeedReply,
    SeedRequest,
    roster_array,
    sum_ring,
)
from feddel.server.broadcast import Broadcaster, RoundFailed
from feddel.simulations.inprocess import InProcessGrid

K, D = 3, 4
ONES = {"count": (5,)}  # the layout of the masking centers' secure sum: five counts of 1
RELEASE = threading.Event()


def _center_app(behaviour: dict[int, str]) -> ClientApp:
    """Centers by partition: 'ok' answers, 'raise' crashes, 'hang' never answers in time,
    'nan' sends a poisoned reply."""
    app = ClientApp()

    @app.query("seed")
    def lloyd(message, context):
        kind = behaviour.get(int(context.node_config["partition-id"]), "ok")
        if kind == "raise":
            raise RuntimeError("disk on fire")
        if kind == "hang":
            RELEASE.wait(5)
        LloydRequest.from_record(message.content)
        reply = SeedReply(
            centroids=np.full((K, D), np.nan if kind == "nan" else 1.0), counts=np.full(K, 10)
        )
        return Message(reply.to_record(), reply_to=message)

    return app


def _request():
    """Any request works here: the fake centers answer it with a SeedReply."""
    return LloydRequest(
        run="r", attempt=0, roster=np.zeros((1, 32), dtype=np.int64), method="feddel",
        noise_sigma=0.0, count_sigma=0.0, samples=100,
        cells="c", open=np.ones(K, dtype=np.int64),
    )  # fmt: skip


def test_broadcast_collects_all_replies_and_counts_bytes():
    grid = InProcessGrid(_center_app({}), num_nodes=4)
    cast = Broadcaster(grid, min_fraction=0.5, timeout=10, group="g")
    replies = cast.ask(_request(), SeedReply)
    grid.shutdown()
    assert len(replies) == 4 and not cast.failures
    assert cast.traffic.up["seed"] > 4 * K * D * 8
    assert cast.traffic.down["seed"] > 4 * K * D * 8


def test_broadcast_drops_crashing_hanging_and_poisoned_centers_by_name():
    RELEASE.clear()
    grid = InProcessGrid(_center_app({0: "raise", 1: "hang", 2: "nan"}), num_nodes=8, workers=8)
    cast = Broadcaster(grid, min_fraction=0.5, timeout=1.0, group="g")
    replies = cast.ask(_request(), SeedReply)
    RELEASE.set()
    grid.shutdown()
    assert len(replies) == 5
    reasons = {f.center: f.reason for f in cast.failures}
    assert len(reasons) == 3 and all(f.phase == "seed" for f in cast.failures)
    assert any("disk on fire" in r for r in reasons.values())
    assert any("no reply within 1 s" in r for r in reasons.values())
    assert any("NaN" in r for r in reasons.values())


def test_broadcast_fails_the_round_below_min_fraction_naming_centers():
    grid = InProcessGrid(_center_app({0: "raise", 1: "raise"}), num_nodes=3)
    cast = Broadcaster(grid, min_fraction=0.5, timeout=10, group="g")
    with pytest.raises(RoundFailed, match=r"only 1 of 3 centers remain.*disk on fire"):
        cast.ask(_request(), SeedReply)
    grid.shutdown()


def _masking_app(private_keys: dict[int, bytes], crash_on_first_attempt: set[int]) -> ClientApp:
    """Centers that contribute a vector of ones to a secure sum; some crash on attempt 0."""
    app = ClientApp()

    @app.query("lloyd")
    def lloyd(message, context):
        partition = int(context.node_config["partition-id"])
        request = LloydRequest.from_record(message.content)
        if request.attempt == 0 and partition in crash_on_first_attempt:
            raise RuntimeError("power cut")
        ctx = secagg.context(request.run, "lloyd", request.attempt)
        ring = sum_ring(ONES, request)
        masked = secagg.masked_vector(
            np.ones(5), private_keys[partition], request.roster_keys(), ctx, ring
        )
        return Message(LloydReply(masked=masked).to_record(), reply_to=message)

    return app


def test_secure_sum_retries_with_the_survivors_when_a_center_drops():
    keys = {p: secagg.generate_private_key() for p in range(6)}
    grid = InProcessGrid(_masking_app(keys, crash_on_first_attempt={2}), num_nodes=6)
    cast = Broadcaster(grid, min_fraction=0.5, timeout=10, group="g")
    nodes = sorted(grid.get_node_ids())
    cast.public_keys = {node: secagg.public_key(keys[p]) for p, node in enumerate(nodes)}

    def request(roster, attempt):
        return LloydRequest(
            run="r", attempt=attempt, roster=roster_array(roster), method="feddel",
            noise_sigma=0.0, count_sigma=0.0, samples=100,
            cells="c", open=np.ones(1, dtype=np.int64),
        )  # fmt: skip

    total, replies = cast.secure_sum(request, LloydReply, ONES)
    grid.shutdown()
    np.testing.assert_allclose(total, np.full(5, 5.0), atol=1e-6)  # five survivors
    assert len(replies) == 5 and [f.reason for f in cast.failures] == ["RuntimeError: power cut"]


def _policy_app(monkeypatch, tmp_path, strict: set[int]) -> ClientApp:
    """Real ClientApps whose seed handler only checks the center's policy: the centers in
    `strict` allow 4 local centroids, the others the default."""

    def seed(request, paths):
        paths.policy.check_k_local(request.k_local)
        return SeedReply(centroids=np.ones((K, D)), counts=np.full(K, 10))

    def resolve(context):
        partition = int(context.node_config["partition-id"])
        policy = PrivacyPolicy(max_k_local=4) if partition in strict else PrivacyPolicy()
        state = tmp_path / f"state-{partition}"
        return CenterPaths(f"hospital-{partition}", tmp_path, state, policy)

    monkeypatch.setitem(client_app.PHASES, "seed", (SeedRequest, seed))
    return client_app.build_client_app(resolve)


def _seed_request():
    return SeedRequest(run="r", method="feddel", k_local=8, min_count=10, seed=0, noise_sigma=0.05)


def test_a_center_below_its_floor_is_reported_as_refused_and_the_round_goes_on(
    monkeypatch, tmp_path
):
    grid = InProcessGrid(_policy_app(monkeypatch, tmp_path, strict={1}), num_nodes=4)
    cast = Broadcaster(grid, min_fraction=0.5, timeout=10, group="g")
    replies = cast.ask(_seed_request(), SeedReply)
    grid.shutdown()
    assert len(replies) == 3
    [failure] = cast.failures
    assert failure.describe() == (
        "hospital-1 refused: k-local=8 is above this center's max-k-local=4 "
        "(center.toml [privacy]) (seed)"
    )


def test_a_round_every_center_refuses_stops_with_the_refusal(monkeypatch, tmp_path):
    grid = InProcessGrid(_policy_app(monkeypatch, tmp_path, strict={0, 1, 2}), num_nodes=3)
    cast = Broadcaster(grid, min_fraction=0.5, timeout=10, group="g")
    with pytest.raises(RoundFailed, match=r"all 3 centers failed .*: refused: k-local=8 is above"):
        cast.ask(_seed_request(), SeedReply)
    grid.shutdown()


def test_a_failure_after_the_handler_is_redacted_and_an_unwritable_event_log_loses_no_reply(
    monkeypatch, tmp_path
):
    """Turning the reply into a record fails at center 0 (its error names a patient's file);
    center 1's state path is a file, so its phase event cannot be written."""
    secret = tmp_path / "smith_john.png"

    class Unsendable(SeedReply):
        def to_record(self):
            raise OSError(f"cannot write {secret}")

    def seed(request, paths):
        reply_type = Unsendable if paths.name == "hospital-0" else SeedReply
        return reply_type(centroids=np.ones((K, D)), counts=np.full(K, 10))

    def resolve(context):
        partition = int(context.node_config["partition-id"])
        state = tmp_path / f"state-{partition}"
        if partition == 1:
            state.write_text("not a folder")
        return CenterPaths(f"hospital-{partition}", tmp_path, state, PrivacyPolicy())

    monkeypatch.setitem(client_app.PHASES, "seed", (SeedRequest, seed))
    grid = InProcessGrid(client_app.build_client_app(resolve), num_nodes=3)
    cast = Broadcaster(grid, min_fraction=0.5, timeout=10, group="g")
    replies = cast.ask(_seed_request(), SeedReply)
    grid.shutdown()
    assert len(replies) == 2  # hospital-1 answered although its event log is unwritable
    [failure] = cast.failures
    assert failure.reason == "hospital-0: internal error in phase seed; see the center's log"


def test_no_secure_sum_is_asked_of_fewer_centers_than_min_roster():
    grid = InProcessGrid(_masking_app({}, set()), num_nodes=4)
    cast = Broadcaster(grid, min_fraction=0.5, timeout=10, group="g", min_roster=5)
    with pytest.raises(RoundFailed, match="needs at least min-roster=5 centers and only 4 remain"):
        cast.secure_sum(lambda roster, attempt: None, LloydReply, ONES)
    grid.shutdown()
    assert cast.traffic.down == {}  # nothing was sent
