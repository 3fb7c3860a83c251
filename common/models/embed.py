"""Image encoders: which timm ViT, which weights, on which device and precision, and embedding.

A center embeds its images with the encoder the server names in an `EncoderSpec`. Two centers
may only pool statistics when their encoders are identical, so every spec has a fingerprint
(model, input size, and the weights' bytes or the random-init seed) that centers report and the
server compares.

Precision ("auto"): bf16 autocast on CUDA (fp16 where the GPU lacks bf16); on CPU bf16 autocast
when the CPU has native bf16 instructions (AVX512-BF16 or AMX), else fp32. The choice depends
only on the hardware, never on a timing taken at run time, so a resumed run computes
bit-identical rows. bf16 embeddings agree with fp32 to cosine > 0.9999 (pairwise similarities
within 0.005); pass precision="fp32" where that matters.

Measured on this project's 2-core AMD EPYC (AVX512-BF16; shared with other jobs, best of 3),
vit_tiny_patch16_224, batch 64, img/s; "files" = `embed_files` on 720x576 JPEGs (decoding
alone: ~270 img/s per core):

    size  precision  bare forward  files, 0 workers  1 worker  2 workers
    64    fp32       590-690       160-190           165-185   205-230
    64    bf16       1120-1220     205-225           155-200   240-265
    224   fp32       43-47         36-37             33-36     36-38
    224   bf16       71-77         55-57             52-58     56-59
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import logging
import os
import pickle
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.layers import PatchEmbed, resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

import feddel.common.models.registry  # noqa: F401  (registers DEFAULT_MODEL with timm)
from feddel.common.config import DEFAULT_MODEL
from feddel.common.data.budget import shared_budget
from feddel.common.data.scan import load_image
from feddel.common.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

MAE_CHECKPOINT_FORMAT = (
    "feddel-mae-v1"  # written by common/models/mae.py, readable as encoder weights
)
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")
PRECISIONS = ("auto", "fp32", "bf16")
_WRAPPER_KEYS = ("model", "state_dict", "encoder")
_KEY_PREFIXES = ("module.", "encoder.")
_NON_ENCODER_PREFIXES = ("head.", "decoder", "mask_token")  # classifier / MAE pre-training parts

Progress = Callable[[int, int], None]  # (items done, items total)


@dataclass(frozen=True)
class EncoderSpec:
    """A timm ViT (plain patch embedding, learned absolute position embedding) and its weights.

    `weights` is a local file (.safetensors, or .pth/.pt incl. FedDEL MAE checkpoints); None or ""
    means random initialization seeded with `seed` (`seed` is ignored when weights are given).
    """

    model: str = DEFAULT_MODEL
    image_size: int = 64
    weights: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.weights == "":
            object.__setattr__(self, "weights", None)
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ConfigError(f"image-size={self.image_size!r} must be a positive integer")
        patch = _patch_size(self.model)
        if self.image_size % patch:
            raise ConfigError(
                f"image-size={self.image_size} must be a multiple of the patch size {patch} of "
                f"{self.model}, e.g. {max(patch, self.image_size // patch * patch)}"
            )
        if self.weights is not None:
            path = Path(self.weights)
            if path.suffix not in WEIGHT_SUFFIXES:
                raise ConfigError(
                    f"weights={self.weights}: unsupported file type {path.suffix!r}; "
                    f"use one of {', '.join(WEIGHT_SUFFIXES)}"
                )
            if not path.is_file():
                raise ConfigError(f"weights={self.weights} does not exist or is not a file")

    @property
    def patch_size(self) -> int:
        return _patch_size(self.model)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EncoderSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown encoder spec key(s) {', '.join(unknown)}; known: {sorted(known)}"
            )
        return cls(**values)


@functools.lru_cache(maxsize=64)
def _patch_size(model: str) -> int:
    """Patch size of a supported timm ViT, from a weightless (meta-device) instance."""
    base = model.split(".")[0]  # a pretrained tag (".augreg_in21k") only picks mean/std
    names = timm.list_models("vit_*")
    if base not in names:
        close = difflib.get_close_matches(base, names, n=5, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else "see timm.list_models('vit_*')"
        raise ConfigError(f"model={model!r} is not a timm ViT name; {hint}")
    with torch.device("meta"):
        net = timm.create_model(model, pretrained=False, num_classes=0)
    embed = getattr(net, "patch_embed", None)
    if (
        not (isinstance(net, VisionTransformer) and isinstance(embed, PatchEmbed))
        or net.pos_embed is None
    ):
        raise ConfigError(
            f"model={model!r} is not a plain ViT (patch embedding + learned position embedding), "
            "which FedDEL's MAE needs; pick e.g. vit_tiny_patch16_224 or vit_small_patch16_224"
        )
    height, width = embed.patch_size
    if height != width:
        raise ConfigError(f"model={model!r} has non-square patches {embed.patch_size}")
    return int(height)


def encoder_fingerprint(spec: EncoderSpec) -> str:
    """16 hex chars identifying the encoder's function: equal fingerprints embed identically."""
    source = f"sha256:{_file_sha256(spec.weights)}" if spec.weights else f"random-init:{spec.seed}"
    blob = json.dumps(
        {"model": spec.model, "image_size": spec.image_size, "weights": source}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _file_sha256(path: str) -> str:
    stat = Path(path).stat()
    return _file_sha256_cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _file_sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_encoder(spec: EncoderSpec) -> VisionTransformer:
    """The spec's ViT on the CPU in eval mode, features only (`num_classes=0`): (b,3,s,s) -> (b,d).

    Random init is seeded inside a forked RNG, so the caller's global torch RNG is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        encoder = timm.create_model(
            spec.model, pretrained=False, num_classes=0, img_size=spec.image_size
        )
    if spec.weights:
        load_encoder_weights(encoder, spec.weights, spec.model)
    return encoder.eval()


def load_encoder_weights(encoder: VisionTransformer, path: str | Path, model: str) -> None:
    """Load a weights file into `encoder`; mismatches raise a DataError naming file and keys."""
    state = _read_state_dict(Path(path), model)
    state = {k: v for k, v in state.items() if not k.startswith(_NON_ENCODER_PREFIXES)}
    pos = state.get("pos_embed")
    if pos is not None and pos.ndim == 3 and pos.shape[2] == encoder.embed_dim:
        state["pos_embed"] = _resample_pos_embed(pos, encoder, path)
    own = encoder.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        raise DataError(
            f"{path}: weights do not fit {model} at image size {encoder.patch_embed.img_size[0]}: "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:3]}, {len(wrong)} wrong shapes (file vs model) {wrong[:3]}; set model "
            "to the architecture the weights were trained with"
        )
    encoder.load_state_dict(state)


def _read_state_dict(path: Path, model: str) -> dict[str, torch.Tensor]:
    """Tensors by key from a safetensors/torch file, unwrapped from common checkpoint layouts."""
    try:
        if path.suffix == ".safetensors":
            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, SafetensorError, pickle.UnpicklingError) as exc:
        raise DataError(f"{path}: cannot read weights ({exc}); is the file complete?") from exc
    if isinstance(obj, dict) and "format" in obj:
        if obj["format"] != MAE_CHECKPOINT_FORMAT:
            raise DataError(f"{path}: unknown checkpoint format {obj['format']!r}")
        trained = str(obj.get("spec", {}).get("model", model))
        if trained.split(".")[0] != model.split(".")[0]:
            raise DataError(f"{path}: checkpoint holds a {trained} encoder; set model={trained}")
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    tensors = (
        {_strip(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if isinstance(obj, dict)
        else {}
    )
    if not tensors:
        raise DataError(f"{path}: no state dict found (expected tensors by parameter name)")
    return tensors


def _strip(key: str) -> str:
    while key.startswith(_KEY_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def _resample_pos_embed(
    pos: torch.Tensor, encoder: VisionTransformer, path: str | Path
) -> torch.Tensor:
    """Position embedding (1, prefix + side^2, D) of another image size -> the encoder's grid."""
    prefix = 0 if encoder.no_embed_class else encoder.num_prefix_tokens
    side = round(max(0, pos.shape[1] - prefix) ** 0.5)
    if pos.shape == encoder.pos_embed.shape or side * side != pos.shape[1] - prefix:
        return pos  # equal, or not a square grid: the shape check reports it
    logger.info(
        "resampling pos_embed of %s from %dx%d to %s",
        path,
        side,
        side,
        encoder.patch_embed.grid_size,
    )
    return resample_abs_pos_embed(
        pos, new_size=list(encoder.patch_embed.grid_size), num_prefix_tokens=prefix
    )


def pick_device(preferred: str | None = None) -> torch.device:
    """`preferred` ("cpu", "cuda", "cuda:1"), or None/"auto" for cuda when available, else cpu."""
    if preferred in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preferred)
    except RuntimeError as exc:
        raise ConfigError(
            f"device={preferred!r} is not a torch device; use cpu, cuda or auto"
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={preferred!r} requested but no CUDA GPU is visible; use cpu")
    return device


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for `precision` on `device` (None = plain fp32); see the module doc."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} must be one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    native_bf16 = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )
    return torch.bfloat16 if native_bf16 else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def normalize_images(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Pixel values (b,h,w,3), uint8 or float 0..255 -> float32 (b,3,h,w): (x/255 - mean) / std."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def input_stats(encoder: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's input mean and std (3,) float32, from timm's resolved data config."""
    config = timm.data.resolve_model_data_config(encoder)
    return (
        torch.tensor(config["mean"], dtype=torch.float32),
        torch.tensor(config["std"], dtype=torch.float32),
    )


def embed_batch(
    encoder: torch.nn.Module, images: np.ndarray | torch.Tensor, precision: str = "auto"
) -> np.ndarray:
    """uint8 RGB (b,s,s,3) -> L2-normalized float32 embeddings (b,d), on the encoder's device."""
    size = encoder.patch_embed.img_size
    if (
        images.ndim != 4
        or tuple(images.shape[1:]) != (*size, 3)
        or images.dtype not in (np.uint8, torch.uint8)
    ):
        raise DataError(
            f"images of shape {tuple(images.shape)} and dtype {images.dtype}: "
            f"expected uint8 (b, {size[0]}, {size[1]}, 3)"
        )
    device = module_device(encoder)
    mean, std = (t.to(device) for t in input_stats(encoder))
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()  # torch warns on (and must not alias) read-only arrays
    batch = torch.as_tensor(images).to(device, non_blocking=True)
    with torch.inference_mode(), autocast(device, autocast_dtype(device, precision)):
        features = encoder(normalize_images(batch, mean, std))
    out = torch.nn.functional.normalize(features.float(), dim=-1)
    return out.cpu().numpy()


class FailedFile(NamedTuple):
    index: int  # position in the input list
    reason: str


class EmbeddedBatch(NamedTuple):
    indices: np.ndarray  # (b,) int64 positions in the input list, increasing
    embeddings: np.ndarray  # (b, d) float32, L2-normalized
    failed: list[FailedFile]


class EmbedResult(NamedTuple):
    embeddings: np.ndarray  # (n, d) float32, L2-normalized; rows of failed files are NaN
    failed: list[FailedFile]


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(
        self, paths: Sequence[Path | str], size: int, frames: Sequence[int | None] | None = None
    ) -> None:
        self.paths, self.size = list(paths), size
        self.frames = list(frames) if frames is not None else [None] * len(self.paths)
        if len(self.frames) != len(self.paths):
            raise DataError(f"{len(self.frames)} frames for {len(self.paths)} files; need one each")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            frame = self.frames[index]
            return index, load_image(self.paths[index], self.size, frame=frame), None
        except DataError as exc:  # UnreadableImage: reported, not fatal
            return index, None, str(exc)


def _collate(
    items: list[tuple[int, np.ndarray | None, str | None]], size: int
) -> tuple[torch.Tensor, torch.Tensor, list[FailedFile]]:
    good = [(i, image) for i, image, _ in items if image is not None]
    failed = [FailedFile(i, reason) for i, image, reason in items if image is None]
    indices = torch.tensor([i for i, _ in good], dtype=torch.int64)
    images = (
        torch.from_numpy(np.stack([image for _, image in good]))
        if good
        else torch.empty((0, size, size, 3), dtype=torch.uint8)
    )
    return indices, images, failed


def default_num_workers(n_files: int, batch_size: int, device: torch.device) -> int:
    """Decoding worker processes for `iter_embed_files` (measurements: see the module doc).

    None for a single batch (nothing to overlap), a single core, or a call from a non-main
    thread (fork safety); on a CPU min(2, cores): on 2
    cores two workers beat none and one (decoding is the bottleneck at 64 px, and they cost
    nothing measurable at 224 px); up to 8 in front of a GPU, where decoding is the bottleneck.
    """
    if threading.current_thread() is not threading.main_thread():
        # DataLoader workers are forked; forking a multi-threaded process (a center handled on
        # a worker thread, as in the in-process simulation) can deadlock: decode in-process.
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if n_files <= batch_size or cores < 2:
        return 0
    return min(8, cores - 1) if device.type == "cuda" else min(2, cores)


def iter_embed_files(
    encoder: torch.nn.Module,
    paths: Sequence[Path | str],
    size: int,
    batch_size: int = 64,
    num_workers: int | None = None,
    precision: str = "auto",
    frames: Sequence[int | None] | None = None,
) -> Iterator[EmbeddedBatch]:
    """Embed image files in order, batch by batch; decoding runs in DataLoader worker processes.

    `frames` (one per path, None = a single image) picks the frame of a multi-frame file.
    Batch k always holds files [k*batch_size, (k+1)*batch_size) minus unreadable ones, so a
    caller that persists batches can resume at a batch boundary with identical arithmetic.
    """
    if batch_size < 1:
        raise ConfigError(f"batch-size={batch_size} must be >= 1")
    device = module_device(encoder)
    workers = num_workers
    if workers is None:
        workers = default_num_workers(len(paths), batch_size, device)
    shared_budget()  # made before the workers fork, so they share it (common/data/budget.py)
    loader = torch.utils.data.DataLoader(
        _ImageFiles(paths, size, frames),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=functools.partial(_collate, size=size),
        pin_memory=device.type == "cuda",
    )
    dim = encoder.num_features
    for indices, images, failed in loader:
        vectors = (
            embed_batch(encoder, images, precision)
            if len(images)
            else np.empty((0, dim), dtype=np.float32)
        )
        yield EmbeddedBatch(indices.numpy(), vectors, failed)


def embed_files(
    encoder: torch.nn.Module,
    paths: Sequence[Path | str],
    size: int,
    batch_size: int = 64,
    num_workers: int | None = None,
    progress: Progress | None = None,
    precision: str = "auto",
) -> EmbedResult:
    """Embed image files into one (n, d) array; unreadable files are listed, not fatal."""
    out = np.full((len(paths), encoder.num_features), np.nan, dtype=np.float32)
    failed: list[FailedFile] = []
    done = 0
    for batch in iter_embed_files(encoder, paths, size, batch_size, num_workers, precision):
        out[batch.indices] = batch.embeddings
        failed.extend(batch.failed)
        done += len(batch.indices) + len(batch.failed)
        if progress is not None:
            progress(done, len(paths))
    return EmbedResult(out, failed)
