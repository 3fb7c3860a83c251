"""Masked autoencoder (MAE) on a timm ViT: pre-training, checkpoints, reconstruction errors.

FedDEL pre-trains the encoder with MAE (He et al. 2022; AdamW, cosine schedule with warmup,
random resized crop and flip; peak LR 1.5e-4, batch 16, as in the MedDEL paper) and scores
samples with MAE PVI, which needs each sample's reconstruction error against a context-free
predictor (the global mean image).

Pixel space: inputs and targets are the encoder's normalized input, (x/255 - mean) / std with
the encoder's timm mean/std; targets are the raw patches of that tensor (no per-patch
normalization, unlike MAE's optional `norm_pix_loss`), so the MAE and the mean image predictor
are scored in one space. Patches flatten as (p, p, channel), MAE's order.
"""

from __future__ import annotations

import io
import json
import math
import pickle
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from feddel.common.errors import ConfigError, DataError
from feddel.common.io import atomic_write_bytes
from feddel.common.models.augment import resized_crop_flip
from feddel.common.models.embed import (
    MAE_CHECKPOINT_FORMAT,
    EncoderSpec,
    Progress,
    autocast,
    autocast_dtype,
    build_encoder,
    input_stats,
    module_device,
    normalize_images,
    pick_device,
)

MASK_RATIO = 0.75  # MAE's: three of four patches hidden from the encoder


class MAEOutput(NamedTuple):
    loss: torch.Tensor  # () float32: MSE over masked patches
    pred: torch.Tensor  # (b, L, p*p*3) float32: predicted patches (all positions)
    mask: torch.Tensor  # (b, L) bool: True = masked (hidden from the encoder)
    image_loss: torch.Tensor  # (b,) float32: each image's MSE over its masked patches


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(b, 3, H, W) -> (b, L, p*p*3), patches in row-major grid order."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // patch) * (w // patch), -1)


def random_masks(
    n: int, num_patches: int, ratio: float, generator: torch.Generator
) -> torch.Tensor:
    """(n, L) bool, exactly L - int(L * (1 - ratio)) patches masked per row, drawn on the CPU."""
    keep = int(num_patches * (1 - ratio))
    if not 0.0 < ratio < 1.0 or not 1 <= keep < num_patches:
        raise ConfigError(
            f"mask-ratio={ratio} must leave between 1 and {num_patches - 1} of "
            f"{num_patches} patches visible, e.g. 0.75"
        )
    order = torch.rand(n, num_patches, generator=generator).argsort(dim=1)
    return torch.ones(n, num_patches, dtype=torch.bool).scatter_(1, order[:, :keep], False)


class MAE(nn.Module):
    """Encoder = `build_encoder(spec)`; decoder = a small ViT on all patches (MAE, He et al.)."""

    def __init__(
        self,
        spec: EncoderSpec,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
    ) -> None:
        super().__init__()
        if decoder_dim % 4 or decoder_dim % decoder_heads:
            raise ConfigError(
                f"decoder dim {decoder_dim} must be divisible by 4 and by "
                f"decoder heads {decoder_heads}"
            )
        self.spec = spec
        self.decoder_config = {"dim": decoder_dim, "depth": decoder_depth, "heads": decoder_heads}
        self.encoder = build_encoder(spec)
        self.patch = spec.patch_size
        grid = self.encoder.patch_embed.grid_size
        self.num_patches = grid[0] * grid[1]
        mean, std = input_stats(self.encoder)
        self.register_buffer("input_mean", mean, persistent=False)
        self.register_buffer("input_std", std, persistent=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            self.decoder = _Decoder(
                self.encoder.embed_dim,
                decoder_dim,
                decoder_depth,
                decoder_heads,
                list(grid),
                self.patch * self.patch * 3,
            )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or pixel-valued float (b,h,w,3) -> normalized float32 (b,3,h,w)."""
        return normalize_images(images, self.input_mean, self.input_std)

    def forward(
        self,
        images: torch.Tensor,
        mask_ratio: float = MASK_RATIO,
        generator: torch.Generator | None = None,
        mask: torch.Tensor | None = None,
    ) -> MAEOutput:
        """Normalized images (b,3,H,W); masks drawn with `generator` (CPU) unless `mask` (b,L)
        is given (every row must hide the same number of patches)."""
        if mask is None:
            if generator is None:
                raise ValueError("MAE.forward needs a seeded generator or an explicit mask")
            mask = random_masks(images.shape[0], self.num_patches, mask_ratio, generator)
        mask = mask.to(images.device)
        keep = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, : int((~mask[0]).sum())]
        latent = self._encode_visible(images, keep)
        pred = self.decoder(latent, keep, self.encoder.num_prefix_tokens).float()
        per_patch = (pred - patchify(images.float(), self.patch)).pow(2).mean(dim=-1)
        masked = per_patch * mask
        loss = masked.sum() / mask.sum()
        return MAEOutput(loss, pred, mask, masked.sum(dim=1) / mask.sum(dim=1))

    def _encode_visible(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Encoder tokens (b, prefix + kept, D) from the patches at `keep` (b, kept)."""
        enc = self.encoder
        x = enc.patch_embed(images)
        x = x.flatten(1, 2) if x.ndim == 4 else x  # NHWC output of dynamic-size models
        prefix = enc.num_prefix_tokens
        pos = enc.pos_embed if enc.no_embed_class else enc.pos_embed[:, prefix:]
        x = torch.gather(x + pos, 1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        tokens = [
            t.expand(x.shape[0], -1, -1) for t in (enc.cls_token, enc.reg_token) if t is not None
        ]
        if tokens:
            head = torch.cat(tokens, dim=1)
            head = head if enc.no_embed_class else head + enc.pos_embed[:, :prefix]
            x = torch.cat([head, x], dim=1)
        x = enc.norm_pre(enc.pos_drop(x))
        return enc.norm(enc.blocks(x))


class _Decoder(nn.Module):
    """Mask tokens at hidden positions, fixed 2-D sin-cos positions, `depth` ViT blocks."""

    def __init__(
        self, in_dim: int, dim: int, depth: int, heads: int, grid: list[int], out_dim: int
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer(
            "pos", build_sincos2d_pos_embed(grid, dim).unsqueeze(0), persistent=False
        )
        self.blocks = nn.Sequential(
            *[Block(dim, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, out_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, latent: torch.Tensor, keep: torch.Tensor, prefix: int) -> torch.Tensor:
        """(b, prefix + kept, D) -> predicted patches (b, L, out_dim)."""
        x = self.embed(latent)
        head, visible = x[:, :prefix], x[:, prefix:]
        full = self.mask_token.to(visible.dtype).expand(x.shape[0], self.pos.shape[1], -1)
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]), visible)
        x = torch.cat([head, full + self.pos.to(full.dtype)], dim=1)
        return self.pred(self.norm(self.blocks(x)))[:, prefix:]


def train_mae(
    mae: MAE,
    data: np.ndarray | Iterable[Any],
    steps: int,
    lr: float = 1.5e-4,
    weight_decay: float = 0.05,
    warmup_steps: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    device: str | None = None,
    progress: Progress | None = None,
    mask_ratio: float = MASK_RATIO,
    precision: str = "auto",
    schedule: tuple[int, int] | None = None,
    local_sgd: bool = False,
) -> list[float]:
    """Train in place for `steps` AdamW steps (cosine LR, linear warmup); returns step losses.

    `data` is uint8 (n,h,w,3) images, or an iterable of uint8 (b,h,w,3) batches (e.g. a
    DataLoader; re-iterated when exhausted). Images are cut into batches of exactly
    `batch_size` from seeded permutations laid end to end, so a center holding fewer images
    than a batch repeats them (each copy gets its own crop and mask): every step costs the same,
    and under FedSGD one center's single image is not a whole center's gradient.
    `schedule=(offset, total)` places these steps at offset..offset+steps of a longer cosine
    schedule of `total` steps (a federated round trains one slice of the global schedule).
    Warmup defaults to 5% of the schedule (MAE: 40 of 800 epochs). Every batch gets MAE's
    random resized crop and flip (common/models/augment.py). `local_sgd` takes plain SGD steps
    at a constant `lr` instead of AdamW on the cosine schedule: a FedAdam
    center, whose server holds the optimizer state, weight decay and schedule
    (server/training/fedadam.py).
    Leaves `mae` in eval mode.
    """
    offset, total = (0, steps) if schedule is None else schedule
    if steps < 1 or batch_size < 1 or lr <= 0 or weight_decay < 0:
        raise ConfigError(
            f"steps={steps} and batch-size={batch_size} must be >= 1, lr={lr} > 0, "
            f"weight-decay={weight_decay} >= 0"
        )
    if offset < 0 or offset + steps > total:
        raise ConfigError(f"schedule slice {offset}..{offset + steps} lies outside 0..{total}")
    warmup = max(1, round(0.05 * total)) if warmup_steps is None else warmup_steps
    run_on = pick_device(device)
    mae.to(run_on).train()
    dtype = autocast_dtype(run_on, precision)
    if local_sgd:
        optimizer: torch.optim.Optimizer = torch.optim.SGD(mae.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    else:
        optimizer = mae_adamw(mae, lr, weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: cosine_factor(offset + s, total, warmup)
        )
    losses: list[float] = []
    draws = masked_batches(mae, data, batch_size, seed, mask_ratio, run_on)
    for step, (images, mask) in zip(range(steps), draws, strict=False):
        with autocast(run_on, dtype):
            loss = mae(images, mask=mask).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, steps)
    mae.eval()
    return losses


class MaskedBatch(NamedTuple):
    images: torch.Tensor  # (b, 3, h, w) normalized, cropped and flipped
    mask: torch.Tensor  # (b, L) bool, True = hidden from the encoder


def masked_batches(
    mae: MAE,
    data: np.ndarray | Iterable[Any],
    batch_size: int,
    seed: int,
    mask_ratio: float = MASK_RATIO,
    device: torch.device | None = None,
) -> Iterator[MaskedBatch]:
    """What `train_mae` trains on, step by step: batches cut from seeded permutations, each
    with MAE's crop and flip (generator seed + 1) and a random mask (generator seed). The
    single source of a step's randomness, so that simulations/science/fastsgd.py draws exactly
    the batches the centers draw."""
    device = device or module_device(mae)
    masks = torch.Generator().manual_seed(seed)
    crops = torch.Generator().manual_seed(seed + 1)
    for batch in _batches(data, batch_size, seed):
        images = mae.normalize(torch.as_tensor(batch).to(device, non_blocking=True))
        images = resized_crop_flip(images, crops)
        mask = random_masks(images.shape[0], mae.num_patches, mask_ratio, masks)
        yield MaskedBatch(images, mask)


def mae_adamw(mae: MAE, lr: float, weight_decay: float = 0.05) -> torch.optim.AdamW:
    """MAE's optimizer: AdamW, betas (0.9, 0.95), no decay on biases, norms and tokens."""
    params = list(mae.named_parameters())
    decay = [p for n, p in params if not _exempt_from_decay(n, p)]
    no_decay = [p for n, p in params if _exempt_from_decay(n, p)]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.95),
    )


def _exempt_from_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norms, position embeddings and learned tokens are not decayed (MAE, timm)."""
    return param.ndim < 2 or name.endswith(("pos_embed", "cls_token", "reg_token", "mask_token"))


def cosine_factor(step: int, steps: int, warmup: int) -> float:
    """The learning-rate factor at `step` of a cosine schedule of `steps` with linear warmup."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _batches(data: np.ndarray | Iterable[Any], batch_size: int, seed: int) -> Iterator[Any]:
    if isinstance(data, np.ndarray):
        if data.ndim != 4 or data.dtype != np.uint8 or len(data) == 0:
            raise DataError(
                f"training images of shape {data.shape} and dtype {data.dtype}: "
                "expected non-empty uint8 (n, h, w, 3)"
            )
        rng = np.random.default_rng(seed)
        queue = np.zeros(0, dtype=np.int64)
        while True:
            while len(queue) < batch_size:  # one seeded permutation per pass, back to back
                queue = np.concatenate([queue, rng.permutation(len(data))])
            yield data[np.sort(queue[:batch_size])]
            queue = queue[batch_size:]
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise DataError("the training data loader yielded no batches")


def save_mae_checkpoint(mae: MAE, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write {format, spec, decoder_config, encoder, decoder, extra} atomically (torch.save).

    `extra` must be JSON-like (numbers, strings, lists, dicts): it is read back with
    `weights_only=True`. `build_encoder(EncoderSpec(weights=path))` loads the encoder part.
    """
    extra = {} if extra is None else extra
    try:
        json.dumps(extra)
    except TypeError as exc:
        raise ConfigError(f"checkpoint extra must be JSON-like: {exc}") from exc
    spec = {**mae.spec.to_dict(), "weights": None}
    payload = {
        "format": MAE_CHECKPOINT_FORMAT,
        "spec": spec,
        "decoder_config": mae.decoder_config,
        "encoder": _cpu_state(mae.encoder),
        "decoder": _cpu_state(mae.decoder),
        "extra": extra,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def load_mae_checkpoint(path: str | Path) -> MAE:
    """The MAE saved at `path` (on the CPU, eval mode); its spec's weights point at `path`."""
    payload = _read_checkpoint(path)
    spec = EncoderSpec.from_dict(payload["spec"])
    config = payload["decoder_config"]
    mae = MAE(spec, config["dim"], config["depth"], config["heads"])
    for part in ("encoder", "decoder"):
        try:
            getattr(mae, part).load_state_dict(payload[part])
        except RuntimeError as exc:
            raise DataError(f"{path}: {part} weights do not fit {spec.model}: {exc}") from exc
    mae.spec = EncoderSpec(spec.model, spec.image_size, str(path), spec.seed)
    return mae.eval()


def checkpoint_extra(path: str | Path) -> dict[str, Any]:
    """The `extra` saved with the checkpoint at `path`."""
    return dict(_read_checkpoint(path)["extra"])


def _read_checkpoint(path: str | Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
        raise DataError(f"{path}: cannot read MAE checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != MAE_CHECKPOINT_FORMAT:
        raise DataError(f"{path}: not a FedDEL MAE checkpoint (format {MAE_CHECKPOINT_FORMAT})")
    return payload
