"""A center's local pool: its readable images, their quality flags and embeddings.

`prepare_center` is phase 0 of a round (inventory): scan and hash the folder, decode every image
once for the quality features, embed through the resumable cache. Everything it returns stays at
the center; only the counts of `PoolCounts` are ever reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from feddel.common.curation.quality import QualityConfig, detect_disruptive, features_batch
from feddel.common.data.scan import Inventory, Sample, UnreadableImage, load_image, scan_center
from feddel.common.models.embed import EncoderSpec, encoder_fingerprint
from feddel.common.models.embedcache import embed_center

log = logging.getLogger(__name__)

FEATURE_BATCH = 64  # images per vectorized quality-feature call (64 px: 0.8 MB of pixels)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PoolCounts:
    """Center-level totals: the part of the inventory that may be reported."""

    files: int
    samples: int  # unique readable samples with an embedding
    unreadable: int  # failed to decode at scan or at embedding time
    duplicate_files: int  # extra byte-identical copies collapsed into one sample
    disruptive: int


@dataclass
class CenterPool:
    """What a center knows about its own images (never leaves the center)."""

    name: str
    root: Path
    samples: list[Sample]  # rows of `embeddings`, in scan order
    embeddings: np.ndarray  # (n, d) float32 unit rows (memory-mapped cache)
    disruptive: np.ndarray  # (n,) bool
    disruption: list[str]  # reason per sample, "" when clean
    fingerprint: str
    counts: PoolCounts
    image_sum: np.ndarray  # (size, size, 3) float64, for the federated mean image

    @property
    def sample_ids(self) -> list[str]:
        return [sample.sample_id for sample in self.samples]

    @property
    def files(self) -> list[str]:
        return [sample.file for sample in self.samples]

    @property
    def frames(self) -> list[int | None]:
        return [sample.frame for sample in self.samples]

    def series_codes(self) -> np.ndarray:
        """(n,) int64: equal codes for the samples of one series (scan.py says what one is)."""
        labels = [sample.series for sample in self.samples]
        return np.unique(np.array(labels, dtype=object), return_inverse=True)[1].astype(np.int64)

    @property
    def locators(self) -> list[str]:
        """`file` or `file#frame` per sample: how evaluation and reports name a sample."""
        return [sample.locator for sample in self.samples]


class DecodePass(NamedTuple):
    disruptive: np.ndarray  # (n,) bool
    reasons: list[str]  # "" when clean
    failed: list[int]  # indices of samples that did not decode
    image_sum: np.ndarray  # (size, size, 3) float64 sum of the decoded images


def quality_group(sample: Sample) -> str:
    """The group whose statistics a sample's quality is judged against: its modality (DICOM
    Modality, NIfTI, or the file format) under its top-level folder. Hospitals export by
    department or modality (ct/, us/, fundus/), and an MR series, an ultrasound cine and a
    fundus photograph differ more than a good frame and a bad one of the same kind do."""
    top = sample.file.split("/", 1)[0] if "/" in sample.file else "."
    return f"{sample.modality} in {top}"


def decode_pass(root: Path, samples: list[Sample], size: int, config: QualityConfig) -> DecodePass:
    """Decode each sample once: quality features (flagged against the statistics of the
    sample's `quality_group` and series at this center) and the running sum of images for the
    federated mean image. Features are computed FEATURE_BATCH images at a time: per image,
    the vectorized features cost a quarter of a one-image call (whose many small array
    operations also contend for the GIL when centers share a process)."""
    features, failed, batch = [], [], []
    image_sum = np.zeros((size, size, 3), dtype=np.float64)
    for index, sample in enumerate(samples):
        try:
            image = load_image(root / sample.file, size, frame=sample.frame)
        except UnreadableImage as exc:
            log.warning("%s", exc)
            failed.append(index)
            continue
        batch.append(image)
        image_sum += image
        if len(batch) == FEATURE_BATCH:
            features.append(features_batch(np.stack(batch)))
            batch = []
    if batch:
        features.append(features_batch(np.stack(batch)))
    bad = set(failed)
    keep = [i for i in range(len(samples)) if i not in bad]
    disruptive = np.zeros(len(samples), dtype=bool)
    reasons = [""] * len(samples)
    if keep:
        kept = [samples[i] for i in keep]
        groups = [quality_group(sample) for sample in kept]
        series = [sample.series or sample.sample_id for sample in kept]
        result = detect_disruptive(np.concatenate(features), config, groups, series)
        for row, index in enumerate(keep):
            disruptive[index] = bool(result.disruptive[row])
            reasons[index] = result.reason[row]
    return DecodePass(disruptive, reasons, failed, image_sum)


def prepare_center(
    root: str | Path,
    state_dir: str | Path,
    spec: EncoderSpec,
    *,
    name: str | None = None,
    batch_size: int = 64,
    quality: QualityConfig | None = None,
    progress: Progress | None = None,
) -> CenterPool:
    """Phase 0 at one center: scan, quality-flag and embed (cached under `state_dir`)."""
    root = Path(root)
    inventory: Inventory = scan_center(root)
    decoded = decode_pass(root, inventory.samples, spec.image_size, quality or QualityConfig())
    cached = embed_center(
        inventory.samples, root, spec, Path(state_dir), batch_size=batch_size, progress=progress
    )
    undecodable = {inventory.samples[i].sample_id for i in decoded.failed}
    position = {sample_id: row for row, sample_id in enumerate(cached.ids)}
    rows = [
        i
        for i, sample in enumerate(inventory.samples)
        if sample.sample_id in position and sample.sample_id not in undecodable
    ]
    samples = [inventory.samples[i] for i in rows]
    embedding_rows = np.array([position[s.sample_id] for s in samples], dtype=np.int64)
    embeddings = cached.embeddings
    if len(embedding_rows) != len(cached.ids):
        embeddings = np.asarray(embeddings)[embedding_rows]
    lost = len(inventory.samples) - len(samples)
    return CenterPool(
        name=name or root.name,
        root=root,
        samples=samples,
        embeddings=embeddings,
        disruptive=decoded.disruptive[rows],
        disruption=[decoded.reasons[i] for i in rows],
        fingerprint=encoder_fingerprint(spec),
        counts=PoolCounts(
            files=inventory.n_files,
            samples=len(samples),
            unreadable=len(inventory.unreadable) + lost,
            duplicate_files=sum(len(files) - 1 for files in inventory.duplicates.values()),
            disruptive=int(decoded.disruptive[rows].sum()),
        ),
        image_sum=decoded.image_sum,
    )
