"""What a center does in phases 5-6: train the global MAE locally, score an encoder downstream.

Training images are the center's own selection (its manifest of a curation run) or, for the
warm-up, a seeded uniform sample of its images; decoded once per run and cached in the state
folder. The labeled split for evaluation is every pool image with a mask; the test split is the
`test/` folder. What leaves the center: trained weights and an example count, or mIoU scores.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np

from feddel.client.handlers import CenterPaths
from feddel.client.state import CenterState
from feddel.common.data.decode import UnreadableImage, load_image, load_mask
from feddel.common.data.manifest import read_manifest, row_frame
from feddel.common.data.scan import scan_center
from feddel.common.errors import DataError
from feddel.common.io import atomic_write_bytes
from feddel.common.models.embed import EncoderSpec, build_encoder, pick_device
from feddel.common.models.mae import MAE, train_mae
from feddel.common.models.segmentation import HeadConfig, evaluate_segmentation
from feddel.common.synthesis.mosaic import list_mosaics, synthesize_mosaics
from feddel.common.synthesis.patches import ErrorMapProposer, FirstNonEmpty, MaskProposer
from feddel.common.wire.fedavg import read_weights, weights_record
from feddel.common.wire.trainproto import (
    EvaluateReply,
    EvaluateRequest,
    SynthesizeReply,
    SynthesizeRequest,
    TrainReply,
    TrainRequest,
)

log = logging.getLogger(__name__)

FrameRef = tuple[str, int | None]  # a file and its frame (None: a single image)


class Labeled(NamedTuple):
    images: np.ndarray  # uint8 (n, s, s, 3)
    masks: np.ndarray  # bool (n, s, s)


def train(request: TrainRequest, paths: CenterPaths) -> TrainReply:
    """Load the global weights, train `steps` local MAE steps, send the weights back.

    A probe (`steps` = 0) or an empty training set answers with the image count alone."""
    images = training_images(request, paths)
    if len(images) == 0 or request.steps == 0:
        return TrainReply(center=paths.name, examples=len(images), steps=0, loss=0.0)
    mae = _reusable_mae(EncoderSpec(request.model, request.image_size, seed=request.seed))
    mae.load_state_dict(read_weights(request.to_record(), mae.state_dict(), "TrainRequest"))
    losses = train_mae(
        mae,
        images,
        steps=request.steps,
        lr=request.lr,
        batch_size=request.batch_size,
        seed=local_seed(request, paths.name),
        local_sgd=request.local_sgd,
        schedule=(request.step_offset, request.total_steps),
    )
    CenterState(paths.state).record(
        "pretrain", run=request.run, round=request.round, examples=len(images)
    )
    reply = TrainReply(
        center=paths.name, examples=len(images), steps=len(losses), loss=float(np.mean(losses))
    )
    return reply.with_weights(weights_record(mae.state_dict()))


def evaluate(request: EvaluateRequest, paths: CenterPaths) -> EvaluateReply:
    """Score the attached encoder on this center's labeled data (nothing labeled: zeros)."""
    train_split, test_split = labeled_splits(paths, request.image_size)
    if len(train_split.images) == 0 or len(test_split.images) == 0:
        return EvaluateReply(
            center=paths.name,
            train_images=len(train_split.images),
            test_images=0,
            miou=0.0,
            iou_background=0.0,
            iou_lesion=0.0,
        )
    encoder = build_encoder(EncoderSpec(request.model, request.image_size, seed=request.seed))
    encoder.load_state_dict(read_weights(request.to_record(), encoder.state_dict(), "Evaluate"))
    encoder.to(pick_device(None))  # a GPU when the center has one
    head = HeadConfig(
        steps=request.head_steps,
        lr=request.head_lr,
        hidden=request.head_hidden,
        repeats=request.head_repeats,
        finetune=request.finetune,
        seed=request.seed,
    )
    score = evaluate_segmentation(encoder, *train_split, *test_split, head)
    CenterState(paths.state).record("evaluate", run=request.run, miou=round(score.miou, 4))
    return EvaluateReply(
        center=paths.name,
        train_images=len(train_split.images),
        test_images=score.n_test,
        miou=score.miou,
        iou_background=score.iou_background,
        iou_lesion=score.iou_lesion,
    )


def synthesize(request: SynthesizeRequest, paths: CenterPaths) -> SynthesizeReply:
    """OptiDEL at this center: the hardest lesion-like patches of its selection, stitched four
    to a mosaic (as many patches as it selected samples). Mosaics stay in the state folder."""
    state = CenterState(paths.state)
    by_file = {(sample.file, sample.frame): sample for sample in scan_center(paths.data).samples}
    sources = [by_file[f] for f in _selected_files(state, request.run) if f in by_file]
    mae = MAE(EncoderSpec(request.model, request.image_size, seed=request.seed))
    mae.load_state_dict(read_weights(request.to_record(), mae.state_dict(), "SynthesizeRequest"))
    # the lesion mask where the center has one, else the MAE's worst-reconstructed regions
    proposer = FirstNonEmpty(MaskProposer(), ErrorMapProposer(mae, seed=request.seed))
    summary = synthesize_mosaics(
        paths.data, sources, paths.state, request.run, center=paths.name, mae=mae,
        mean_image=request.mean_image, proposer=proposer, n_mosaics=len(sources) // 4,
        seed=request.seed,
    )  # fmt: skip
    state.record("synthesize", run=request.run, mosaics=summary.mosaics)
    return SynthesizeReply(
        center=paths.name,
        mosaics=summary.mosaics,
        patches_proposed=summary.patches_proposed,
        patches_used=summary.patches_used,
        sources_used=summary.sources_used,
        unreadable=summary.unreadable,
    )


def training_images(request: TrainRequest, paths: CenterPaths) -> np.ndarray:
    """uint8 (n, s, s, 3): the selection's images and its mosaics (optidel), or the warm-up
    sample; cached per run."""
    cache = CenterState(paths.state).run_dir(request.run) / f"train-{request.image_size}.npy"
    if cache.is_file():
        return np.load(cache)
    mosaics: list[Path] = []
    if request.uniform_fraction > 0:
        files = _uniform_sample(paths.data, request.uniform_fraction, request.seed)
    else:
        files = _selected_files(CenterState(paths.state), request.selection)
        mosaics = _mosaic_files(paths.state, request.selection)
    images = np.concatenate(
        [
            _decode_all(paths.data, files, request.image_size),
            _decode_all(Path(), [(str(m), None) for m in mosaics], request.image_size),  # state
        ]
    )
    buffer = io.BytesIO()
    np.save(buffer, images)
    atomic_write_bytes(cache, buffer.getvalue())
    return images


def labeled_splits(paths: CenterPaths, size: int) -> tuple[Labeled, Labeled]:
    """(train, test): pool images with masks, and the `test/` folder's images with masks."""
    test_root = paths.data / "test"
    train = _labeled(paths.data, size)
    test = _labeled(test_root, size) if test_root.is_dir() else _empty(size)
    return train, test


def _labeled(root: Path, size: int) -> Labeled:
    try:
        samples = [s for s in scan_center(root).samples if s.mask is not None]
    except DataError:
        return _empty(size)
    images, masks = [], []
    for sample in samples:
        try:
            image = load_image(root / sample.file, size)
            mask = load_mask(root / str(sample.mask), size)
        except UnreadableImage as exc:
            log.warning("labeled pair skipped: %s", exc)
            continue
        images.append(image)
        masks.append(mask)
    if not images:
        return _empty(size)
    return Labeled(np.stack(images), np.stack(masks))


def _empty(size: int) -> Labeled:
    return Labeled(np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), bool))


def _selected_files(state: CenterState, selection: str) -> list[FrameRef]:
    path = state.manifest_path(selection, 0)
    if not path.is_file():
        return []  # this center holds none of the selection
    return [(row["file"], row_frame(row)) for row in read_manifest(path)]


def _mosaic_files(state: Path, selection: str) -> list[Path]:
    """The selection's mosaics at this center, none unless it ran optidel."""
    try:
        return list_mosaics(state, selection)
    except DataError:  # no mosaics.csv: a feddel, meddel or random selection
        return []


def _uniform_sample(root: Path, fraction: float, seed: int) -> list[FrameRef]:
    samples = scan_center(root).samples
    count = min(len(samples), max(1, math.ceil(fraction * len(samples))))
    order = np.random.default_rng(seed).permutation(len(samples))[:count]
    return [(samples[i].file, samples[i].frame) for i in sorted(order)]


def _decode_all(root: Path, files: list[FrameRef], size: int) -> np.ndarray:
    images = []
    for file, frame in files:
        try:
            images.append(load_image(root / file, size, frame=frame))
        except UnreadableImage as exc:  # changed since the scan: skip it, the others train
            log.warning("training image skipped: %s", exc)
    return np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)


_built = threading.local()


def _reusable_mae(spec: EncoderSpec) -> MAE:
    """This thread's MAE of `spec`, built once: a train request overwrites all its weights, and
    building a model (its random init) cost more than the one SGD step of a FedSGD round."""
    cached = getattr(_built, "mae", None)
    if cached is None or cached.spec != spec:
        _built.mae = MAE(spec)
    return _built.mae


def local_seed(request: TrainRequest, center: str) -> int:
    """Different masks and batch orders per center and round, the same on every rerun."""
    digest = int.from_bytes(hashlib.sha256(center.encode()).digest()[:8], "little")
    return (request.seed * 1_000_003 + request.round * 7919 + digest) % (1 << 63)
