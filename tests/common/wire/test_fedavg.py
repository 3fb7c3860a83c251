"""Weights on the wire: exact FedAvg and refusal of weights that do not fit the model."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from feddel.common.errors import ConfigError, ProtocolError
from feddel.common.wire.fedavg import WEIGHTS, fedavg, read_weights, weights_record
from feddel.common.wire.trainproto import (
    EvaluateReply,
    EvaluateRequest,
    TrainReply,
    TrainRequest,
)


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), value), "steps": torch.tensor(7)}


def test_fedavg_weights_by_examples_and_keeps_integer_buffers():
    avg = fedavg([_state(1.0), _state(4.0)], [3, 1])
    assert torch.allclose(avg["w"], torch.full((2, 3), 1.75))  # (3*1 + 1*4) / 4
    assert avg["steps"].item() == 7


def test_fedavg_refuses_zero_weight():
    with pytest.raises(ConfigError, match="> 0"):
        fedavg([_state(1.0)], [0])


def test_read_weights_round_trip_is_exact():
    reference = {"a": torch.randn(4, 5), "b": torch.randn(3)}
    record = RecordDict({WEIGHTS: weights_record(reference)})
    back = read_weights(record, reference, "test")
    assert all(torch.equal(back[k], reference[k]) for k in reference)


@pytest.mark.parametrize(
    ("arrays", "error"),
    [
        ({"a": np.zeros((4, 5), np.float32)}, "missing \\['b'\\]"),
        ({"a": np.zeros((4, 4), np.float32), "b": np.zeros(3, np.float32)}, "shape"),
        ({"a": np.full((4, 5), np.nan, np.float32), "b": np.zeros(3, np.float32)}, "NaN"),
        ({"a": np.zeros((4, 5), np.int64), "b": np.zeros(3, np.float32)}, "floating"),
    ],
)
def test_read_weights_names_the_bad_parameter(arrays, error):
    reference = {"a": torch.zeros(4, 5), "b": torch.zeros(3)}
    record = RecordDict({WEIGHTS: ArrayRecord({k: Array(v) for k, v in arrays.items()})})
    with pytest.raises(ProtocolError, match=error):
        read_weights(record, reference, "TrainReply")


def _request(**changes) -> TrainRequest:
    fields = dict(
        run="r", round=0, selection="sel", uniform_fraction=0.0, model="vit_tiny_patch16_224",
        image_size=32, steps=5, step_offset=0, total_steps=10, batch_size=4, lr=1e-4,
        seed=0,
    )  # fmt: skip
    return TrainRequest(**{**fields, **changes})


def test_train_request_carries_weights_through_the_record():
    state = {"x": torch.arange(6.0).reshape(2, 3)}
    message = _request().with_weights(weights_record(state))
    back = TrainRequest.from_record(message.to_record())
    assert back == _request()
    assert torch.equal(read_weights(back.to_record(), state, "t")["x"], state["x"])


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("step_offset", 8, "outside the schedule"),
        ("lr", float("nan"), "lr"),
        ("selection", "../etc", "selection: run name"),
    ],
)
def test_train_request_rejects_hostile_fields(field, value, error):
    record = _request().to_record()
    record.config_records["fields"][field] = value
    with pytest.raises(ProtocolError, match=error):
        TrainRequest.from_record(record)


def test_replies_reject_out_of_range_scores():
    reply = EvaluateReply(
        center="c", train_images=3, test_images=2, miou=0.5, iou_background=0.9, iou_lesion=0.1
    )
    record = reply.to_record()
    record.config_records["fields"]["miou"] = 1.5
    with pytest.raises(ProtocolError, match="miou"):
        EvaluateReply.from_record(record)
    bad = TrainReply(center="c", examples=2, steps=1, loss=0.1).to_record()
    bad.config_records["fields"]["examples"] = -1
    with pytest.raises(ProtocolError, match="examples"):
        TrainReply.from_record(bad)


def test_evaluate_request_bounds_the_head_repeats():
    request = EvaluateRequest(
        run="r", model="m", image_size=32, head_steps=5, head_lr=1e-3, head_hidden=8,
        head_repeats=3, finetune=False, seed=0,
    )  # fmt: skip
    assert EvaluateRequest.from_record(request.to_record()).head_repeats == 3
    for bad in (0, 10_000):
        record = request.to_record()
        record.config_records["fields"]["head_repeats"] = bad
        with pytest.raises(ProtocolError, match="head_repeats"):
            EvaluateRequest.from_record(record)
