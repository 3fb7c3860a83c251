"""Wire format of phases 5-6: federated MAE pre-training and downstream evaluation.

Same typed, validated payloads as common.protocol, plus model weights: a message may carry a
state dict in the record "weights" (common.fedavg). The weights are not a dataclass field (they
are a whole ArrayRecord, not one array), so they ride beside the fields: `with_weights` attaches
them, `to_record`/`from_record` move them, and the receiver validates them against its own
model with `common.fedavg.read_weights` before loading anything.

What a center sends back is the model it trained and how many of its images it trained on, or
a center-level score (mIoU over its test split): no image, id or per-sample value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Self

from flwr.app import ArrayRecord, RecordDict

from common.errors import ProtocolError
from common.fedavg import WEIGHTS
from common.protocol import MAX_COUNT, MAX_IMAGE_SIZE, MAX_NAME, Payload

MAX_STEPS = 1 << 24


class WithWeights(Payload):
    """A payload that may carry a model's weights next to its fields."""

    weights: ArrayRecord | None = None  # not annotated in a dataclass: not a field

    def with_weights(self, weights: ArrayRecord | None) -> Self:
        object.__setattr__(self, "weights", weights)
        return self

    def to_record(self) -> RecordDict:
        record = super().to_record()
        if self.weights is not None:
            record[WEIGHTS] = self.weights
        return record

    @classmethod
    def from_record(cls, record: RecordDict) -> Self:
        message = super().from_record(record)
        return message.with_weights(record.array_records.get(WEIGHTS))


def _check_name(message: str, key: str, value: str) -> None:
    plain = value.isprintable() and not any(c in value for c in "/\\")
    if not value or len(value) > MAX_NAME or not plain:
        raise ProtocolError(
            f"{message}: {key} {value[:MAX_NAME]!r} must be 1-{MAX_NAME} printable characters "
            "without '/' or '\\'"
        )


def _check_between(message: str, key: str, value: float, low: float, high: float) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise ProtocolError(f"{message}: {key}={value!r} must be in [{low:g}, {high:g}]")


# --- phase 5: one federated MAE round ------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TrainRequest(WithWeights):
    """Train the attached global MAE for `steps` local steps on this center's training set.

    The training set is the center's manifest of curation run `selection` (round 0) or, when
    `uniform_fraction` > 0 (the warm-up), a seeded uniform sample of its readable images.
    """

    ACTION: ClassVar[str] = "mae"
    run: str
    round: int
    selection: str
    uniform_fraction: float
    model: str
    image_size: int
    steps: int
    step_offset: int  # where these steps lie in the global cosine schedule ...
    total_steps: int  # ... of this many steps (compute-matched across budgets)
    batch_size: int
    lr: float
    mask_ratio: float
    seed: int

    def check(self) -> None:
        name = "TrainRequest"
        _check_name(name, "run", self.run)
        if self.uniform_fraction == 0:
            _check_name(name, "selection", self.selection)
        _check_between(name, "uniform_fraction", self.uniform_fraction, 0.0, 1.0)
        _check_between(name, "image_size", self.image_size, 16, MAX_IMAGE_SIZE)
        _check_between(name, "steps", self.steps, 1, MAX_STEPS)
        _check_between(name, "batch_size", self.batch_size, 1, 4096)
        _check_between(name, "lr", self.lr, 1e-12, 1.0)
        _check_between(name, "mask_ratio", self.mask_ratio, 0.01, 0.99)
        _check_between(name, "round", self.round, 0, MAX_STEPS)
        if not 0 <= self.step_offset <= self.total_steps - self.steps:
            raise ProtocolError(
                f"{name}: steps {self.step_offset}..{self.step_offset + self.steps} lie outside "
                f"the schedule of {self.total_steps} steps"
            )


@dataclass(frozen=True, kw_only=True)
class TrainReply(WithWeights):
    """The locally trained weights (absent when `examples` is 0) and the mean training loss.

    Weights arrive after `check` runs; the receiver validates them against its model."""

    ACTION: ClassVar[str] = "mae"
    center: str
    examples: int
    steps: int
    loss: float

    def check(self) -> None:
        name = "TrainReply"
        _check_name(name, "center", self.center)
        _check_between(name, "examples", self.examples, 0, MAX_COUNT)
        _check_between(name, "steps", self.steps, 0, MAX_STEPS)
        _check_between(name, "loss", self.loss, 0.0, 1e12)


# --- phase 6: downstream evaluation --------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EvaluateRequest(WithWeights):
    """Score the attached encoder: train a segmentation head on the labeled split, test it."""

    ACTION: ClassVar[str] = "segment"
    run: str
    model: str
    image_size: int
    head_steps: int
    head_lr: float
    head_hidden: int
    finetune: bool
    seed: int

    def check(self) -> None:
        name = "EvaluateRequest"
        _check_name(name, "run", self.run)
        _check_between(name, "image_size", self.image_size, 16, MAX_IMAGE_SIZE)
        _check_between(name, "head_steps", self.head_steps, 1, MAX_STEPS)
        _check_between(name, "head_lr", self.head_lr, 1e-12, 1.0)
        _check_between(name, "head_hidden", self.head_hidden, 1, 1 << 16)


@dataclass(frozen=True, kw_only=True)
class EvaluateReply(Payload):
    """Center-level scores; `test_images` 0 means the center has no labeled test split."""

    ACTION: ClassVar[str] = "segment"
    center: str
    train_images: int
    test_images: int
    miou: float
    iou_background: float
    iou_lesion: float

    def check(self) -> None:
        name = "EvaluateReply"
        _check_name(name, "center", self.center)
        for key in ("train_images", "test_images"):
            _check_between(name, key, getattr(self, key), 0, MAX_COUNT)
        for key in ("miou", "iou_background", "iou_lesion"):
            _check_between(name, key, getattr(self, key), 0.0, 1.0)
