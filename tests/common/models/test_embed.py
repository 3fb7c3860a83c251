"""Encoder specs, fingerprints, weight loading and batched embedding (tiny ViTs, CPU)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from feddel.common.data.scan import load_image
from feddel.common.errors import ConfigError, DataError
from feddel.common.models.embed import (
    EncoderSpec,
    autocast_dtype,
    build_encoder,
    decode_chunk,
    default_num_workers,
    embed_batch,
    embed_files,
    encoder_fingerprint,
    iter_embed_files,
    pick_device,
)

TINY = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def encoder() -> torch.nn.Module:
    return build_encoder(EncoderSpec(TINY, 32, seed=3))


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_encoder_spec_unknown_model_lists_close_matches() -> None:
    with pytest.raises(ConfigError, match="vit_tiny_patch16_224"):
        EncoderSpec("vit_tiny_patch16_22")


def test_encoder_spec_image_size_must_be_multiple_of_patch() -> None:
    with pytest.raises(ConfigError, match="multiple of the patch size 16"):
        EncoderSpec(TINY, 60)
    assert EncoderSpec("vit_small_patch8_224", 40).patch_size == 8


def test_encoder_spec_rejects_hybrid_vit_and_missing_or_odd_weights(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a plain ViT"):
        EncoderSpec("vit_small_resnet26d_224", 64)
    with pytest.raises(ConfigError, match="does not exist"):
        EncoderSpec(weights=str(tmp_path / "missing.pth"))
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="unsupported file type"):
        EncoderSpec(weights=str(tmp_path / "w.ckpt"))
    assert EncoderSpec(weights="").weights is None


def test_encoder_spec_dict_round_trip_rejects_unknown_keys() -> None:
    spec = EncoderSpec(TINY, 32, seed=5)
    assert EncoderSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError, match="imagesize"):
        EncoderSpec.from_dict({"imagesize": 32})


def test_encoder_fingerprint_matches_its_definition(tmp_path: Path) -> None:
    spec = EncoderSpec(TINY, 32, seed=7)
    blob = json.dumps(
        {"image_size": 32, "model": TINY, "weights": "random-init:7"}, sort_keys=True
    ).encode()
    assert encoder_fingerprint(spec) == hashlib.sha256(blob).hexdigest()[:16]
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"abc")
    blob = json.dumps(
        {
            "image_size": 32,
            "model": TINY,
            "weights": f"sha256:{hashlib.sha256(b'abc').hexdigest()}",
        },
        sort_keys=True,
    ).encode()
    assert (
        encoder_fingerprint(EncoderSpec(TINY, 32, str(weights), seed=1))
        == (hashlib.sha256(blob).hexdigest()[:16])
    )


def test_encoder_fingerprint_follows_bytes_not_path(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    fp = encoder_fingerprint(EncoderSpec(TINY, 32, str(a)))
    assert fp == encoder_fingerprint(EncoderSpec(TINY, 32, str(b), seed=9))
    b.write_bytes(b"other")
    assert fp != encoder_fingerprint(EncoderSpec(TINY, 32, str(b)))
    fingerprints = {
        encoder_fingerprint(EncoderSpec(TINY, s, seed=d)) for s in (32, 64) for d in (0, 1)
    }
    assert len(fingerprints) == 4


def test_build_encoder_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    one, two = (
        build_encoder(EncoderSpec(TINY, 32, seed=1)),
        build_encoder(EncoderSpec(TINY, 32, seed=1)),
    )
    other = build_encoder(EncoderSpec(TINY, 32, seed=2))
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(one.parameters(), two.parameters(), strict=True))
    assert not torch.equal(one.blocks[0].attn.qkv.weight, other.blocks[0].attn.qkv.weight)
    assert not one.training and one.num_features == 192


def test_build_encoder_from_safetensors_embeds_identically(
    encoder: torch.nn.Module, tmp_path: Path
) -> None:
    path = tmp_path / "enc.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in encoder.state_dict().items()}, str(path))
    loaded = build_encoder(EncoderSpec(TINY, 32, str(path), seed=99))
    images = _images(4, 32)
    expected = embed_batch(encoder, images, "fp32")
    assert np.array_equal(embed_batch(loaded, images, "fp32"), expected)


@pytest.mark.parametrize("wrapper", ["model", "state_dict", "encoder"])
def test_build_encoder_from_wrapped_pth_with_classifier_head(
    encoder: torch.nn.Module, tmp_path: Path, wrapper: str
) -> None:
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state["head.weight"] = torch.zeros(10, 192)  # a classifier's head is ignored
    torch.save({wrapper: state, "epoch": 3}, tmp_path / "enc.pth")
    loaded = build_encoder(EncoderSpec(TINY, 32, str(tmp_path / "enc.pth")))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in encoder.state_dict().items())


def test_build_encoder_resamples_pos_embed_to_a_new_grid(
    encoder: torch.nn.Module, tmp_path: Path
) -> None:
    torch.save(encoder.state_dict(), tmp_path / "enc.pt")
    bigger = build_encoder(EncoderSpec(TINY, 64, str(tmp_path / "enc.pt")))
    expected = resample_abs_pos_embed(encoder.pos_embed.detach(), [4, 4], num_prefix_tokens=1)
    assert bigger.pos_embed.shape == (1, 17, 192)
    assert torch.allclose(bigger.pos_embed, expected)
    assert torch.equal(bigger.pos_embed[:, 0], encoder.pos_embed[:, 0])  # class token untouched
    assert torch.equal(bigger.blocks[5].mlp.fc2.weight, encoder.blocks[5].mlp.fc2.weight)


def test_build_encoder_wrong_keys_raise_data_error_naming_file(
    encoder: torch.nn.Module, tmp_path: Path
) -> None:
    state = dict(encoder.state_dict())
    del state["norm.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(DataError, match=r"broken\.pt.*1 missing keys \['norm.weight'\].*extra"):
        build_encoder(EncoderSpec(TINY, 32, str(path)))
    small = build_encoder(EncoderSpec("vit_small_patch16_224", 32))
    save_file(small.state_dict(), str(tmp_path / "small.safetensors"))
    with pytest.raises(DataError, match=r"small\.safetensors.*wrong shapes.*set model"):
        build_encoder(EncoderSpec(TINY, 32, str(tmp_path / "small.safetensors")))


def test_build_encoder_unreadable_weights_raise_data_error(tmp_path: Path) -> None:
    for name in ("junk.pth", "junk.safetensors"):
        (tmp_path / name).write_bytes(b"not a checkpoint")
        with pytest.raises(DataError, match=name.replace(".", r"\.")):
            build_encoder(EncoderSpec(TINY, 32, str(tmp_path / name)))


def test_pick_device_prefers_cuda_and_rejects_absent_cuda() -> None:
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="not a torch device"):
        pick_device("tpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            pick_device("cuda")


def test_autocast_dtype_overrides_and_validates() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16
    assert autocast_dtype(cpu, "auto") in (None, torch.bfloat16)
    with pytest.raises(ConfigError, match="precision='fp8'"):
        autocast_dtype(cpu, "fp8")


def test_embed_batch_matches_a_manual_forward(encoder: torch.nn.Module) -> None:
    images = _images(3, 32)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5  # vit_tiny: 0.5
    with torch.no_grad():
        expected = torch.nn.functional.normalize(encoder(x), dim=-1).numpy()
    out = embed_batch(encoder, images, "fp32")
    assert out.dtype == np.float32 and out.shape == (3, 192)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    bf16 = embed_batch(encoder, images, "bf16")
    assert np.all(np.sum(bf16 * out, axis=1) > 0.999)


def test_embed_batch_rejects_wrong_size(encoder: torch.nn.Module) -> None:
    with pytest.raises(DataError, match=r"expected uint8 \(b, 32, 32, 3\)"):
        embed_batch(encoder, _images(2, 64))


@pytest.mark.parametrize("workers", [0, 1])
def test_embed_files_reports_unreadable_files(
    encoder: torch.nn.Module, tmp_path: Path, workers: int
) -> None:
    images = _images(5, 48, seed=1)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    paths.insert(2, tmp_path / "corrupt.png")
    paths[2].write_bytes(b"\x89PNG broken")
    seen: list[tuple[int, int]] = []
    result = embed_files(
        encoder,
        paths,
        32,
        batch_size=4,
        num_workers=workers,
        progress=lambda d, t: seen.append((d, t)),
        precision="fp32",
    )
    assert [f.index for f in result.failed] == [2] and "corrupt.png" in result.failed[0].reason
    assert np.isnan(result.embeddings[2]).all()
    decoded = np.stack([load_image(p, 32) for i, p in enumerate(paths) if i != 2])
    expected = embed_batch(encoder, decoded, "fp32")  # one batch of 5, not batches of 4
    # so float32 rows may differ by BLAS blocking (~1e-6); a wrong row differs by ~0.1
    np.testing.assert_allclose(np.delete(result.embeddings, 2, axis=0), expected, atol=1e-5)
    assert seen == [(4, 6), (6, 6)]


@pytest.mark.parametrize("workers", [0, 2])
def test_iter_embed_files_joins_decoded_chunks_into_whole_batches(
    encoder: torch.nn.Module, tmp_path: Path, workers: int
) -> None:
    """Workers hand over chunks of 6 (the largest divisor of 12 up to 8); every batch is still
    files [12k, 12k + 12) minus the unreadable one, embedded as one forward would."""
    assert (decode_chunk(12), decode_chunk(64), decode_chunk(7), decode_chunk(1)) == (6, 8, 7, 1)
    paths = []
    for i, image in enumerate(_images(29, 40, seed=2)):
        paths.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(image).save(paths[-1])
    paths[15].write_bytes(b"not an image")
    batches = list(iter_embed_files(encoder, paths, 32, 12, workers, precision="fp32"))
    assert [b.indices.tolist() for b in batches] == [
        list(range(12)),
        [12, 13, 14, *range(16, 24)],
        list(range(24, 29)),
    ]
    assert [[f.index for f in b.failed] for b in batches] == [[], [15], []]
    for batch in batches:
        decoded = np.stack([load_image(paths[i], 32) for i in batch.indices])
        expected = embed_batch(encoder, decoded, "fp32")
        np.testing.assert_allclose(batch.embeddings, expected, atol=1e-6)


def test_default_num_workers_none_for_a_single_batch() -> None:
    cpu = torch.device("cpu")
    assert default_num_workers(64, 64, cpu) == 0
    assert 0 <= default_num_workers(10_000, 64, cpu) <= 2


def test_default_model_is_registered_with_its_normalization():
    """timm reads common/models/registry.py's `default_cfgs`: without it the model falls back
    to another normalization and every embedding (and k-means on them) changes."""
    import timm

    import feddel.common.models.registry  # noqa: F401  (registers the model)
    from feddel.common.config import DEFAULT_MODEL

    cfg = timm.create_model(DEFAULT_MODEL, pretrained=False).pretrained_cfg
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["input_size"] == (3, 64, 64)
