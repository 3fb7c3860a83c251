"""OptiDEL-style synthesis: patch proposals, patch PVI, the hardest patches, 2x2 mosaics."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from feddel.common.data.decode import decode_file, load_image
from feddel.common.data.scan import Sample, scan_center
from feddel.common.errors import ConfigError, DataError
from feddel.common.io import read_csv
from feddel.common.models.embed import EncoderSpec
from feddel.common.models.mae import MAE, train_mae
from feddel.common.synthesis.mosaic import (
    MOSAIC_COLUMNS,
    MOSAIC_MANIFEST,
    MosaicSummary,
    ScoredPatch,
    list_mosaics,
    mosaic_dir,
    patch_pvi,
    pick_hardest,
    stitch,
    synthesize_mosaics,
)
from feddel.common.synthesis.patches import (
    Box,
    ErrorMapProposer,
    FirstNonEmpty,
    MaskProposer,
    boxes_from_error_map,
    patch_error_maps,
)

SPEC = EncoderSpec("vit_tiny_patch16_224", 64, seed=1)
HEIGHT, WIDTH = 80, 96  # the center's original resolution (not square, not the MAE's)


@pytest.fixture(scope="module")
def mae() -> MAE:
    return MAE(SPEC)


@pytest.fixture(scope="module")
def center(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Sample]]:
    """Six images with a bright disc each; the first three have a mask of their disc."""
    root = tmp_path_factory.mktemp("center") / "center-a"
    (root / "masks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    for i in range(6):
        (cy, cx), r = rng.uniform(20, 60, 2), rng.uniform(6, 14)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        image = rng.integers(0, 90, (HEIGHT, WIDTH, 3)).astype(np.uint8)
        image[disc] = rng.integers(170, 256, 3)
        Image.fromarray(image).save(root / f"img-{i}.png")
        if i < 3:
            Image.fromarray(disc.astype(np.uint8) * 255).save(root / "masks" / f"img-{i}.png")
    return root, scan_center(root).samples


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _synthesize(
    center: tuple[Path, list[Sample]], mae: MAE, state: Path, n: int, seed: int = 0
) -> MosaicSummary:
    root, samples = center
    mean = np.mean([load_image(root / s.file, SPEC.image_size) for s in samples], axis=0)
    proposer = FirstNonEmpty(MaskProposer(), ErrorMapProposer(mae, seed=seed))
    return synthesize_mosaics(
        root, samples, state, "r1", center="center-a", mae=mae, mean_image=mean,
        proposer=proposer, n_mosaics=n, seed=seed,
    )  # fmt: skip


def test_box_from_sam_xywh_and_clipping() -> None:
    box = Box.from_xywh(10.4, 5.6, 20.0, 30.2, score=0.9)  # SAM: x, y, width, height
    assert box == Box(6, 10, 36, 30, 0.9) and (box.height, box.width) == (30, 20)
    assert box.clipped(20, 25) == Box(6, 10, 20, 25, 0.9)
    assert box.clipped(6, 100) is None  # entirely below a 6-row image
    image = np.arange(40 * 40 * 3, dtype=np.uint8).reshape(40, 40, 3)
    np.testing.assert_array_equal(box.crop(image), image[6:36, 10:30])


def test_boxes_from_error_map_cover_planted_regions() -> None:
    errors = np.random.default_rng(0).uniform(0, 0.1, (8, 8))
    errors[2:4, 4:7] = 1.0  # the planted lesion
    errors[6:8, 0] = 0.5  # a weaker one
    boxes = boxes_from_error_map(errors, (160, 96), quantile=0.9)
    # 8x8 grid -> 20 pixels per row cell, 12 per column cell
    assert boxes == [Box(40, 48, 80, 84, 1.0), Box(120, 0, 160, 12, 0.5)]
    assert boxes_from_error_map(errors, (160, 96), quantile=0.9, max_boxes=1) == boxes[:1]
    with pytest.raises(ConfigError, match=r"quantile=1\.0"):
        boxes_from_error_map(errors, (160, 96), quantile=1.0)


def test_error_map_proposer_finds_what_the_mae_cannot_reconstruct() -> None:
    """An MAE trained on flat images proposes the one noisy square of a flat image."""
    rng = np.random.default_rng(1)
    flat = np.repeat(rng.integers(60, 200, (16, 1, 1, 3)), 64, axis=1).repeat(64, axis=2)
    mae = MAE(SPEC)
    train_mae(mae, flat.astype(np.uint8), steps=10, batch_size=8, lr=2e-3, warmup_steps=2)
    image = np.full((128, 128, 3), 120, dtype=np.uint8)
    image[32:64, 64:96] = rng.integers(0, 256, (32, 32, 3))  # MAE patch (1, 2) at 64x64
    boxes = ErrorMapProposer(mae, quantile=0.95)(image)  # the top cell of 16
    assert [(b.top, b.left, b.bottom, b.right) for b in boxes] == [(32, 64, 64, 96)]


def test_patch_error_maps_average_the_maskings_that_hid_each_patch(mae: MAE) -> None:
    images = np.random.default_rng(2).integers(0, 256, (3, 64, 64, 3)).astype(np.uint8)
    maps = patch_error_maps(mae, images, seed=5, batch_size=2, precision="fp32")
    assert maps.shape == (3, 4, 4) and np.isfinite(maps).all()
    x = mae.normalize(torch.from_numpy(images))
    target = x.reshape(3, 3, 4, 16, 4, 16).permute(0, 2, 4, 3, 5, 1).reshape(3, 16, -1)
    total, hidden = np.zeros((3, 16)), np.zeros(16)
    for shown in np.array_split(np.random.default_rng([5, 0]).permutation(16), 4):
        mask = torch.ones(3, 16, dtype=torch.bool)
        mask[:, torch.as_tensor(shown)] = False
        with torch.no_grad():
            error = ((mae(x, mask=mask).pred - target) ** 2).mean(dim=-1).numpy()
        total += np.where(mask.numpy(), error, 0.0)
        hidden += mask[0].numpy()
    assert (hidden == 3).all()  # every patch hidden 3 times of 4
    np.testing.assert_allclose(maps.reshape(3, 16), total / 3, rtol=1e-4)
    again = patch_error_maps(mae, images[1:2], seed=5, precision="fp32")
    np.testing.assert_allclose(again[0], maps[1], rtol=1e-5)  # independent of batch
    with pytest.raises(ConfigError, match="groups=17 must be between 2 and 16"):
        patch_error_maps(mae, images, groups=17)


def test_mask_proposer_finds_the_components_of_a_mask() -> None:
    mask = np.zeros((40, 50), dtype=bool)
    mask[2:6, 3:9] = True  # 24 pixels
    mask[10:14, 20:25] = True  # 20 pixels, touching the next block at a corner:
    mask[14:17, 25:28] = True  # 9 more, one 8-connected component of 29
    mask[30, 40] = True  # 1 pixel < 0.1% of 2000: noise
    image = np.zeros((40, 50, 3), dtype=np.uint8)
    boxes = MaskProposer(min_fraction=0.001)(image, mask)
    assert boxes == [Box(10, 20, 17, 28, 29 / 2000), Box(2, 3, 6, 9, 24 / 2000)]
    assert MaskProposer()(image, None) == []
    fallback = FirstNonEmpty(MaskProposer(), lambda image, mask=None: [Box(0, 0, 5, 5, 1.0)])
    assert fallback(image, None) == [Box(0, 0, 5, 5, 1.0)] and fallback(image, mask) == boxes
    with pytest.raises(DataError, match=r"mask of shape \(40, 50\) does not match"):
        MaskProposer()(image[:20], mask)


def test_patch_pvi_is_minus_scaled_error_when_the_null_is_exact(mae: MAE) -> None:
    crops = np.random.default_rng(3).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    pvi = patch_pvi(mae, crops, crops.astype(np.float64), sigma2=0.5, seed=4)
    mse_x = patch_error_maps(mae, crops, seed=4).reshape(2, -1).mean(axis=1)
    np.testing.assert_allclose(pvi, -mse_x / (2 * 0.5 * math.log(2)), rtol=1e-6)
    gray = np.full(crops.shape, 128.0)
    mse_null = (((crops / 255 - 0.5) / 0.5 - (128 / 255 - 0.5) / 0.5) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(  # vit_tiny's mean and std are 0.5
        patch_pvi(mae, crops, gray, sigma2=0.5, seed=4),
        (mse_null - mse_x) / (2 * 0.5 * math.log(2)),
        rtol=1e-5,
    )


def test_pick_hardest_respects_the_per_source_cap_and_multiples_of_four() -> None:
    def patch(source: int, pvi: float, top: int = 0) -> ScoredPatch:
        return ScoredPatch(source, Box(top, 0, top + 4, 4), pvi)

    patches = [
        patch(0, -5.0), patch(0, -4.0, 1), patch(0, -3.0, 2), patch(1, -3.0),
        patch(2, -1.0), patch(3, 0.5), patch(4, 2.0),
    ]  # fmt: skip
    chosen = pick_hardest(patches, n_mosaics=1, max_per_source=2)
    assert [(p.source, p.pvi) for p in chosen] == [(0, -5.0), (0, -4.0), (1, -3.0), (2, -1.0)]
    assert len(pick_hardest(patches, n_mosaics=2, max_per_source=1)) == 4  # 5 sources -> 4
    assert pick_hardest(patches, n_mosaics=0) == []
    with pytest.raises(ConfigError, match="n_mosaics=-1"):
        pick_hardest(patches, n_mosaics=-1)


def test_stitch_puts_each_cell_in_its_quadrant() -> None:
    cells = [np.full((3, 2, 3), 50 * (i + 1), dtype=np.uint8) for i in range(4)]
    mosaic = stitch(cells, 5, 7)  # odd sizes: rows [0, 2) [2, 5), columns [0, 3) [3, 7)
    assert mosaic.shape == (5, 7, 3)
    assert (mosaic[:2, :3] == 50).all() and (mosaic[:2, 3:] == 100).all()
    assert (mosaic[2:, :3] == 150).all() and (mosaic[2:, 3:] == 200).all()


def test_synthesize_mosaics_provenance_resolution_and_locality(
    center: tuple[Path, list[Sample]], mae: MAE, tmp_path: Path
) -> None:
    root, samples = center
    before_data, state = _snapshot(root), tmp_path / "state"
    summary = _synthesize(center, mae, state, n=2)
    assert (summary.mosaics, summary.patches_used, summary.sources_scanned) == (2, 8, 6)
    assert summary.sources_used >= 4 and summary.patches_proposed >= 8
    assert _snapshot(root) == before_data  # nothing written into the data folder
    assert {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*") if p.is_file()} == {
        "state"
    }
    files = list_mosaics(state, "r1")
    assert [f.name for f in files] == ["mosaic-00000.png", "mosaic-00001.png"]
    assert all(f.parent == mosaic_dir(state, "r1") for f in files)
    rows = read_csv(mosaic_dir(state, "r1") / MOSAIC_MANIFEST)
    assert len(rows) == 8 and tuple(rows[0]) == MOSAIC_COLUMNS
    by_id = {s.sample_id: s for s in samples}
    for row in rows:
        source = root / row["file"]
        assert row["center"] == "center-a" and row["sample_id"] in by_id
        assert hashlib.sha256(source.read_bytes()).hexdigest()[:16] == row["sample_id"]
        if by_id[row["sample_id"]].mask is not None:  # masked sources: the disc's bounding box
            disc = np.argwhere(np.asarray(Image.open(root / by_id[row["sample_id"]].mask)) > 0)
            box = [int(row[c]) for c in ("top", "left", "bottom", "right")]
            assert box == [*disc.min(axis=0), *(disc.max(axis=0) + 1)]
    pvis = [float(row["pvi"]) for row in rows]
    assert pvis == sorted(pvis)  # hardest first
    first = rows[0]
    mosaic = np.asarray(Image.open(files[0]))
    assert mosaic.shape == (HEIGHT, WIDTH, 3)
    top, left, bottom, right = (int(first[c]) for c in ("top", "left", "bottom", "right"))
    crop = decode_file(root / first["file"]).pixels[top:bottom, left:right]
    expected = np.asarray(Image.fromarray(crop).resize((WIDTH // 2, HEIGHT // 2), Image.BILINEAR))
    np.testing.assert_array_equal(mosaic[: HEIGHT // 2, : WIDTH // 2], expected)


def test_synthesize_mosaics_is_deterministic_and_replaces_stale_mosaics(
    center: tuple[Path, list[Sample]], mae: MAE, tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _synthesize(center, mae, a, n=2, seed=3)
    _synthesize(center, mae, b, n=2, seed=3)
    assert _snapshot(mosaic_dir(a, "r1")) == _snapshot(mosaic_dir(b, "r1"))
    summary = _synthesize(center, mae, a, n=1, seed=3)
    assert summary.mosaics == 1 and [f.name for f in list_mosaics(a, "r1")] == ["mosaic-00000.png"]
    left = sorted(p.name for p in mosaic_dir(a, "r1").iterdir())
    assert left == ["mosaic-00000.png", MOSAIC_MANIFEST]


def test_synthesize_mosaics_refuses_to_write_into_the_data_folder(
    center: tuple[Path, list[Sample]], mae: MAE
) -> None:
    root, _ = center
    before = _snapshot(root)
    with pytest.raises(DataError, match="inside the data folder"):
        _synthesize(center, mae, root / "state", n=1)
    assert _snapshot(root) == before
    with pytest.raises(DataError, match="run 'r1' has no mosaics"):
        list_mosaics(root / "state", "r1")
