"""Malformed and hostile messages: every decoder rejects them with a ProtocolError, never crashes.

Property-based part: hypothesis builds records for every request and reply type from valid,
wrong-typed, non-finite, negative, huge, mis-declared and missing values; decoding either
raises ProtocolError or returns a message that keeps every invariant of the wire format.
Round part: a center that sends well-formed records that do not fit the round (another
dimension, another image size, a borrowed key, a corrupt masked vector, an impossible count)
is dropped by name, or stops the round with a message that says what went wrong.
"""

import dataclasses
import importlib
import io
import pkgutil
import time
import typing

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from feddel import common
from feddel.client import app as client_app
from feddel.common.config import CurationConfig
from feddel.common.errors import ProtocolError
from feddel.common.privacy import secagg
from feddel.common.privacy.policy import PrivacyPolicy
from feddel.common.wire.protocol import (
    ARRAYS,
    FIELDS,
    MAX_ARRAY_ELEMENTS,
    MAX_COUNT,
    HistogramRequest,
    InventoryReply,
    InventoryRequest,
    KeysReply,
    LloydReply,
    LloydRequest,
    Payload,
    ScoreRequest,
    SeedReply,
    SelectReply,
    SelectRequest,
    pack,
    unpack,
)
from feddel.server.broadcast import RoundFailed
from feddel.simulations.federated import run_federated
from feddel.simulations.synth import generate_federation


def _message_types(base=Payload):
    for cls in base.__subclasses__():
        if hasattr(cls, "ACTION"):
            yield cls
        yield from _message_types(cls)


for _module in pkgutil.iter_modules(common.__path__):  # every wire format: phases 0-4 and on
    importlib.import_module(f"common.{_module.name}")
MESSAGES = sorted(set(_message_types()), key=lambda cls: f"{cls.__module__}.{cls.__name__}")
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI never flakes on a new draw
    database=None,  # and nothing is written into the checkout
    suppress_health_check=[HealthCheck.too_slow],
)
MISSING = object()

# --- strategies -------------------------------------------------------------------------------

WORDS = ("feddel", "meddel", "random", "full", "hard", "easy", "run-1", "center-07")
SCALARS = {
    int: st.one_of(st.integers(0, 64), st.integers(-(2**63), 2**63 - 1)),
    float: st.one_of(st.floats(0, 1), st.floats(allow_nan=True, allow_infinity=True)),
    str: st.one_of(st.sampled_from(WORDS), st.text(max_size=250)),
    bytes: st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=40)),
    bool: st.booleans(),
}
ANY_SCALAR = st.one_of(
    *SCALARS.values(),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.lists(st.text(max_size=3), max_size=2),
)
DTYPES = st.sampled_from(
    ["<f8", "<f4", "<f2", ">f8", "<i8", "<i4", "<u8", ">u8", "|u1", "|b1", "<c8", "<U2", "<M8[s]"]
)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _arrays(kind: str, ndim: int) -> st.SearchStrategy:
    """Arrays for a field of `kind` and rank `ndim`: half of them of the right dtype."""
    dtypes = st.one_of(st.just({"f": "<f8", "i": "<i8", "u": "<u8"}[kind]), DTYPES)
    shaped = hnp.arrays(
        dtypes, hnp.array_shapes(min_dims=ndim, max_dims=ndim, min_side=0, max_side=4)
    )
    any_rank = hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=3))
    raw = st.builds(
        Array,
        dtype=st.sampled_from(["float64", "int64", "uint64", "nonsense"]),
        shape=st.lists(st.integers(-1, 1 << 20), min_size=ndim, max_size=ndim).map(tuple),
        stype=st.sampled_from(["numpy.ndarray", "torch.Tensor", ""]),
        data=st.one_of(st.binary(max_size=160), any_rank.map(_npy)),
    )
    # an honest record shape over bytes that hold another array: the header must be read
    disguised = st.tuples(shaped, any_rank).map(
        lambda pair: Array(
            dtype=str(pair[0].dtype), shape=pair[0].shape, stype="numpy.ndarray", data=_npy(pair[1])
        )
    )
    return st.one_of(
        shaped.map(Array), shaped.map(Array), any_rank.map(Array), raw, disguised, st.just(MISSING)
    )


@st.composite
def records(draw, cls):
    hints = typing.get_type_hints(cls)
    scalars, arrays = {}, {}
    for spec in dataclasses.fields(cls):
        if "array" in spec.metadata:
            rule = spec.metadata["array"]
            value = draw(_arrays(rule.kind, rule.ndim))
            if value is not MISSING:
                arrays[spec.name] = value
        else:
            valid = SCALARS[hints[spec.name]]
            value = draw(st.one_of(valid, valid, valid, ANY_SCALAR, st.just(MISSING)))
            if value is not MISSING:
                scalars[spec.name] = value
    if draw(st.booleans()):
        scalars[draw(st.text(min_size=1, max_size=8))] = draw(ANY_SCALAR)  # unknown extras
    content = {FIELDS: ConfigRecord(scalars), ARRAYS: ArrayRecord(arrays)}
    if draw(st.integers(0, 20)) == 0:
        content.pop(draw(st.sampled_from([FIELDS, ARRAYS])))
    return RecordDict(content)


def _assert_invariants(cls, message, record):
    """What every decoded message guarantees to the code that handles it."""
    hints = typing.get_type_hints(cls)
    declared = record.array_records[ARRAYS]
    for spec in dataclasses.fields(cls):
        value = getattr(message, spec.name)
        if "array" in spec.metadata:
            rule = spec.metadata["array"]
            assert value.ndim == rule.ndim and value.shape == tuple(declared[spec.name].shape)
            dtypes = {"f": (np.float64,), "i": (np.int64,), "u": (np.uint32, np.uint64)}
            assert value.dtype in dtypes[rule.kind]
            if rule.kind == "f":
                assert np.isfinite(value).all()
            if rule.kind == "i" and value.size:
                assert np.abs(value).max() <= MAX_COUNT
            if rule.nonnegative and value.size:
                assert value.min() >= 0
        else:
            assert type(value) is hints[spec.name]
            if isinstance(value, float):
                assert np.isfinite(value)


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.__name__)
def test_decoders_raise_only_protocol_errors_and_keep_the_invariants(cls):
    @FUZZ
    @given(records(cls))
    def check(record):
        try:
            message = cls.from_record(record)
        except ProtocolError as exc:
            assert str(exc).startswith(f"{cls.__name__}: ")
            return
        _assert_invariants(cls, message, record)
        again = cls.from_record(message.to_record())
        for spec in dataclasses.fields(cls):
            np.testing.assert_array_equal(getattr(again, spec.name), getattr(message, spec.name))

    check()


@FUZZ
@given(
    st.lists(
        hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=4), min_size=1, max_size=4
    ),
    st.integers(0, 40),
)
def test_unpack_splits_exactly_or_raises_protocol_error(shapes, length):
    layout = {f"part{i}": shape for i, shape in enumerate(shapes)}
    vector = np.arange(length, dtype=np.float64)
    needed = sum(int(np.prod(shape)) for shape in shapes)
    if length != needed:
        with pytest.raises(ProtocolError, match=f"the layout needs {needed}"):
            unpack(layout, vector)
        return
    parts = unpack(layout, vector)
    assert {name: part.shape for name, part in parts.items()} == layout
    np.testing.assert_array_equal(np.concatenate([p.ravel() for p in parts.values()]), vector)
    np.testing.assert_array_equal(pack(layout, **parts), vector)


# --- hostile values the fuzzer is not guaranteed to draw ---------------------------------------


def _seed_record(**arrays):
    record = SeedReply(centroids=np.ones((2, 3)), counts=np.array([10, 12])).to_record()
    for name, value in arrays.items():
        record.array_records[ARRAYS][name] = value
    return record


def _raw(shape, data):
    return Array(dtype="float64", shape=shape, stype="numpy.ndarray", data=data)


def _inventory(**changes):
    values = dict(
        center="c", files=12, samples=10, unreadable=1, duplicate_files=1, disruptive=2, dim=8,
        fingerprint="ab",
    )  # fmt: skip
    values.update(changes)
    return InventoryReply(**values).to_record()


HOSTILE_REPLIES = [
    # the record says (2, 3) but the bytes hold a 10^6-element vector: refused unread
    pytest.param(
        SeedReply,
        _seed_record(centroids=_raw((2, 3), _npy(np.zeros(10**6)))),
        r"declares shape \(2, 3\) but its data holds \(1000000,\)",
        id="shape-header",
    ),
    pytest.param(
        SeedReply,
        _seed_record(counts=Array(np.array([2**63, 1], dtype=np.uint64))),
        r"beyond 2\^53",
        id="uint64-wrap",
    ),
    pytest.param(
        SeedReply,
        _seed_record(centroids=_raw((1 << 14, 1 << 13), b"")),
        f"exceeds {MAX_ARRAY_ELEMENTS} elements",
        id="huge",
    ),
    pytest.param(InventoryReply, _inventory(files=13), "files=13 exceeds", id="counts"),
    pytest.param(
        InventoryReply, _inventory(disruptive=11), "disruptive=11 exceeds", id="disruptive"
    ),
    pytest.param(InventoryReply, _inventory(center=""), "center name must be", id="no-name"),
    pytest.param(
        InventoryReply,
        _inventory(samples=2**60, files=2**60 + 2),
        r"must be <= 2\^53",
        id="too-many",
    ),
]


@pytest.mark.parametrize(("cls", "record", "message"), HOSTILE_REPLIES)
def test_hostile_replies_are_rejected_with_the_reason(cls, record, message):
    with pytest.raises(ProtocolError, match=message):
        cls.from_record(record)


def _lloyd_request(**changes):
    values = dict(
        run="r", attempt=0, roster=np.zeros((1, 32), dtype=np.int64), method="feddel",
        noise_sigma=0.0, count_sigma=0.0, samples=100, cells="c", open=np.ones(2, dtype=np.int64),
    )  # fmt: skip
    values.update(changes)
    return LloydRequest(**values).to_record()


def _select_request(**changes):
    values = dict(
        run="r", attempt=0, roster=np.zeros((1, 32), dtype=np.int64), noise_sigma=0.0,
        count_sigma=0.0, samples=100, round=0, method="feddel",
        seed=0, retention=1.0, eta=0.9, keep="hard", bins=8, threshold_bins=np.array([1, 2]),
        boundary_fractions=np.array([0.5, 0.5]), quotas=np.array([3, 4]),
        ranked_fractions=np.zeros(2),
    )  # fmt: skip
    values.update(changes)
    return SelectRequest(**values).to_record()


def _score_request(**changes):
    values = dict(
        run="r", attempt=0, roster=np.zeros((1, 32), dtype=np.int64), noise_sigma=0.0,
        count_sigma=0.0, samples=100, method="feddel", tau=1.0,
        eps=0.9, eta=0.98, keep="hard", series_share=0.05, centers=np.zeros((2, 4)),
        prior=np.array([0.5, 0.5]),
    )  # fmt: skip
    values.update(changes)
    return ScoreRequest(**values).to_record()


def _histogram_request(**changes):
    values = dict(
        run="r", attempt=0, roster=np.zeros((1, 32), dtype=np.int64), noise_sigma=0.0,
        count_sigma=0.0, samples=100, method="feddel", bins=8, open=np.array([1, 0]),
    )  # fmt: skip
    values.update(changes)
    return HistogramRequest(**values).to_record()


def _inventory_request(**changes):
    values = dict(run="r", round=0, model="m", image_size=64, weights="", seed=0, min_count=10)
    values.update(changes)
    return InventoryRequest(**values).to_record()


HOSTILE_REQUESTS = [
    pytest.param(LloydRequest, _lloyd_request(run="../../etc"), "run name '../../etc'", id="up"),
    pytest.param(LloydRequest, _lloyd_request(run=".hidden"), "leading '.'", id="hidden"),
    pytest.param(LloydRequest, _lloyd_request(noise_sigma=-1.0), "noise_sigma", id="noise"),
    pytest.param(LloydRequest, _lloyd_request(count_sigma=-1.0), "count_sigma", id="count-noise"),
    pytest.param(
        HistogramRequest, _histogram_request(open=np.array([1, 2])), "flags of 0 or 1", id="open"
    ),
    pytest.param(LloydRequest, _lloyd_request(method="all"), "must be one of", id="method"),
    pytest.param(LloydRequest, _lloyd_request(open=np.zeros(0, np.int64)), "1 to", id="no-k"),
    pytest.param(LloydRequest, _lloyd_request(open=np.zeros(2, np.int64)), "no cell", id="closed"),
    pytest.param(
        SelectRequest, _select_request(threshold_bins=np.array([1, 8])), "< bins=8", id="bins"
    ),
    pytest.param(SelectRequest, _select_request(retention=1.5), "retention", id="retention"),
    pytest.param(ScoreRequest, _score_request(tau=0.0), "'tau'", id="tau"),
    pytest.param(ScoreRequest, _score_request(prior=np.array([1.0, 0.0])), "prior", id="prior"),
    pytest.param(
        InventoryRequest, _inventory_request(image_size=10**6), "image_size", id="image-size"
    ),
    pytest.param(InventoryRequest, _inventory_request(run="a/b"), "run name", id="slash"),
]


@pytest.mark.parametrize(("cls", "record", "message"), HOSTILE_REQUESTS)
def test_hostile_requests_are_rejected_before_a_center_acts(cls, record, message):
    with pytest.raises(ProtocolError, match=message):
        cls.from_record(record)


# --- hostile centers in a real round --------------------------------------------------------


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    generate_federation(root / "data", centers=3, scale="small", seed=5, size=32)
    return root


@pytest.fixture(autouse=True)
def _no_reports(monkeypatch):
    """Contact sheets and plots take most of a small round's time and are tested elsewhere."""
    monkeypatch.setattr("feddel.client.handlers.write_center_report", lambda *args: None)
    monkeypatch.setattr("feddel.server.report.write_coordinator_report", lambda *args: None)


def _run(federation, name, min_roster=2):
    """A round that goes on with fewer of its 3 centers (their policy allows a small roster)."""
    config = CurationConfig(image_size=32, k=3, budget=0.1, min_fraction=0.3, min_roster=min_roster)
    return run_federated(
        federation / "data", federation / "runs" / name, config, engine="inprocess",
        state_root=federation / "state", policy=PrivacyPolicy(min_roster=min_roster),
    )  # fmt: skip


def _tamper(monkeypatch, phase, center, change):
    """`center` sends change(reply, request, paths) instead of its real reply in `phase`."""
    request_type, handler = client_app.PHASES[phase]

    def tampered(request, paths):
        reply = handler(request, paths)
        return change(reply, request, paths) if paths.name == center else reply

    monkeypatch.setitem(client_app.PHASES, phase, (request_type, tampered))


def _other_dimension(reply, request, paths):
    return SeedReply(centroids=reply.centroids[:, 1:], counts=reply.counts)


def _short_vector(reply, request, paths):
    return dataclasses.replace(reply, masked=reply.masked[:-1])


def _wide_words(reply, request, paths):
    return dataclasses.replace(reply, masked=reply.masked.astype(np.uint64))


def _impossible_count(reply, request, paths):
    return SelectReply(selected=10**6, masked=reply.masked)


def _borrowed_key(reply, request, paths):
    """center-01's public key of this run (waits until center-01 made it)."""
    path = paths.state.parent / "center-01" / "runs" / request.run / "secagg.key"
    deadline = time.monotonic() + 30
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    return KeysReply(public_key=secagg.public_key(path.read_bytes()))


@pytest.mark.parametrize(
    ("phase", "change", "reason"),
    [
        ("seed", _other_dimension, "array of shape (8, 191), the round expects (8, 192)"),
        ("counts", _short_vector, "masked vector has 2 values, not 3"),
        ("lloyd", _wide_words, "masked vector is uint64, the request asked for uint32 words"),
        ("select", _impossible_count, "selected=1000000 exceeds the center's"),
        ("keys", _borrowed_key, "public key also sent by center-01; a key must be unique"),
    ],
    ids=["seed-dimension", "masked-length", "word-size", "selected-count", "borrowed-key"],
)
def test_center_sending_replies_that_do_not_fit_the_round_is_dropped(
    federation, monkeypatch, phase, change, reason
):
    _tamper(monkeypatch, phase, "center-00", change)
    summary = _run(federation, f"tamper-{phase}", min_roster=1 if phase == "keys" else 2)
    failure = summary.failed_centers[0]
    assert (failure.center, failure.phase) == ("center-00", phase)
    assert reason in failure.reason
    survivors = ["center-02"] if phase == "keys" else ["center-01", "center-02"]
    assert sorted(summary.per_center) == survivors
    assert summary.selected > 0


def test_a_center_refusing_its_select_release_keeps_no_selection(federation, monkeypatch):
    """center-00's policy refuses the select phase's roster only (its floor rose mid-round):
    it must not keep a selection that pre-training would later train on. The others' contact
    sheets fail on a full disk, which costs their report only."""
    request_type, handler = client_app.PHASES["select"]

    def stricter(request, paths):
        if paths.name == "center-00":
            paths = dataclasses.replace(paths, policy=PrivacyPolicy(min_roster=10))
        return handler(request, paths)

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(client_app.PHASES, "select", (request_type, stricter))
    monkeypatch.setattr("feddel.client.handlers.write_center_report", full_disk)
    summary = _run(federation, "late-refusal")  # the others' reports fail: their selections stand
    assert [(f.center, f.phase) for f in summary.failed_centers] == [("center-00", "select")]
    assert not list((federation / "state" / "center-00").glob("selection-late-refusal-*.csv"))
    assert list((federation / "state" / "center-01").glob("selection-late-refusal-*.csv"))


def test_corrupt_masked_vector_stops_the_round_instead_of_curating_noise(federation, monkeypatch):
    rng = np.random.default_rng(0)

    def noise(reply, request, paths):
        words = reply.masked.dtype
        return LloydReply(masked=rng.integers(0, np.iinfo(words).max, reply.masked.shape, words))

    _tamper(monkeypatch, "lloyd", "center-01", noise)
    with pytest.raises(RoundFailed, match=r"phase 'lloyd': the secure sum is corrupt"):
        _run(federation, "noise")
