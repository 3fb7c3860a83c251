"""Downstream evaluation: a light segmentation head on a (frozen) pre-trained ViT, scored by mIoU.

MedDEL judges a pre-training set by the mIoU of a simple segmentation head on the pre-trained
encoder. Here the head reads the encoder's patch tokens and predicts each token's p x p mask
patch (an MLP per token, "SETR-naive" style): it has no spatial machinery of its own, so what
it can segment is what the encoder's tokens carry. Frozen by default, so the tokens are computed
once and the head trains in seconds; `finetune=True` trains encoder and head together.

mIoU: binary segmentation (background, lesion); IoU of each class accumulated over all pixels
of the test split, averaged over the two classes (a class absent from both prediction and truth
counts as IoU 1).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from feddel.common.errors import ConfigError, DataError
from feddel.common.models.embed import input_stats, module_device, normalize_images


@dataclass(frozen=True)
class HeadConfig:
    """How the head is trained: AdamW, `steps` of `batch_size` images, cosine-free constant LR."""

    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-3
    hidden: int = 256
    finetune: bool = False
    encoder_lr: float = 1e-4  # only with finetune
    seed: int = 0
    # Heads trained (seeds seed, seed+1, ...) and averaged: one head's mIoU moves by ~0.01 with
    # its initialization and batches, as much as the effects compared (docs/does-curation-pay.md).
    repeats: int = 1

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.hidden, self.repeats) < 1:
            raise ConfigError(
                f"head steps={self.steps}, batch-size={self.batch_size}, "
                f"hidden={self.hidden} and repeats={self.repeats} must be >= 1"
            )
        if not (self.lr > 0 and self.encoder_lr > 0):
            raise ConfigError(f"head lr={self.lr} and encoder lr={self.encoder_lr} must be > 0")


class SegScore(NamedTuple):
    miou: float
    iou_background: float
    iou_lesion: float
    n_test: int


class SegHead(nn.Module):
    """(b, L, D) patch tokens -> (b, H, W) lesion logits; each token predicts its p x p patch.

    Tokens are standardized per channel by a BatchNorm without affine parameters, as in MAE's
    linear probing (He et al. 2022, appendix): MAE features have a few channels of very large
    magnitude that would otherwise drown the rest.
    """

    def __init__(self, dim: int, patch: int, grid: tuple[int, int], hidden: int) -> None:
        super().__init__()
        self.patch, self.grid = patch, grid
        self.norm = nn.BatchNorm1d(dim, affine=False)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, patch * patch)
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, length, dim = tokens.shape
        (gh, gw), p = self.grid, self.patch
        x = self.norm(tokens.reshape(b * length, dim)).reshape(b, length, dim)
        x = self.mlp(x).reshape(b, gh, gw, p, p)
        return torch.einsum("nhwpq->nhpwq", x).reshape(b, gh * p, gw * p)


FEATURE_BLOCKS = 4  # the head reads tokens from this many blocks spread over the depth


def feature_blocks(encoder: nn.Module) -> list[int]:
    """Indices of evenly spaced blocks ending at the last one (12 blocks: 2, 5, 8, 11)."""
    depth = len(encoder.blocks)
    count = min(FEATURE_BLOCKS, depth)
    return [depth - 1 - i * (depth // count) for i in reversed(range(count))]


def patch_tokens(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Normalized images (b,3,H,W) -> patch embedding + tokens of several blocks (b, L, (k+1)*D).

    Dense heads read several levels (SETR-MLA, ViTDet, UNETR's skip from the input): blocks
    spread over the depth carry context, and the patch embedding carries what each patch shows,
    which MAE's later blocks (tuned to complete masked images) partly drop. With it, a
    pre-trained encoder's head sees at least what a random-init one sees.
    """
    layers = encoder.forward_intermediates(
        images, indices=feature_blocks(encoder), intermediates_only=True, output_fmt="NLC"
    )
    embedded = encoder.norm_pre(encoder._pos_embed(encoder.patch_embed(images)))
    return torch.cat([embedded[:, encoder.num_prefix_tokens :], *layers], dim=-1)


def frozen_tokens(encoder: nn.Module, images: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """uint8 (n,s,s,3) -> float32 patch tokens (n, L, D) on the CPU, without gradients."""
    device = module_device(encoder)
    mean, std = (t.to(device) for t in input_stats(encoder))
    was_training = encoder.training
    encoder.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.as_tensor(np.ascontiguousarray(images[start : start + batch_size]))
            out.append(patch_tokens(encoder, normalize_images(batch.to(device), mean, std)).float())
    encoder.train(was_training)
    return torch.cat(out).cpu()


def evaluate_segmentation(
    encoder: nn.Module,
    train_images: np.ndarray,
    train_masks: np.ndarray,
    test_images: np.ndarray,
    test_masks: np.ndarray,
    config: HeadConfig | None = None,
) -> SegScore:
    """Train a head on (train_images, train_masks), score it on the test split.

    With `config.repeats` > 1, that many heads (seeds seed, seed+1, ...) are trained and scored
    and their scores averaged. Images uint8 (n,s,s,3), masks bool (n,s,s). The encoder is left
    unchanged (fine-tuning works on a copy), so one encoder can be scored at many centers.
    """
    config = config or HeadConfig()
    _check_split("train", train_images, train_masks)
    _check_split("test", test_images, test_masks)
    if config.finetune:
        scores = [
            _score_finetuned(encoder, train_images, train_masks, test_images, test_masks, repeat)
            for repeat in _repeats(config)
        ]
    else:  # the frozen encoder's tokens are computed once for all heads
        train_tokens = frozen_tokens(encoder, train_images)
        test_tokens = frozen_tokens(encoder, test_images)
        scores = [
            _score_head(_train_frozen(encoder, train_tokens, train_masks, repeat), test_tokens,
                        test_masks)
            for repeat in _repeats(config)
        ]  # fmt: skip
    return SegScore(
        float(np.mean([s.miou for s in scores])),
        float(np.mean([s.iou_background for s in scores])),
        float(np.mean([s.iou_lesion for s in scores])),
        len(test_masks),
    )


def _repeats(config: HeadConfig) -> list[HeadConfig]:
    """One single-head config per repeat, seeds seed .. seed + repeats - 1."""
    return [
        dataclasses.replace(config, seed=config.seed + i, repeats=1) for i in range(config.repeats)
    ]


def _score_finetuned(
    encoder: nn.Module,
    train_images: np.ndarray,
    train_masks: np.ndarray,
    test_images: np.ndarray,
    test_masks: np.ndarray,
    config: HeadConfig,
) -> SegScore:
    tuned = copy.deepcopy(encoder)  # the caller's encoder stays as it was
    head = _train_finetuned(tuned, train_images, train_masks, config)
    return _score_head(head, frozen_tokens(tuned, test_images), test_masks)


def _score_head(head: SegHead, tokens: torch.Tensor, masks: np.ndarray) -> SegScore:
    with torch.inference_mode():
        predicted = (head(tokens.to(module_device(head))) > 0).cpu().numpy()
    return binary_miou(predicted, masks)


def binary_miou(predicted: np.ndarray, truth: np.ndarray) -> SegScore:
    """mIoU over (background, lesion), each IoU pooled over all pixels of all test images."""
    if predicted.shape != truth.shape:
        raise DataError(f"prediction shape {predicted.shape} != mask shape {truth.shape}")
    ious = []
    for pred_c, true_c in ((~predicted, ~truth), (predicted, truth)):
        union = np.logical_or(pred_c, true_c).sum()
        inter = np.logical_and(pred_c, true_c).sum()
        ious.append(1.0 if union == 0 else float(inter) / float(union))
    return SegScore(float(np.mean(ious)), ious[0], ious[1], len(truth))


def _new_head(encoder: nn.Module, config: HeadConfig) -> SegHead:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        grid = tuple(encoder.patch_embed.grid_size)
        dim = encoder.embed_dim * (len(feature_blocks(encoder)) + 1)  # + the patch embedding
        return SegHead(dim, encoder.patch_embed.patch_size[0], grid, config.hidden)


def _train_frozen(
    encoder: nn.Module,
    tokens: torch.Tensor,
    masks: np.ndarray,
    config: HeadConfig,
) -> SegHead:
    generator = torch.Generator().manual_seed(config.seed)
    device = module_device(encoder)  # the head trains where the encoder runs (a GPU, if any)
    head = _new_head(encoder, config).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=1e-4)
    tokens = tokens.to(device)
    targets = torch.as_tensor(masks, dtype=torch.float32).to(device)
    for _ in range(config.steps):
        rows = torch.randint(len(tokens), (config.batch_size,), generator=generator).to(device)
        loss = _seg_loss(head(tokens[rows]), targets[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return head.eval()


def _train_finetuned(
    encoder: nn.Module,
    images: np.ndarray,
    masks: np.ndarray,
    config: HeadConfig,
) -> SegHead:
    generator = torch.Generator().manual_seed(config.seed)
    device = module_device(encoder)
    head = _new_head(encoder, config).to(device)
    mean, std = (t.to(device) for t in input_stats(encoder))
    optimizer = torch.optim.AdamW(
        [
            {"params": head.parameters(), "lr": config.lr},
            {"params": encoder.parameters(), "lr": config.encoder_lr},
        ],
        weight_decay=1e-4,
    )
    targets = torch.as_tensor(masks, dtype=torch.float32)
    pixels = torch.as_tensor(np.ascontiguousarray(images))
    encoder.train()
    for _ in range(config.steps):
        rows = torch.randint(len(pixels), (config.batch_size,), generator=generator)
        x = normalize_images(pixels[rows].to(device), mean, std)
        loss = _seg_loss(head(patch_tokens(encoder, x)), targets[rows].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    encoder.eval()
    return head.eval()


def _seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice: lesions cover ~5% of pixels, BCE alone ignores them."""
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(1, 2))
    dice = 1 - (2 * inter + 1) / (prob.sum(dim=(1, 2)) + target.sum(dim=(1, 2)) + 1)
    return bce + dice.mean()


def _check_split(name: str, images: np.ndarray, masks: np.ndarray) -> None:
    if len(images) == 0:
        raise DataError(f"the {name} split has no labeled images")
    if images.ndim != 4 or images.dtype != np.uint8 or masks.shape != images.shape[:3]:
        raise DataError(
            f"{name} images {images.shape} {images.dtype} and masks {masks.shape}: expected "
            "uint8 (n, s, s, 3) and bool (n, s, s)"
        )
