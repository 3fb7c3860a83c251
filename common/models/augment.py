"""MAE's training augmentation: a random resized crop and a horizontal flip, on a whole batch.

MAE (He et al. 2022) pre-trains with RandomResizedCrop(scale 0.2-1) and a flip and nothing
else. It matters most on small pre-training sets: MedDEL trains 4,000 epochs on a 5% selection,
and without augmentation an MAE memorizes a few hundred images instead of learning what they
share. One affine grid per image, sampled in a single `grid_sample` call, so it costs less than
a forward pass on a CPU as well as on a GPU.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional


def resized_crop_flip(
    images: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """(b,c,h,w) float images -> same shape: each a random crop (area fraction in `scale`,
    aspect in `ratio`) resized back to full size, flipped left-right with probability 1/2."""
    b = images.shape[0]
    area = torch.empty(b).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    width = torch.sqrt(area * aspect).clamp(max=1.0)  # fractions of the image side
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    # crop centre in grid_sample's [-1, 1] coordinates, so that the crop stays inside
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - width)
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - height)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = height, cy
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
    return functional.grid_sample(images, grid, mode="bilinear", align_corners=False)
