"""Centers that are empty, tiny, mismatched or go away: the round copes and names them.

One module-wide federation holds three ordinary synthetic centers and five odd ones (an empty
folder, a folder of unreadable files, one image, three images, three black frames); the
shared state root keeps the embedding caches warm, so every round after the first is quick.
tests/reliability/test_failures.py covers one center raising or hanging in each phase; here: a
failure in a later Lloyd round, the quorum lost to hangs, mismatched encoders.
"""

import shutil
import threading
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from feddel.client import app as client_app
from feddel.common.config import CurationConfig
from feddel.common.errors import DataError
from feddel.common.wire.protocol import InventoryReply, InventoryRequest, SeedReply
from feddel.server.broadcast import RoundFailed
from feddel.server.curation.aggregate import encoder_outliers, unique_names
from feddel.simulations.federated import run_federated
from feddel.simulations.layout import center_dirs
from feddel.simulations.synth import generate_federation

ODD = ("corrupt", "dark", "one", "three", "vacant")
MIN_COUNT = 10


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd-centers")
    data = root / "data"
    generate_federation(data, centers=3, scale="small", seed=2, size=32)
    (data / "federation.json").unlink()  # every sub-folder is a center
    frames = sorted((data / "center-00" / "images").glob("*.png"))
    for name, count in (("one", 1), ("three", 3)):
        (data / name).mkdir()
        for frame in frames[:count]:
            shutil.copy(frame, data / name / frame.name)
    (data / "corrupt").mkdir()
    (data / "corrupt" / "empty.png").write_bytes(b"")
    (data / "corrupt" / "noise.png").write_bytes(b"\x89PNG not really")
    (data / "dark").mkdir()
    for level in range(3):
        Image.fromarray(np.full((32, 32, 3), level, np.uint8)).save(data / "dark" / f"{level}.png")
    (data / "vacant").mkdir()
    return root


@pytest.fixture(autouse=True)
def _no_reports(monkeypatch):
    """Contact sheets and plots take most of a small round's time and are tested elsewhere."""
    monkeypatch.setattr("feddel.client.handlers.write_center_report", lambda *args: None)
    monkeypatch.setattr("feddel.server.report.write_coordinator_report", lambda *args: None)


@pytest.fixture
def release():
    """Hung centers wait on this event; it is set when the test ends, so no thread lingers."""
    event = threading.Event()
    yield event
    event.set()


def _run(federation, name, observer=None, **changes):
    config = CurationConfig(image_size=32, k=4, budget=0.1, min_count=MIN_COUNT, **changes)
    return run_federated(
        federation / "data", federation / "runs" / name, config, engine="inprocess",
        state_root=federation / "state", observer=observer,
    )  # fmt: skip


def _wrap(monkeypatch, phase, wrapper):
    """Replace a phase handler by wrapper(request, paths, handler)."""
    request_type, handler = client_app.PHASES[phase]
    monkeypatch.setitem(
        client_app.PHASES,
        phase,
        (request_type, lambda request, paths: wrapper(request, paths, handler)),
    )


def _hang(monkeypatch, phase, centers, release):
    """The named centers stop answering in `phase` (until the test ends)."""

    def wrapper(request, paths, handler):
        if paths.name in centers:
            release.wait(60)
        return handler(request, paths)

    _wrap(monkeypatch, phase, wrapper)


# --- empty, single-image and below-min-count centers ------------------------------------------


@pytest.mark.parametrize("method", ["feddel", "meddel"])
def test_round_with_empty_tiny_and_small_centers_finishes_and_names_them(federation, method):
    names = [d.name for d in center_dirs(federation / "data")]
    replies: dict[str, dict[str, object]] = defaultdict(dict)

    def observe(node_id, message):
        if not message.has_error():
            replies[names[node_id - 1001]][message.metadata.message_type] = message.content

    summary = _run(federation, f"odd-{method}", observer=observe, method=method)
    # a folder without any image file is a configuration error: dropped, named, why
    (vacant,) = summary.failed_centers
    assert (vacant.center, vacant.phase) == ("vacant", "inventory")
    assert "no images found" in vacant.reason
    status = {name: row.status for name, row in summary.per_center.items()}
    assert status == {
        "center-00": "ok", "center-01": "ok", "center-02": "ok",
        "corrupt": "empty", "dark": "small", "one": "small", "three": "small",
    }  # fmt: skip
    corrupt = summary.per_center["corrupt"]
    assert (corrupt.files, corrupt.unreadable, corrupt.samples) == (2, 2, 0)
    assert corrupt.selected == 0
    warnings = " ".join(summary.warnings)
    assert "1 center(s) have no usable image" in warnings and "corrupt (0 of 2 files)" in warnings
    for small in ("dark (3 of 3 files)", "one (1 of 1 files)", "three (3 of 3 files)"):
        assert small in warnings
    if method == "feddel":  # the three black frames are all disruptive: nothing eligible
        assert summary.per_center["dark"].disruptive == 3
        assert summary.per_center["dark"].selected == 0
    assert summary.selected >= 0.9 * 0.1 * summary.total_samples
    # privacy guards hold for the small centers: no local centroid (and no image anywhere)
    for small in ("corrupt", "dark", "one", "three"):
        assert InventoryReply.from_record(replies[small]["query.inventory"]).samples < MIN_COUNT
        assert not SeedReply.from_record(replies[small]["query.seed"]).counts.any()


# --- centers that go away mid-phase -----------------------------------------------------------


def test_center_failing_in_a_later_lloyd_round_leaves_the_others_to_finish(federation, monkeypatch):
    calls = defaultdict(int)

    def wrapper(request, paths, handler):
        calls[paths.name] += 1
        if paths.name == "center-02" and calls[paths.name] == 2:
            raise DataError("state disk full (injected)")
        return handler(request, paths)

    _wrap(monkeypatch, "lloyd", wrapper)
    summary = _run(federation, "late-lloyd")
    failure = summary.failed_centers[-1]
    assert (failure.center, failure.phase) == ("center-02", "lloyd")
    assert failure.reason == "center-02: state disk full (injected)"
    assert summary.kmeans_rounds >= 2 and summary.selected > 0
    assert calls["center-01"] > calls["center-02"]  # the survivors went on without it


def test_round_fails_clearly_when_hangs_leave_too_few_centers(federation, monkeypatch, release):
    _hang(monkeypatch, "seed", {"center-00", "center-01", "center-02", "dark"}, release)
    with pytest.raises(RoundFailed) as info:
        _run(federation, "hang-quorum", phase_timeout=3.0, min_fraction=0.5)
    message = str(info.value)
    assert message.startswith("only 3 of 8 centers remain after phase 'seed' (min-fraction 0.5)")
    for name in ("vacant (inventory: ", "center-00 (seed: no reply within 3 s)", "dark (seed: "):
        assert name in message


# --- mismatched encoders ----------------------------------------------------------------------


def _other_encoder(monkeypatch, centers, **changes):
    def wrapper(request, paths, handler):
        if paths.name in centers:
            request = InventoryRequest(**{**request.__dict__, **changes})
        return handler(request, paths)

    _wrap(monkeypatch, "inventory", wrapper)


def test_round_refuses_centers_with_another_encoder_by_name(federation, monkeypatch):
    _other_encoder(monkeypatch, {"one"}, model="vit_small_patch16_224")  # another dimension
    _other_encoder(monkeypatch, {"three"}, seed=7)  # same model, other weights
    summary = _run(federation, "encoders")
    refused = {f.center: f.reason for f in summary.failed_centers}
    assert sorted(refused) == ["one", "three", "vacant"]
    assert "(dim 384) differs from the majority's" in refused["one"]
    assert "(dim 192) differs from the majority's" in refused["three"]
    for name in ("one", "three"):
        assert "(dim 192) of center-00, center-01, center-02, corrupt, dark;" in refused[name]
    assert sorted(summary.per_center) == [
        "center-00",
        "center-01",
        "center-02",
        "corrupt",
        "dark",
    ]
    assert summary.selected > 0


def _inventory(fingerprint, dim=8):
    return InventoryReply(
        center="c", files=20, samples=20, unreadable=0, duplicate_files=0, disruptive=0,
        dim=dim, fingerprint=fingerprint,
    )  # fmt: skip


def test_encoder_outliers_without_a_majority_stop_the_round_naming_both_groups():
    replies = {1: _inventory("aaaa"), 2: _inventory("bbbb", 16), 3: _inventory("aaaa")}
    replies[4] = _inventory("bbbb", 16)
    names = {1: "north", 2: "south", 3: "east", 4: "west"}
    with pytest.raises(RoundFailed) as info:
        encoder_outliers(replies, names.__getitem__)
    assert "no encoder has a majority (aaaa (dim 8): east, north; bbbb (dim 16): south, west)" in (
        str(info.value)
    )


def test_unique_names_suffixes_later_nodes_with_the_same_folder_name():
    assert unique_names({7: "images", 3: "images", 5: "ward", 9: "images"}) == {
        3: "images", 5: "ward", 7: "images#2", 9: "images#3",
    }  # fmt: skip
