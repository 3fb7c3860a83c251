"""Wire format of phases 5-6: federated MAE pre-training and downstream evaluation.

Same typed, validated payloads as common/wire/protocol.py, plus model weights: a message may carry a
state dict in the record "weights" (common/wire/fedavg.py). The weights are not a dataclass field
(they
are a whole ArrayRecord, not one array), so they ride beside the fields: `with_weights` attaches
them, `to_record`/`from_record` move them, and the receiver validates them against its own
model with `common/wire/fedavg.py (read_weights)` before loading anything.

What a center sends back is the model it trained and how many of its images it trained on, or
a center-level score (mIoU over its test split): no image, id or per-sample value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from feddel.common.errors import ProtocolError
from feddel.common.wire.fedavg import WEIGHTS
from feddel.common.wire.protocol import (
    MAX_COUNT,
    MAX_IMAGE_SIZE,
    Payload,
    array_field,
    check_center_name,
    check_range,
    check_run,
)

MAX_STEPS = 1 << 24
MAX_HEAD_REPEATS = 64  # heads averaged per evaluation; each costs `head_steps` more


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


# --- phase 4b (optidel): synthesize mosaics from the selection, at each center -------------


@dataclass(frozen=True, kw_only=True)
class SynthesizeRequest(WithWeights):
    """Make OptiDEL mosaics from this center's selection of run `run`, with the attached MAE.

    The center cuts one lesion-like patch from each image it selected and stitches every 4
    into a 2x2 mosaic (as many mosaics as a quarter of its selection); `mean_image` (s, s, 3),
    the federated mean image in pixel units, is the context-free predictor of patch PVI."""

    ACTION: ClassVar[str] = "synthesize"
    run: str
    model: str
    image_size: int
    seed: int
    mean_image: np.ndarray = array_field("f", 3)

    def check(self) -> None:
        name = "SynthesizeRequest"
        check_run(name, self.run)
        check_range(name, "image_size", self.image_size, 16, MAX_IMAGE_SIZE)
        if self.mean_image.shape != (self.image_size, self.image_size, 3):
            raise ProtocolError(
                f"{name}: mean_image of shape {self.mean_image.shape}, expected "
                f"({self.image_size}, {self.image_size}, 3)"
            )


@dataclass(frozen=True, kw_only=True)
class SynthesizeReply(Payload):
    """Counts only: the mosaics stay in the center's state folder."""

    ACTION: ClassVar[str] = "synthesize"
    center: str
    mosaics: int
    patches_proposed: int
    patches_used: int
    sources_used: int
    unreadable: int

    def check(self) -> None:
        name = "SynthesizeReply"
        check_center_name(name, self.center)
        for key in ("mosaics", "patches_proposed", "patches_used", "sources_used", "unreadable"):
            check_range(name, key, getattr(self, key), 0, MAX_COUNT)
        if self.patches_used != 4 * self.mosaics:
            raise ProtocolError(f"{name}: {self.patches_used} patches for {self.mosaics} mosaics")


# --- phase 5: one federated MAE round ------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TrainRequest(WithWeights):
    """Train the attached global MAE for `steps` local steps on this center's training set.

    The training set is the center's manifest of curation run `selection` (round 0) or, when
    `uniform_fraction` > 0 (the warm-up), a seeded uniform sample of its readable images.
    `steps` = 0 is a probe: count the training set, train nothing, send no weights.
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
    seed: int
    local_sgd: bool = False  # plain SGD at a constant lr: FedAdam, the server holds the optimizer

    def check(self) -> None:
        name = "TrainRequest"
        check_run(name, self.run)
        if self.uniform_fraction == 0:
            check_run(f"{name} selection", self.selection)
        check_range(name, "uniform_fraction", self.uniform_fraction, 0.0, 1.0)
        check_range(name, "image_size", self.image_size, 16, MAX_IMAGE_SIZE)
        check_range(name, "steps", self.steps, 0, MAX_STEPS)
        check_range(name, "batch_size", self.batch_size, 1, 4096)
        check_range(name, "lr", self.lr, 1e-12, 1.0)
        check_range(name, "round", self.round, 0, MAX_STEPS)
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
        check_center_name(name, self.center)
        check_range(name, "examples", self.examples, 0, MAX_COUNT)
        check_range(name, "steps", self.steps, 0, MAX_STEPS)
        check_range(name, "loss", self.loss, 0.0, 1e12)


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
    head_repeats: int
    finetune: bool
    seed: int

    def check(self) -> None:
        name = "EvaluateRequest"
        check_run(name, self.run)
        check_range(name, "image_size", self.image_size, 16, MAX_IMAGE_SIZE)
        check_range(name, "head_steps", self.head_steps, 1, MAX_STEPS)
        check_range(name, "head_lr", self.head_lr, 1e-12, 1.0)
        check_range(name, "head_hidden", self.head_hidden, 1, 1 << 16)
        check_range(name, "head_repeats", self.head_repeats, 1, MAX_HEAD_REPEATS)


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
        check_center_name(name, self.center)
        for key in ("train_images", "test_images"):
            check_range(name, key, getattr(self, key), 0, MAX_COUNT)
        for key in ("miou", "iou_background", "iou_lesion"):
            check_range(name, key, getattr(self, key), 0.0, 1.0)
