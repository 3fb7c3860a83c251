"""MAE's crop-and-flip augmentation: the identity at full scale, crops stay inside, seeded."""

from __future__ import annotations

import torch

from feddel.common.models.augment import resized_crop_flip


def _ramp(batch: int) -> torch.Tensor:
    """A batch of identical 3x8x8 images whose pixels are all different (0..63)."""
    return torch.arange(64.0).reshape(1, 1, 8, 8).repeat(batch, 3, 1, 1)


def test_full_scale_square_crop_is_the_image_or_its_mirror_each_half_the_time() -> None:
    x = _ramp(200)
    y = resized_crop_flip(x, torch.Generator().manual_seed(0), scale=(1, 1), ratio=(1, 1))
    same = (y - x).abs().amax(dim=(1, 2, 3)) < 1e-4
    mirrored = (y - x.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-4
    assert bool((same | mirrored).all())
    assert 60 < int(mirrored.sum()) < 140


def test_crops_are_zoomed_in_and_stay_inside_the_image() -> None:
    x = _ramp(64)
    y = resized_crop_flip(x, torch.Generator().manual_seed(1), scale=(0.2, 0.3))
    assert y.shape == x.shape
    # bilinear samples of points inside the image: no value outside the image's range ...
    assert float(y.min()) >= 0.0 and float(y.max()) <= 63.0
    # ... and a crop of at most 30% of the area spans a narrower range of values than the image
    spans = y.amax(dim=(1, 2, 3)) - y.amin(dim=(1, 2, 3))
    assert float(spans.max()) < 63.0 * 0.8


def test_seeded_generator_gives_the_same_batch() -> None:
    x = torch.rand(8, 3, 16, 16)
    a = resized_crop_flip(x, torch.Generator().manual_seed(5))
    b = resized_crop_flip(x, torch.Generator().manual_seed(5))
    c = resized_crop_flip(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
