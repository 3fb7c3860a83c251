"""OptiDEL-style hard-sample synthesis at one center: score patches, stitch 2x2 mosaics.

OptiDEL (docs/science.md 2) keeps the N hardest lesion patches and stitches every 4 into a 2x2
mosaic at the original resolution: new training images that are harder and more diverse than
any one source. Here a `PatchProposer` (common/synthesis/patches.py) proposes boxes on each source
sample,
each box is scored by MAE PVI (low = hard), the 4 * n_mosaics hardest are kept (at most
`max_per_source` per sample) and stitched hardest first, four to a mosaic.

Everything stays at the center: mosaics are PNGs under <state>/runs/<run>/mosaics/, never under
the data folder, with one manifest row per mosaic cell naming its source sample (id and path
relative to the data folder) and box. Only the counts of `MosaicSummary` may be reported.

Patch PVI (common/curation/vinfo.py (mae_pvi)): the crop is resized to the MAE input; mse_x = the
MAE's error
averaged over all patches (every patch hidden equally often, common/synthesis/patches.py
(patch_error_maps));
mse_null = the error of the context-free prediction on the same patches, which for a crop is
the global mean image's crop of the same box, resized alike. sigma2 = 1 is the unit variance of
the encoder-normalized pixel space; the ranking does not depend on it.
"""

from __future__ import annotations

import io
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from feddel.common.curation.vinfo import mae_pvi
from feddel.common.data.decode import decode_file, resize_square
from feddel.common.data.scan import Sample, UnreadableImage, load_mask
from feddel.common.errors import ConfigError, DataError
from feddel.common.io import atomic_write_bytes, read_csv, write_csv
from feddel.common.models.embed import module_device
from feddel.common.models.mae import MAE
from feddel.common.synthesis.patches import Box, PatchProposer, patch_error_maps

log = logging.getLogger(__name__)

MOSAIC_DIR = "mosaics"
MOSAIC_MANIFEST = "mosaics.csv"
MOSAIC_COLUMNS = (
    "mosaic", "cell", "center", "sample_id", "file", "top", "left", "bottom", "right", "pvi"
)  # fmt: skip
CELLS = 4  # a 2x2 mosaic: top-left, top-right, bottom-left, bottom-right
_BILINEAR = Image.Resampling.BILINEAR


@dataclass(frozen=True)
class ScoredPatch:
    source: int  # index into the sources
    box: Box  # in the source image's own pixels
    pvi: float  # MAE PVI in bits, low = hard


class Proposals(NamedTuple):
    patches: list[ScoredPatch]  # in source order
    unreadable: int  # sources that could not be decoded (skipped, logged)


@dataclass(frozen=True)
class MosaicSummary:
    """What a center may report about its synthesis: counts only."""

    mosaics: int
    patches_proposed: int
    patches_used: int
    sources_scanned: int
    sources_used: int
    unreadable: int
    directory: Path


def mosaic_dir(state_dir: str | Path, run: str) -> Path:
    """Where a run's mosaics and their manifest live: <state>/runs/<run>/mosaics."""
    return Path(state_dir) / "runs" / run / MOSAIC_DIR


def patch_pvi(
    mae: MAE, crops: np.ndarray, nulls: np.ndarray, sigma2: float = 1.0, seed: int = 0
) -> np.ndarray:
    """MAE PVI (m,) bits of crops (m, s, s, 3) uint8 against null predictions (m, s, s, 3)
    float pixels (0..255); see the module docstring."""
    if nulls.shape != crops.shape:
        raise DataError(f"null predictions of shape {nulls.shape} must match crops {crops.shape}")
    errors = patch_error_maps(mae, crops, seed=seed)
    mse_x = errors.reshape(len(crops), -1).mean(axis=1)
    device = module_device(mae)
    with torch.inference_mode():
        diff = mae.normalize(torch.as_tensor(crops).to(device)) - mae.normalize(
            torch.as_tensor(nulls, dtype=torch.float32).to(device)
        )
        mse_null = diff.pow(2).mean(dim=(1, 2, 3)).double().cpu().numpy()
    return mae_pvi(mse_x, mse_null, sigma2)


def score_proposals(
    root: str | Path,
    sources: Sequence[Sample],
    proposer: PatchProposer,
    mae: MAE,
    mean_image: np.ndarray,
    *,
    sigma2: float = 1.0,
    seed: int = 0,
) -> Proposals:
    """Propose boxes on every source and score each by MAE PVI.

    mean_image: (s, s, 3) float pixels, the global mean image (federated sum / count).
    """
    size = mae.spec.image_size
    mean = np.asarray(mean_image, dtype=np.float64)
    if mean.shape != (size, size, 3) or not np.isfinite(mean).all():
        raise DataError(f"mean image of shape {mean.shape}: expected finite ({size}, {size}, 3)")
    scored: list[ScoredPatch] = []
    unreadable = 0
    for index, sample in enumerate(sources):
        try:
            image, mask = _load_source(Path(root), sample)
        except UnreadableImage as exc:
            log.warning("skipped mosaic source: %s", exc)
            unreadable += 1
            continue
        height, width = image.shape[:2]
        boxes = [b for b in (box.clipped(height, width) for box in proposer(image, mask)) if b]
        if not boxes:
            continue
        crops = np.stack([resize_square(b.crop(image), size, _BILINEAR) for b in boxes])
        nulls = np.stack([_null_crop(mean, b, height, width) for b in boxes])
        pvi = patch_pvi(mae, crops, nulls, sigma2, seed)
        scored.extend(ScoredPatch(index, b, float(p)) for b, p in zip(boxes, pvi, strict=True))
    return Proposals(scored, unreadable)


def pick_hardest(
    patches: Sequence[ScoredPatch], n_mosaics: int, max_per_source: int = 2
) -> list[ScoredPatch]:
    """The 4 * n_mosaics lowest-PVI patches, at most `max_per_source` from one source, hardest
    first, cut to a multiple of 4 (ties: by source, then box)."""
    for name, value in (("n_mosaics", n_mosaics), ("max_per_source", max_per_source)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name}={value!r} must be an integer >= 0")
    if max_per_source == 0 and n_mosaics > 0:
        raise ConfigError("max_per_source=0 leaves no patch to stitch; use 1 or more")
    order = sorted(
        patches,
        key=lambda p: (p.pvi, p.source, p.box.top, p.box.left, p.box.bottom, p.box.right),
    )
    taken: Counter[int] = Counter()
    chosen: list[ScoredPatch] = []
    for patch in order:
        if len(chosen) == CELLS * n_mosaics:
            break
        if taken[patch.source] < max_per_source:
            taken[patch.source] += 1
            chosen.append(patch)
    return chosen[: len(chosen) // CELLS * CELLS]


def stitch(cells: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Four uint8 crops -> (height, width, 3) uint8, each resized to its quadrant (bilinear):
    rows [0, height // 2) and [height // 2, height), columns likewise, row-major."""
    if len(cells) != CELLS:
        raise DataError(f"a mosaic needs {CELLS} cells; got {len(cells)}")
    if height < 2 or width < 2:
        raise DataError(f"mosaic size {height}x{width} must be at least 2x2")
    rows = (0, height // 2, height)
    cols = (0, width // 2, width)
    out = np.empty((height, width, 3), dtype=np.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, 2)
        h, w = rows[r + 1] - rows[r], cols[c + 1] - cols[c]
        resized = Image.fromarray(cell).resize((w, h), _BILINEAR)
        out[rows[r] : rows[r + 1], cols[c] : cols[c + 1]] = np.asarray(resized)
    return out


def synthesize_mosaics(
    root: str | Path,
    sources: Sequence[Sample],
    state_dir: str | Path,
    run: str,
    *,
    center: str,
    mae: MAE,
    mean_image: np.ndarray,
    proposer: PatchProposer,
    n_mosaics: int,
    max_per_source: int = 2,
    sigma2: float = 1.0,
    seed: int = 0,
) -> MosaicSummary:
    """Propose, score, keep the hardest and stitch: up to `n_mosaics` mosaics of one center.

    `sources`: samples of the center's data folder `root` (e.g. the round's selection). Each
    mosaic takes the resolution of its hardest cell's source. Writes mosaic-NNNNN.png and
    mosaics.csv (atomically, last) under `mosaic_dir(state_dir, run)`, and deletes mosaics of an
    earlier call that the new manifest does not list. Same inputs and seed => same files.
    """
    root = Path(root)
    out = mosaic_dir(state_dir, run)
    if out.resolve().is_relative_to(root.resolve()):
        raise DataError(
            f"mosaics would be written to {out}, inside the data folder {root}; "
            "use a state folder outside the data folder"
        )
    patches, unreadable = score_proposals(
        root, sources, proposer, mae, mean_image, sigma2=sigma2, seed=seed
    )
    chosen = pick_hardest(patches, n_mosaics, max_per_source)
    rows = []
    for m in range(len(chosen) // CELLS):
        group = chosen[m * CELLS : (m + 1) * CELLS]
        images = [_pixels(root, sources[p.source]) for p in group]
        cells = [p.box.crop(image) for p, image in zip(group, images, strict=True)]
        name = f"mosaic-{m:05d}.png"
        _write_png(out / name, stitch(cells, *images[0].shape[:2]))
        for cell, p in enumerate(group):
            sample, b = sources[p.source], p.box
            box = (b.top, b.left, b.bottom, b.right)
            rows.append((name, cell, center, sample.sample_id, sample.file, *box, round(p.pvi, 6)))
    write_csv(out / MOSAIC_MANIFEST, MOSAIC_COLUMNS, rows)
    keep = {row[0] for row in rows}
    for stale in out.glob("mosaic-*.png"):
        if stale.name not in keep:
            stale.unlink()
    summary = MosaicSummary(
        mosaics=len(keep),
        patches_proposed=len(patches),
        patches_used=len(chosen),
        sources_scanned=len(sources),
        sources_used=len({p.source for p in chosen}),
        unreadable=unreadable,
        directory=out,
    )
    log.info("%s: %d mosaics from %d sources", center, summary.mosaics, summary.sources_used)
    return summary


def list_mosaics(state_dir: str | Path, run: str) -> list[Path]:
    """The mosaic PNGs of a run at this center, in manifest order (for pre-training)."""
    manifest = mosaic_dir(state_dir, run) / MOSAIC_MANIFEST
    if not manifest.is_file():
        raise DataError(
            f"run '{run}' has no mosaics at this center ({manifest} missing); "
            "synthesize them after the selection phase"
        )
    names = dict.fromkeys(row["mosaic"] for row in read_csv(manifest))
    return [manifest.parent / name for name in names]


def _load_source(root: Path, sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
    """The sample's pixels (H, W, 3) uint8 at full resolution and its mask (H, W) bool or None.

    load_mask only resizes to squares, so the mask is read at max(H, W) and then
    nearest-resized to (H, W).
    """
    image = _pixels(root, sample)
    if sample.mask is None:
        return image, None
    height, width = image.shape[:2]
    square = load_mask(root / sample.mask, max(height, width)).astype(np.uint8)
    resized = Image.fromarray(square).resize((width, height), Image.Resampling.NEAREST)
    return image, np.asarray(resized) > 0


def _pixels(root: Path, sample: Sample) -> np.ndarray:
    """The sample's pixels (H, W, 3) uint8 at full resolution (its frame of a multi-frame file)."""
    return decode_file(root / sample.file, frame=sample.frame).pixels


def _null_crop(mean: np.ndarray, box: Box, height: int, width: int) -> np.ndarray:
    """The mean image (s, s, 3) cropped at `box` (given in an H x W image), resized to (s, s)."""
    size = mean.shape[0]
    top = min(math.floor(box.top * size / height), size - 1)
    left = min(math.floor(box.left * size / width), size - 1)
    bottom = max(math.ceil(box.bottom * size / height), top + 1)
    right = max(math.ceil(box.right * size / width), left + 1)
    crop = torch.as_tensor(mean[top:bottom, left:right]).permute(2, 0, 1)[None]
    resized = torch.nn.functional.interpolate(
        crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0].permute(1, 2, 0).numpy()


def _write_png(path: Path, image: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
