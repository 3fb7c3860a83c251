"""Lesion-like patch proposals for OptiDEL-style mosaics, without SAM weights (docs/science.md 2).

OptiDEL lets SAM propose lesion patches. No SAM weights can be downloaded here, so FedDEL
proposes regions the MAE finds hard to reconstruct (and, where a sample has a segmentation
mask, the mask's components). A proposer is any callable

    proposer(image: (H, W, 3) uint8, mask: (H, W) bool | None) -> list[Box]

with boxes in the image's own pixel coordinates. A user with SAM weights plugs in their own:

    class SamProposer:
        def __init__(self, checkpoint: str) -> None:
            from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
            model = sam_model_registry["vit_b"](checkpoint=checkpoint)
            self.generator = SamAutomaticMaskGenerator(model)

        def __call__(self, image, mask=None):
            return [
                Box.from_xywh(*m["bbox"], score=m["predicted_iou"])
                for m in self.generator.generate(image)
            ]

and passes `FirstNonEmpty(MaskProposer(), SamProposer(path))` to `common/synthesis/mosaic.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from feddel.common.data.decode import resize_square
from feddel.common.errors import ConfigError, DataError
from feddel.common.models.embed import autocast, autocast_dtype, module_device
from feddel.common.models.mae import MAE, patchify

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # diagonal neighbours join a component


@dataclass(frozen=True)
class Box:
    """A region [top, bottom) x [left, right) in pixels; `score`: higher = more lesion-like."""

    top: int
    left: int
    bottom: int
    right: int
    score: float = 0.0

    @classmethod
    def from_xywh(cls, x: float, y: float, w: float, h: float, score: float = 0.0) -> Box:
        """From SAM's (x, y, width, height) bounding boxes."""
        return cls(round(y), round(x), round(y + h), round(x + w), float(score))

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    def clipped(self, height: int, width: int) -> Box | None:
        """The part inside an image of (height, width), None when nothing of it is inside."""
        top, bottom = max(self.top, 0), min(self.bottom, height)
        left, right = max(self.left, 0), min(self.right, width)
        if bottom <= top or right <= left:
            return None
        return Box(top, left, bottom, right, self.score)

    def crop(self, image: np.ndarray) -> np.ndarray:
        return image[self.top : self.bottom, self.left : self.right]


class PatchProposer(Protocol):
    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> list[Box]: ...


def component_boxes(
    region: np.ndarray, weights: np.ndarray, min_cells: int = 1
) -> list[tuple[Box, int]]:
    """Bounding boxes of the 8-connected components of `region` (h, w) bool, in cell units.

    Each box's score is the mean of `weights` (h, w) over the component's cells; returns
    (box, cell count) pairs for components of at least `min_cells` cells, highest score first
    (ties: top-left first).
    """
    labels, count = ndimage.label(region, structure=_EIGHT_CONNECTED)
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index)
    means = ndimage.mean(weights, labels, index)
    found = []
    for slices, size, mean in zip(ndimage.find_objects(labels), sizes, means, strict=True):
        if size >= min_cells:
            rows, cols = slices
            box = Box(rows.start, cols.start, rows.stop, cols.stop, float(mean))
            found.append((box, int(size)))
    return sorted(found, key=lambda item: (-item[0].score, item[0].top, item[0].left))


def boxes_from_error_map(
    error_map: np.ndarray,
    image_shape: tuple[int, int],
    quantile: float = 0.75,
    max_boxes: int = 3,
) -> list[Box]:
    """Boxes around the high-error regions of a (gh, gw) per-patch error map.

    Patches with error >= the map's `quantile` are grouped into 8-connected regions; each
    region's bounding box is scaled from the patch grid to an image of `image_shape` (H, W)
    pixels (the map covers the whole image, stretched). Score = the region's mean error; the
    `max_boxes` highest-scoring regions are returned.
    """
    errors = np.asarray(error_map, dtype=np.float64)
    if errors.ndim != 2 or errors.size == 0 or not np.isfinite(errors).all():
        raise DataError(f"error map of shape {errors.shape}: expected finite (gh, gw) values")
    if not 0.0 <= quantile < 1.0:
        raise ConfigError(f"quantile={quantile!r} must be in [0, 1), e.g. 0.75")
    _check_count("max_boxes", max_boxes)
    height, width = image_shape
    gh, gw = errors.shape
    region = errors >= np.quantile(errors, quantile)
    boxes = []
    for cells, _ in component_boxes(region, errors)[:max_boxes]:
        boxes.append(
            Box(
                round(cells.top * height / gh),
                round(cells.left * width / gw),
                round(cells.bottom * height / gh),
                round(cells.right * width / gw),
                cells.score,
            )
        )
    return boxes


def patch_error_maps(
    mae: MAE,
    images: np.ndarray,
    *,
    groups: int = 4,
    rounds: int = 1,
    seed: int = 0,
    batch_size: int = 64,
    precision: str = "auto",
) -> np.ndarray:
    """The MAE's reconstruction error of every patch, (n, gh, gw) float64 (normalized pixels).

    One random MAE masking leaves a quarter of the patches without an error. Here each round
    splits the patches into `groups` equal groups by a seeded permutation and runs one masking
    per group that shows only that group (mask ratio 1 - 1/groups, 0.75 by default, as in MAE
    training), so every patch is hidden exactly `groups - 1` times per round; its error is the
    mean over those maskings. Masks depend on (seed, round) only, not on the image or batch.
    """
    size = mae.spec.image_size
    if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
        raise DataError(
            f"images of shape {images.shape} and dtype {images.dtype}: expected "
            f"uint8 (n, {size}, {size}, 3)"
        )
    if groups < 2 or groups > mae.num_patches:
        raise ConfigError(f"groups={groups} must be between 2 and {mae.num_patches} (patches)")
    _check_count("rounds", rounds)
    masks = _complementary_masks(mae.num_patches, groups, rounds, seed)
    device, was_training = module_device(mae), mae.training
    dtype = autocast_dtype(device, precision)
    total = torch.zeros(len(images), mae.num_patches, dtype=torch.float64)
    mae.eval()
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = mae.normalize(torch.tensor(images[start : start + batch_size], device=device))
            target = patchify(x, mae.patch)
            for mask in masks:
                rows = mask.expand(len(x), -1).to(device)
                with autocast(device, dtype):
                    pred = mae(x, mask=rows).pred
                error = (pred.float() - target).pow(2).mean(dim=-1).masked_fill(~rows, 0.0)
                total[start : start + len(x)] += error.double().cpu()
    mae.train(was_training)
    grid = mae.encoder.patch_embed.grid_size
    return (total / (rounds * (groups - 1))).numpy().reshape(len(images), *grid)


def _complementary_masks(
    num_patches: int, groups: int, rounds: int, seed: int
) -> list[torch.Tensor]:
    """rounds * groups masks (1, L) bool, True = hidden; within a round each shows one group."""
    masks = []
    for round_ in range(rounds):
        order = np.random.default_rng([seed, round_]).permutation(num_patches)
        for shown in np.array_split(order, groups):
            mask = torch.ones(1, num_patches, dtype=torch.bool)
            mask[0, torch.as_tensor(shown)] = False
            masks.append(mask)
    return masks


class ErrorMapProposer:
    """Proposes the regions the MAE reconstructs worst (a stand-in for SAM's lesion masks).

    The image is resized to the MAE's input (as for embedding), its per-patch error map is
    measured with `patch_error_maps`, and `boxes_from_error_map` turns it into boxes in the
    original image's pixels. The mask argument is ignored.
    """

    def __init__(
        self,
        mae: MAE,
        *,
        quantile: float = 0.75,
        max_boxes: int = 3,
        groups: int = 4,
        rounds: int = 1,
        seed: int = 0,
    ) -> None:
        self.mae, self.quantile, self.max_boxes = mae, quantile, max_boxes
        self.groups, self.rounds, self.seed = groups, rounds, seed

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> list[Box]:
        resized = resize_square(image, self.mae.spec.image_size, Image.Resampling.BILINEAR)
        errors = patch_error_maps(
            self.mae, resized[None], groups=self.groups, rounds=self.rounds, seed=self.seed
        )[0]
        return boxes_from_error_map(errors, image.shape[:2], self.quantile, self.max_boxes)


class MaskProposer:
    """Bounding boxes of a segmentation mask's 8-connected components (none without a mask).

    Components smaller than `min_fraction` of the image are noise and dropped; score = the
    component's share of the image, so the largest lesions come first.
    """

    def __init__(self, *, min_fraction: float = 0.001, max_boxes: int = 3) -> None:
        if not 0.0 <= min_fraction < 1.0:
            raise ConfigError(f"min_fraction={min_fraction!r} must be in [0, 1), e.g. 0.001")
        _check_count("max_boxes", max_boxes)
        self.min_fraction, self.max_boxes = min_fraction, max_boxes

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> list[Box]:
        if mask is None:
            return []
        if mask.shape != image.shape[:2]:
            raise DataError(f"mask of shape {mask.shape} does not match image {image.shape[:2]}")
        area = mask.size
        found = component_boxes(
            mask.astype(bool), np.ones(mask.shape), max(1, int(np.ceil(self.min_fraction * area)))
        )
        by_size = sorted(found, key=lambda item: (-item[1], item[0].top, item[0].left))
        return [
            Box(box.top, box.left, box.bottom, box.right, cells / area)
            for box, cells in by_size[: self.max_boxes]
        ]


class FirstNonEmpty:
    """Asks each proposer in turn and returns the first non-empty answer (e.g. mask, then MAE)."""

    def __init__(self, *proposers: PatchProposer) -> None:
        if not proposers:
            raise ConfigError("FirstNonEmpty needs at least one proposer")
        self.proposers: Sequence[PatchProposer] = proposers

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> list[Box]:
        for proposer in self.proposers:
            boxes = proposer(image, mask)
            if boxes:
                return boxes
        return []


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} must be an integer >= 1")
