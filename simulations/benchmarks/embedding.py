"""Benchmark 1, embedding throughput: FedDEL's file pipeline against the bare model forward.

The issue asks the full pipeline (`embed_files`: decode + resize in DataLoader workers,
normalize, forward) for >= 85% of the bare forward's images/s (`embed_batch` on the same images
pre-decoded into a uint8 tensor, on the device). A naive loop (decode one file, forward a batch
of one) shows what batching buys; the "ceiling" is the best ratio any overlap can reach when
decoding (timed alone, one core) and a CPU forward share the cores. Images are written here,
never downloaded, in three kinds of file (SOURCES): the demo's 64 px PNG frames, 720x576 JPEG
video frames, and 512 px PNGs, whose decoding costs more than a small encoder's forward. All
runs of one case are timed in turns, so load from other jobs on a shared machine hits each.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from feddel.common.config import DEFAULT_MODEL
from feddel.common.data.decode import load_image
from feddel.common.models import embed
from feddel.common.models.embed import EncoderSpec, embed_batch
from feddel.simulations.benchmarks.records import Record, Say, Target, ratio, record

TARGET = Target(">=", 0.85)  # pipeline img/s over bare forward img/s
PASS_SECONDS = 2.0  # images per measurement: about this long for one bare pass
GPU_MODEL = "vit_base_patch16_224"  # the GPU figure (anchor ~3,300 img/s bf16 on an A100)
SOURCES = {  # name: (width, height, format, what it stands for)
    "png64": (64, 64, "PNG", "64x64 RGB PNG, the demo federation's frames"),
    "jpeg720": (720, 576, "JPEG", "720x576 RGB JPEG (quality 90), an endoscopy video frame"),
    "png512": (512, 512, "PNG", "512x512 RGB PNG, a large lossless frame"),
}


class Case(NamedTuple):
    """One measurement: an encoder at an input size, fed files of one source kind."""

    model: str
    size: int
    source: str  # a key of SOURCES

    @property
    def tag(self) -> str:
        """Record-name suffix, e.g. vit_feddel8_64px_png64."""
        patch = EncoderSpec(self.model, image_size=self.size).patch_size
        return f"{self.model.split('_patch')[0]}{patch}_{self.size}px_{self.source}"


@dataclass(frozen=True)
class EmbedParams:
    cases: tuple[Case, ...] = (
        Case(DEFAULT_MODEL, 64, "png64"),  # FedDEL's encoder on the demo's frames
        Case(DEFAULT_MODEL, 64, "jpeg720"),
        Case(DEFAULT_MODEL, 64, "png512"),
        Case("vit_tiny_patch16_224", 64, "png512"),
        Case("vit_small_patch16_224", 64, "png512"),
        Case("vit_tiny_patch16_224", 224, "png512"),
        Case("vit_small_patch16_224", 224, "png512"),
    )
    max_images: int = 256  # per measurement; fewer when the bare forward is slow
    naive_images: int = 32  # the per-image loop is slow; a subset gives its rate
    batch_size: int = 64
    repeats: int = 3  # timed rounds after one warm-up; the fastest counts


QUICK = EmbedParams(
    cases=(Case("vit_tiny_patch16_224", 32, "jpeg720"),), max_images=16, naive_images=4,
    batch_size=8, repeats=1,
)  # fmt: skip


class SizeResult(NamedTuple):
    case: Case
    images: int
    workers: int  # DataLoader decoding workers that embed_files picks
    bare: float  # images/s
    pipeline: float
    naive: float
    decode: float  # images/s of load_image on one core
    ceiling: float  # best reachable pipeline/bare: decoding and forward share the cores
    precision: str


def write_images(folder: Path, count: int, source: str, seed: int = 0) -> list[Path]:
    """`count` files of one SOURCES kind: bicubic-upsampled random 8x8 colours plus grain."""
    width, height, kind, _ = SOURCES[source]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC))
        grain = rng.normal(0.0, 6.0, (height, width, 1))
        pixels = Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))
        paths.append(folder / f"image_{index:04d}.{kind.lower()}")
        options = {"quality": 90} if kind == "JPEG" else {"compress_level": 1}
        pixels.save(paths[-1], kind, **options)
    return paths


def best_rates(runs: Sequence[tuple[Callable[[], object], int]], repeats: int) -> list[float]:
    """Images/s of each (run, images per call): one untimed warm-up call each, then `repeats`
    rounds that time every run in turn; the fastest call of each run counts."""
    for run, _ in runs:
        run()
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        for index, (run, _) in enumerate(runs):
            start = time.perf_counter()
            run()
            best[index] = min(best[index], time.perf_counter() - start)
    return [count / seconds for (_, count), seconds in zip(runs, best, strict=True)]


def measure(case: Case, paths: list[Path], params: EmbedParams, device: torch.device) -> SizeResult:
    """Bare forward, full pipeline and naive loop of one encoder over the same files; the number
    of files is sized so one bare pass takes about PASS_SECONDS."""
    spec = EncoderSpec(case.model, image_size=case.size)
    encoder, size, batch = embed.build_encoder(spec).to(device), spec.image_size, params.batch_size
    probe = torch.from_numpy(np.stack([load_image(p, size) for p in paths[:batch]])).to(device)
    embed_batch(encoder, probe)  # warm-up
    start = time.perf_counter()
    embed_batch(encoder, probe)
    probe_rate = len(probe) / (time.perf_counter() - start)
    count = int(np.clip(probe_rate * PASS_SECONDS // batch * batch, batch, len(paths)))
    files = paths[:count]
    decoded = torch.from_numpy(np.stack([load_image(path, size) for path in files])).to(device)
    naive_paths = files[: params.naive_images]

    def bare() -> None:
        for lo in range(0, len(decoded), batch):
            embed_batch(encoder, decoded[lo : lo + batch])

    def naive() -> None:
        for path in naive_paths:  # copy: load_image's array is read-only, torch warns on those
            embed_batch(encoder, load_image(path, size)[None].copy())

    bare_rate, pipeline, naive_rate, decode = best_rates(
        [
            (bare, len(files)),
            (lambda: embed.embed_files(encoder, files, size, batch), len(files)),
            (naive, len(naive_paths)),
            (lambda: [load_image(path, size) for path in naive_paths], len(naive_paths)),
        ],
        params.repeats,
    )
    # per image, a CPU forward costs cores/bare core-seconds and decoding 1/decode; a GPU's none
    cores = len(os.sched_getaffinity(0))
    if device.type == "cpu":
        ceiling = 1 / (1 + bare_rate / (decode * cores))
    else:
        ceiling = min(1.0, decode * cores / bare_rate)
    dtype = embed.autocast_dtype(device)
    return SizeResult(
        case=case,
        images=len(files),
        workers=embed.default_num_workers(len(files), batch, device),
        bare=bare_rate,
        pipeline=pipeline,
        naive=naive_rate,
        decode=decode,
        ceiling=ceiling,
        precision=str(dtype).removeprefix("torch.") if dtype else "float32",
    )


def to_records(result: SizeResult, device: torch.device) -> list[Record]:
    """Three rates and three ratios per case; only pipeline / bare has a target."""
    r, tag = result, result.case.tag
    anchor = "anchor: ~3,300 img/s with bf16 on an A100" if r.case.model == GPU_MODEL else ""
    params = {
        "model": r.case.model, "image_size": r.case.size, "images": r.images,
        "workers": r.workers, "device": str(device), "precision": r.precision,
        "decode_img_s_per_core": r.decode, "source": SOURCES[r.case.source][3],
    }  # fmt: skip
    note = (
        f"decode-bound ceiling {r.ceiling:.2f}: decoding ({r.decode:.0f} img/s per core) and the "
        f"forward share {len(os.sched_getaffinity(0))} cores; the pipeline reaches "
        f"{r.pipeline / r.bare / r.ceiling:.0%} of that ceiling"
    )
    return [
        record(1, f"embed_bare_{tag}", r.bare, "img/s", note=anchor, params=params),
        record(1, f"embed_pipeline_{tag}", r.pipeline, "img/s", params=params),
        record(1, f"embed_naive_{tag}", r.naive, "img/s", params=params),
        ratio(1, f"embed_pipeline_over_bare_{tag}", r.pipeline, r.bare, TARGET, note=note,
              params=params),
        record(1, f"embed_ceiling_{tag}", r.ceiling, "ratio", params=params),
        ratio(1, f"embed_pipeline_over_naive_{tag}", r.pipeline, r.naive, params=params),
    ]  # fmt: skip


def run(params: EmbedParams, work: Path, say: Say) -> list[Record]:
    """Every case of `params`, plus ViT-B/16 at 224 px when a GPU is present."""
    device = embed.pick_device("auto")
    cases = list(params.cases)
    if device.type == "cuda":
        cases.append(Case(GPU_MODEL, 224, "png512"))
    paths = {}
    for source in dict.fromkeys(case.source for case in cases):
        say(f"writing {params.max_images} test images: {SOURCES[source][3]}")
        paths[source] = write_images(work / "embedding-images" / source, params.max_images, source)
    records: list[Record] = []
    for case in cases:
        say(f"embedding: {case.model} at {case.size} px from {case.source} files on {device}")
        records += to_records(measure(case, paths[case.source], params, device), device)
    return records
