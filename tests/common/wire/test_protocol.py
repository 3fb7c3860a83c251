"""The wire format: round trips, and hostile or broken replies rejected with named errors."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common import serde

from feddel.common.errors import ProtocolError
from feddel.common.wire.protocol import (
    MAX_ARRAY_ELEMENTS,
    InventoryReply,
    LloydReply,
    LloydRequest,
    SeedReply,
    SelectRequest,
    lloyd_layout,
    pack,
    record_bytes,
    record_proto,
    unpack,
)


def _stats(k=3, d=4, **changes):
    """A SeedReply stands in for any reply with float and count arrays."""
    values = dict(centroids=np.ones((k, d)), counts=np.arange(k, dtype=np.int64) + 10)
    values.update(changes)
    return SeedReply(**values)


def test_protocol_round_trip_preserves_values_and_types():
    reply = _stats()
    decoded = SeedReply.from_record(reply.to_record())
    np.testing.assert_array_equal(decoded.counts, reply.counts)
    np.testing.assert_array_equal(decoded.centroids, reply.centroids)
    assert decoded.counts.dtype == np.int64 and decoded.centroids.dtype == np.float64


@pytest.mark.parametrize("words", [np.uint32, np.uint64])
def test_protocol_masked_reply_keeps_every_bit_of_its_words(words):
    top = np.iinfo(words).max
    masked = np.array([0, 1, top // 2 + 1, top], dtype=words)
    decoded = LloydReply.from_record(LloydReply(masked=masked).to_record())
    assert decoded.masked.dtype == words
    np.testing.assert_array_equal(decoded.masked, masked)


@pytest.mark.parametrize("other", [np.zeros(3), np.zeros(3, np.int32), np.zeros(3, ">u4")])
def test_protocol_masked_reply_rejects_other_dtypes(other):
    record = LloydReply(masked=np.zeros(3, dtype=np.uint64)).to_record()
    record.array_records["arrays"]["masked"] = Array(other)
    with pytest.raises(ProtocolError, match="must be uint32 or uint64"):
        LloydReply.from_record(record)


def test_protocol_inventory_reply_round_trip_with_scalars():
    reply = InventoryReply(
        center="c", files=12, samples=10, unreadable=1, duplicate_files=1, disruptive=2, dim=192,
        fingerprint="ab12",
    )  # fmt: skip
    assert InventoryReply.from_record(reply.to_record()).center == "c"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"centroids": np.full((3, 4), np.nan)}, "contains NaN or inf"),
        ({"centroids": np.array([[0.1, np.inf]] * 3)}, "contains NaN or inf"),
        ({"counts": np.array([10, -1, 10])}, "must be >= 0"),
        ({"counts": np.array([1.5, 2.0, 3.0])}, "must be integer"),
        ({"centroids": np.ones(3)}, "must have 2 dims"),
        ({"counts": np.arange(4, dtype=np.int64)}, "row counts differ"),
    ],
)
def test_protocol_rejects_hostile_arrays_naming_the_field(changes, message):
    record = _stats().to_record()
    for name, value in changes.items():
        record.array_records["arrays"][name] = Array(np.asarray(value))
    with pytest.raises(ProtocolError, match=message):
        SeedReply.from_record(record)


def test_protocol_rejects_missing_and_mistyped_fields():
    record = SeedReply(centroids=np.zeros((1, 2)), counts=np.array([11])).to_record()
    del record.array_records["arrays"]["counts"]
    with pytest.raises(ProtocolError, match="missing array 'counts'"):
        SeedReply.from_record(record)
    inventory = InventoryReply(
        center="c", files=1, samples=1, unreadable=0, duplicate_files=0, disruptive=0, dim=8,
        fingerprint="f",
    ).to_record()  # fmt: skip
    inventory.config_records["fields"]["samples"] = "many"
    with pytest.raises(ProtocolError, match="field 'samples' must be int"):
        InventoryReply.from_record(inventory)
    inventory.config_records["fields"]["samples"] = -3
    with pytest.raises(ProtocolError, match="count and must be >= 0"):
        InventoryReply.from_record(inventory)


def test_protocol_rejects_a_record_that_is_not_feddel():
    with pytest.raises(ProtocolError, match="not a FedDEL message"):
        SeedReply.from_record(RecordDict({"other": ConfigRecord({"x": 1})}))


def test_protocol_rejects_oversized_arrays_before_decoding():
    record = _stats().to_record()
    huge = Array(
        dtype="float64", shape=(MAX_ARRAY_ELEMENTS + 1, 1), stype="numpy.ndarray", data=b""
    )
    record.array_records["arrays"] = ArrayRecord(
        {**dict(record.array_records["arrays"].items()), "centroids": huge}
    )
    with pytest.raises(ProtocolError, match="exceeds"):
        SeedReply.from_record(record)


@pytest.mark.parametrize("field", ["boundary_fractions", "ranked_fractions"])
def test_protocol_select_request_checks_fractions(field):
    fractions = {"boundary_fractions": np.array([0.5, 0.5]), "ranked_fractions": np.zeros(2)}
    fractions[field] = np.array([0.5, 1.5])
    request = SelectRequest(
        run="r", attempt=0, roster=np.zeros((2, 32), dtype=np.int64), noise_sigma=0.0,
        count_sigma=0.0, samples=100, round=0, method="feddel",
        seed=0, retention=1.0, eta=0.9, keep="hard", bins=8, threshold_bins=np.array([1, 2]),
        quotas=np.array([3, 4]), **fractions,
    )  # fmt: skip
    with pytest.raises(ProtocolError, match=f"{field} must be in"):
        SelectRequest.from_record(request.to_record())


def test_protocol_roster_must_be_32_byte_keys():
    request = LloydRequest(
        run="r",
        attempt=0,
        roster=np.full((2, 32), 300),
        method="feddel",
        noise_sigma=0.0,
        count_sigma=0.0,
        samples=100,
        cells="c",
        open=np.ones(2, dtype=np.int64),
    )
    with pytest.raises(ProtocolError, match="roster must be"):
        LloydRequest.from_record(request.to_record()).roster_keys()


def test_protocol_pack_unpack_round_trip_and_length_check():
    layout = lloyd_layout(2, 3)
    vector = pack(layout, count=[1, 2], sum=np.ones((2, 3)))
    parts = unpack(layout, vector)
    np.testing.assert_array_equal(parts["sum"], np.ones((2, 3)))
    with pytest.raises(ProtocolError, match="layout needs 8"):
        unpack(layout, vector[:-1])
    with pytest.raises(ProtocolError, match="has shape"):
        pack(layout, count=[1], sum=np.ones((2, 3)))


def test_protocol_record_proto_is_the_message_flower_sends_byte_for_byte():
    record = RecordDict(
        {
            "weights": ArrayRecord(
                {
                    "w": Array(np.arange(12, dtype=np.float32).reshape(3, 4)),
                    "step": Array(np.array(7, dtype=np.int64)),
                    "none": Array(np.zeros((0, 5), dtype=np.float64)),
                }
            ),
            "empty": ArrayRecord(),
            "fields": ConfigRecord({"run": "r", "round": 3, "lr": 0.5, "ids": [1, 2], "b": b"x"}),
            "metrics": MetricRecord({"loss": 0.25, "n": 4}),
            "no-metrics": MetricRecord(),
        }
    )
    ours = record_proto(record).SerializeToString()
    assert ours == serde.recorddict_to_proto(record).SerializeToString()
    parsed = serde.recorddict_from_proto(type(record_proto(record)).FromString(ours))
    assert list(parsed["empty"].keys()) == [] and isinstance(parsed["empty"], ArrayRecord)
    np.testing.assert_array_equal(parsed["weights"]["w"].numpy(), record["weights"]["w"].numpy())
    assert record_bytes(record) == len(ours)


def test_protocol_record_bytes_grow_with_payload_not_with_nothing():
    small, large = _stats(k=2, d=4), _stats(k=2, d=400)
    assert record_bytes(large.to_record()) - record_bytes(small.to_record()) >= 2 * 396 * 8
