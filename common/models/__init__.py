"""Neural networks (torch, timm): encoders and their embedding cache, MAE, segmentation head."""
