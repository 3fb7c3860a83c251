"""Model weights on the wire and their federated average (FedAvg, McMahan et al. 2017).

Weights travel as a Flower ArrayRecord named "weights" beside a message's scalar fields. A
received state dict is checked against the receiver's own model before anything is loaded:
same parameter names, same shapes, floating point, finite. So a center with another model, or
a peer sending NaNs, is refused with a message naming the parameter instead of corrupting the
global model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from feddel.common.errors import ConfigError, ProtocolError

WEIGHTS = "weights"

State = dict[str, torch.Tensor]


def weights_record(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """An ArrayRecord of a state dict's tensors (on the CPU, float32 for floating tensors)."""
    arrays = {}
    for name, tensor in state.items():
        value = tensor.detach().float() if tensor.is_floating_point() else tensor.detach()
        arrays[name] = Array(np.ascontiguousarray(value.cpu().numpy()))
    return ArrayRecord(arrays)


def read_weights(record: RecordDict, reference: Mapping[str, torch.Tensor], message: str) -> State:
    """The state dict in `record`, validated against `reference` (the receiver's model)."""
    arrays = record.array_records.get(WEIGHTS)
    if arrays is None:
        raise ProtocolError(f"{message}: no '{WEIGHTS}' record")
    missing = sorted(set(reference) - set(arrays.keys()))
    extra = sorted(set(arrays.keys()) - set(reference))
    if missing or extra:
        raise ProtocolError(
            f"{message}: weights do not fit the model: missing {missing[:3]}, "
            f"unexpected {extra[:3]}; every party must use the same model"
        )
    state: State = {}
    for name, expected in reference.items():
        array = arrays[name]
        if tuple(array.shape) != tuple(expected.shape):
            raise ProtocolError(
                f"{message}: parameter '{name}' has shape {tuple(array.shape)}, "
                f"the model expects {tuple(expected.shape)}"
            )
        try:
            value = array.numpy()
        except Exception as exc:  # peer bytes that do not decode are a protocol error
            raise ProtocolError(f"{message}: parameter '{name}' does not decode ({exc})") from None
        if value.dtype.kind != "f" and expected.is_floating_point():
            raise ProtocolError(f"{message}: parameter '{name}' must be floating point")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ProtocolError(f"{message}: parameter '{name}' contains NaN or inf")
        state[name] = torch.as_tensor(value.copy()).to(expected.dtype)
    return state


def fedavg(states: Sequence[State], weights: Sequence[float]) -> State:
    """Weighted mean of state dicts; weights are the centers' example counts (all > 0)."""
    if not states or len(states) != len(weights):
        raise ConfigError(f"fedavg needs one weight per state: {len(states)} vs {len(weights)}")
    if min(weights) <= 0:
        raise ConfigError(f"fedavg weights must be > 0, got {list(weights)}")
    total = float(sum(weights))
    average: State = {}
    for name, first in states[0].items():
        if not first.is_floating_point():
            average[name] = first.clone()  # integer buffers (counters) are not averaged
            continue
        parts = [s[name].double() * (w / total) for s, w in zip(states, weights, strict=True)]
        average[name] = torch.stack(parts).sum(dim=0).to(first.dtype)
    return average
