"""FedDEL's default encoder, registered with timm so every `timm.create_model` call knows it.

`vit_feddel_patch8_64`: ViT-Tiny width (192 dims, 3 heads), 6 blocks, 8-px patches, sized for
64-px images on CPUs. Why not timm's `vit_tiny_patch16_224` at 64 px: 16-px patches leave only
16 tokens per image, and MAE (75% masked) then shows the encoder 4 of them. Reconstructing a
masked quarter of the image from 4 far-apart patches rewards global colour and lighting and
lets each token forget its own patch, so the pre-trained tokens segmented worse than random
ones (lesion IoU 0.07 vs 0.45 on the demo federation). With 8-px patches (64 tokens, 16
visible) neighbouring patches are informative and MAE pre-training helps; 6 blocks keep a
training step near the 16-px, 12-block model's cost (docs/experiments.md, "Choice of encoder").
"""

from __future__ import annotations

from typing import Any

from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer, _create_vision_transformer

from feddel.common.config import DEFAULT_MODEL

# timm's register_model reads this module's `default_cfgs` for the model's pretrained config (no
# weights to download: it only names the input normalization, timm's ViT default).
default_cfgs = {
    DEFAULT_MODEL: {
        "url": "",
        "num_classes": 0,
        "input_size": (3, 64, 64),
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    }
}


@register_model  # registered under the function's name, which must equal DEFAULT_MODEL
def vit_feddel_patch8_64(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-Tiny width, 6 blocks, 8-px patches, 64-px images by default."""
    args = {"img_size": 64, "patch_size": 8, "embed_dim": 192, "depth": 6, "num_heads": 3}
    return _create_vision_transformer(DEFAULT_MODEL, pretrained=pretrained, **{**args, **kwargs})
