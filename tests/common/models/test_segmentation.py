"""The downstream head: mIoU arithmetic, and a head that learns what its tokens carry."""

import numpy as np
import pytest

from feddel.common.errors import ConfigError, DataError
from feddel.common.models.embed import EncoderSpec, build_encoder
from feddel.common.models.segmentation import (
    HeadConfig,
    binary_miou,
    evaluate_segmentation,
    feature_blocks,
)


def test_binary_miou_hand_computed():
    truth = np.zeros((1, 4, 4), bool)
    truth[0, :2, :2] = True  # 4 lesion pixels
    pred = np.zeros((1, 4, 4), bool)
    pred[0, :2, :3] = True  # 6 predicted: 4 right, 2 wrong
    score = binary_miou(pred, truth)
    assert score.iou_lesion == pytest.approx(4 / 6)
    assert score.iou_background == pytest.approx(10 / 12)
    assert score.miou == pytest.approx((4 / 6 + 10 / 12) / 2)


def test_binary_miou_empty_class_counts_as_perfect():
    empty = np.zeros((2, 3, 3), bool)
    assert binary_miou(empty, empty).miou == 1.0


def test_feature_blocks_spread_over_depth():
    assert feature_blocks(build_encoder(EncoderSpec(image_size=32))) == [2, 3, 4, 5]  # 6 blocks
    twelve = EncoderSpec("vit_tiny_patch16_224", image_size=32)
    assert feature_blocks(build_encoder(twelve)) == [2, 5, 8, 11]


def _squares(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey images with one bright 16x16 square on the 16-px patch grid: the lesion."""
    rng = np.random.default_rng(seed)
    images = np.full((n, 32, 32, 3), 60, np.uint8)
    masks = np.zeros((n, 32, 32), bool)
    for i in range(n):
        r, c = rng.integers(0, 2, size=2) * 16
        images[i, r : r + 16, c : c + 16] = 220
        masks[i, r : r + 16, c : c + 16] = True
    return images, masks


def test_frozen_head_segments_a_separable_lesion():
    encoder = build_encoder(EncoderSpec(image_size=32))
    train = _squares(48, 0)
    test = _squares(16, 1)
    score = evaluate_segmentation(encoder, *train, *test, HeadConfig(steps=150, seed=0))
    assert score.miou > 0.9
    assert score.n_test == 16


def test_repeated_heads_average_the_single_heads_of_consecutive_seeds():
    encoder = build_encoder(EncoderSpec(image_size=32))
    splits = (*_squares(24, 0), *_squares(16, 1))
    singles = [
        evaluate_segmentation(encoder, *splits, HeadConfig(steps=4, seed=seed)).miou
        for seed in (5, 6, 7)
    ]
    assert max(singles) - min(singles) > 1e-3  # 4 steps: the heads really differ
    averaged = evaluate_segmentation(encoder, *splits, HeadConfig(steps=4, seed=5, repeats=3))
    assert averaged.miou == pytest.approx(np.mean(singles), abs=1e-6)
    assert averaged.n_test == 16


def test_head_repeats_must_be_positive():
    with pytest.raises(ConfigError, match="repeats=0"):
        HeadConfig(repeats=0)


def test_finetune_leaves_the_callers_encoder_unchanged():
    encoder = build_encoder(EncoderSpec(image_size=32))
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    evaluate_segmentation(
        encoder, *_squares(8, 0), *_squares(4, 1), HeadConfig(steps=3, finetune=True, repeats=2)
    )
    assert all((before[k] == v).all() for k, v in encoder.state_dict().items())


def test_empty_split_is_a_data_error():
    encoder = build_encoder(EncoderSpec(image_size=32))
    empty = (np.zeros((0, 32, 32, 3), np.uint8), np.zeros((0, 32, 32), bool))
    with pytest.raises(DataError, match="train split has no labeled images"):
        evaluate_segmentation(encoder, *empty, *_squares(2, 0))
