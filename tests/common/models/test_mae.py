"""MAE on timm ViTs: masking, loss, training, checkpoints, reconstruction errors (tiny, CPU)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from feddel.common.errors import ConfigError, DataError
from feddel.common.models.augment import resized_crop_flip
from feddel.common.models.embed import EncoderSpec, build_encoder, embed_batch, encoder_fingerprint
from feddel.common.models.mae import (
    MAE,
    _batches,
    load_mae_checkpoint,
    patchify,
    random_masks,
    save_mae_checkpoint,
    train_mae,
)

SPEC = EncoderSpec("vit_tiny_patch16_224", 64, seed=1)


@pytest.fixture(scope="module")
def trained() -> MAE:
    mae = MAE(SPEC)
    train_mae(mae, _blobs(8), steps=3, batch_size=4, lr=1e-3)
    return mae


def _blobs(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth images (a bright disc on a coloured background): learnable structure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        (cy, cx), r = rng.uniform(16, size - 16, 2), rng.uniform(6, 14)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)[..., None]
        out[i] = np.where(disc, rng.integers(180, 256, 3), rng.integers(0, 120, 3))
    return out


def _normalized(mae: MAE, images: np.ndarray) -> torch.Tensor:
    return mae.normalize(torch.from_numpy(images))


@pytest.mark.parametrize(
    ("model", "size"),
    [
        ("vit_tiny_patch16_224", 32),  # class token, position embedding covers it
        ("vit_small_patch16_224", 32),
        ("vit_small_patch8_224", 32),  # patch 8
        ("vit_small_patch14_reg4_dinov2", 28),  # class + 4 register tokens, no_embed_class
        ("vit_medium_patch16_gap_256", 32),  # no prefix tokens
    ],
)
def test_mae_forward_shapes_and_no_nan(model: str, size: int) -> None:
    mae = MAE(EncoderSpec(model, size))
    patch = mae.patch
    images = torch.randn(2, 3, size, size)
    out = mae(images, 0.75, torch.Generator().manual_seed(0))
    count = (size // patch) ** 2
    assert out.pred.shape == (2, count, patch * patch * 3) and out.mask.shape == (2, count)
    assert out.mask.sum(dim=1).tolist() == [count - int(count * 0.25)] * 2
    assert torch.isfinite(out.pred).all() and torch.isfinite(out.loss)


def test_patchify_orders_patches_row_major_pixels_then_channels() -> None:
    image = torch.arange(3 * 4 * 4, dtype=torch.float32).reshape(1, 3, 4, 4)
    patches = patchify(image, 2)
    assert patches.shape == (1, 4, 12)
    # patch 1 = rows 0-1, cols 2-3; its first pixel (0, 2) has channels 2, 18, 34
    assert patches[0, 1, :3].tolist() == [2.0, 18.0, 34.0]
    assert patches[0, 2, 3:6].tolist() == [9.0, 25.0, 41.0]  # pixel (2, 1)


def test_random_masks_are_seeded_with_exact_ratio() -> None:
    a = random_masks(5, 16, 0.75, torch.Generator().manual_seed(3))
    b = random_masks(5, 16, 0.75, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.sum(dim=1).tolist() == [12] * 5
    assert not torch.equal(a, random_masks(5, 16, 0.75, torch.Generator().manual_seed(4)))
    with pytest.raises(ConfigError, match=r"mask-ratio=0\.99"):
        random_masks(1, 16, 0.99, torch.Generator())


def test_mae_loss_is_mse_of_masked_patches_only() -> None:
    mae = MAE(EncoderSpec("vit_tiny_patch16_224", 32))
    images = _normalized(mae, _blobs(3, 32))
    out = mae(images, 0.5, torch.Generator().manual_seed(1))
    errors = ((out.pred - patchify(images, 16)) ** 2).mean(dim=-1)
    assert torch.allclose(out.loss, errors[out.mask].mean())


def test_mae_prediction_ignores_masked_pixels() -> None:
    mae = MAE(EncoderSpec("vit_tiny_patch16_224", 32))
    images = _normalized(mae, _blobs(2, 32))
    mask = torch.tensor([[True, False, True, True], [False, True, True, True]])
    changed = images.clone()
    changed[0, :, :16, :16] += 3.0  # patch 0 of image 0: masked
    with torch.no_grad():
        same = mae(images, mask=mask).pred, mae(changed, mask=mask).pred
        changed[1, :, :16, :16] += 3.0  # patch 0 of image 1: visible
        other = mae(changed, mask=mask).pred
    assert torch.allclose(same[0], same[1], atol=1e-6)
    assert not torch.allclose(same[0][1], other[1], atol=1e-3)


def test_train_mae_loss_decreases() -> None:
    mae = MAE(SPEC)
    losses = train_mae(mae, _blobs(16), steps=30, batch_size=8, lr=2e-3, warmup_steps=3)
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3])
    assert not mae.training


@pytest.mark.parametrize("held, batch", [(1, 4), (3, 4), (10, 4), (8, 8)])
def test_every_step_is_a_full_batch_and_every_image_is_used_alike(held, batch) -> None:
    images = np.arange(held, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    batches = list(itertools.islice(_batches(images, batch, seed=0), held))  # held*batch images
    assert all(len(b) == batch for b in batches)  # a small center repeats, never trains on less
    seen = np.bincount(np.concatenate([b[:, 0, 0, 0] for b in batches]), minlength=held)
    assert (seen == batch).all()  # permutations back to back: each image `batch` times


def test_train_mae_is_deterministic_for_a_seed() -> None:
    runs = []
    for seed in (5, 5, 6):
        mae = MAE(SPEC)
        runs.append(train_mae(mae, _blobs(8), steps=3, batch_size=4, seed=seed))
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_every_training_batch_is_cropped_and_flipped(monkeypatch) -> None:
    """MAE's augmentation is part of the recipe: without it an MAE memorizes a small selection."""
    import feddel.common.models.mae as mae_module

    seen = []

    def spy(images, generator):
        seen.append(images.shape)
        return resized_crop_flip(images, generator)

    monkeypatch.setattr(mae_module, "resized_crop_flip", spy)
    train_mae(MAE(SPEC), _blobs(8), steps=3, batch_size=4)
    assert seen == [torch.Size([4, 3, 64, 64])] * 3


def test_train_mae_accepts_a_loader_of_batches() -> None:
    images = _blobs(4)
    loader = torch.utils.data.DataLoader(torch.from_numpy(images), batch_size=2)
    losses = train_mae(MAE(SPEC), loader, steps=3)  # 2 batches per pass: re-iterated
    assert len(losses) == 3
    with pytest.raises(DataError, match="expected non-empty uint8"):
        train_mae(MAE(SPEC), images.astype(np.float32), steps=1)


def test_checkpoint_round_trip_keeps_encoder_and_decoder(trained: MAE, tmp_path: Path) -> None:
    path = save_mae_checkpoint(trained, tmp_path / "mae.pt", extra={"round": 2, "loss": [0.5]})
    loaded = load_mae_checkpoint(path)
    images = _blobs(4, seed=9)
    assert np.array_equal(embed_batch(loaded.encoder, images), embed_batch(trained.encoder, images))
    loaded_weights = loaded.state_dict()
    assert all(torch.equal(w, loaded_weights[k]) for k, w in trained.state_dict().items())
    assert loaded.spec.weights == str(path)
    assert encoder_fingerprint(loaded.spec) == encoder_fingerprint(
        EncoderSpec(SPEC.model, SPEC.image_size, weights=str(path))
    )
    assert torch.load(path, weights_only=True)["extra"] == {"round": 2, "loss": [0.5]}


def test_build_encoder_reads_the_encoder_of_a_checkpoint(trained: MAE, tmp_path: Path) -> None:
    path = save_mae_checkpoint(trained, tmp_path / "mae.pth")
    encoder = build_encoder(EncoderSpec(SPEC.model, 64, str(path)))
    images = _blobs(3, seed=2)
    assert np.array_equal(embed_batch(encoder, images), embed_batch(trained.encoder, images))
    with pytest.raises(DataError, match=r"mae\.pth: checkpoint holds a vit_tiny_patch16_224"):
        build_encoder(EncoderSpec("vit_small_patch16_224", 64, str(path)))


def test_load_mae_checkpoint_rejects_other_files(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(DataError, match=r"other\.pt: not a FedDEL MAE checkpoint"):
        load_mae_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="JSON-like"):
        save_mae_checkpoint(
            MAE(EncoderSpec("vit_tiny_patch16_224", 32)), tmp_path / "x.pt", extra={"bad": object()}
        )
