"""Embedding throughput: FedDEL's file pipeline against the bare model forward, same batches.

Issue "Local curation engine" asks the full pipeline (`embed_files`: decode + resize in DataLoader
workers, normalize, forward) for >= 85% of the bare forward's images/s (`embed_batch` on the same
images pre-decoded into a uint8 tensor) on 2 cores. A naive loop (decode one file, forward a
batch of one) shows what batching buys; "bound" is the best ratio any overlap can reach when
decoding (timed alone, one core) and the forward share the cores. Images are written here, never
downloaded: textured 512x512 RGB PNGs. All runs are timed in turns, so load from other jobs on a
shared machine hits each of them.

    python -m simulations.benchmarks.embedding [--sizes 64,224] [--images 256] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from common import embed
from common.cliutil import EXIT_OK, ArgumentParser, console, exit_with
from common.decode import load_image
from common.embed import EncoderSpec, embed_batch
from common.io import write_json

TARGET_RATIO = 0.85  # pipeline img/s over bare forward img/s
SOURCE_PX = 512  # side of the written PNGs: decoding and resizing them is real work
NAIVE_IMAGES = 32  # the per-image loop is slow; a subset gives its rate
LARGE_SIZE = 160  # sizes from here on use --images-large (224 px on 2 CPU cores: ~45-75 img/s)


class SizeResult(NamedTuple):
    size: int
    images: int
    workers: int  # DataLoader decoding workers that embed_files picks
    bare: float  # images/s
    pipeline: float
    naive: float
    decode: float  # images/s of load_image on one core
    bound: float  # best reachable pipeline/bare: decoding and forward share the cores

    @property
    def ratio(self) -> float:
        return self.pipeline / self.bare


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` SOURCE_PX-square RGB PNGs: bicubic-upsampled random 8x8 colours plus grain."""
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((SOURCE_PX, SOURCE_PX), Image.Resampling.BICUBIC))
        grain = rng.normal(0.0, 6.0, (SOURCE_PX, SOURCE_PX, 1))
        paths.append(folder / f"image_{index:04d}.png")
        Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(
            paths[-1], compress_level=1
        )
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


def measure(
    spec: EncoderSpec, paths: list[Path], batch: int, repeats: int, device: torch.device
) -> SizeResult:
    """Bare forward, full pipeline and naive loop of one encoder over the same files."""
    encoder, size = embed.build_encoder(spec).to(device), spec.image_size
    decoded = torch.from_numpy(np.stack([load_image(path, size) for path in paths]))
    naive_paths = paths[:NAIVE_IMAGES]

    def bare() -> None:
        for start in range(0, len(decoded), batch):
            embed_batch(encoder, decoded[start : start + batch])

    def naive() -> None:
        for path in naive_paths:  # copy: load_image's array is read-only, torch warns on those
            embed_batch(encoder, load_image(path, size)[None].copy())

    bare_rate, pipeline, naive_rate, decode = best_rates(
        [
            (bare, len(paths)),
            (lambda: embed.embed_files(encoder, paths, size, batch), len(paths)),
            (naive, len(naive_paths)),
            (lambda: [load_image(path, size) for path in naive_paths], len(naive_paths)),
        ],
        repeats,
    )
    # per image, a CPU forward costs cores/bare core-seconds and decoding 1/decode; a GPU's none
    cores = len(os.sched_getaffinity(0))
    on_cpu = device.type == "cpu"
    bound = 1 / (1 + bare_rate / (decode * cores)) if on_cpu else min(1, decode * cores / bare_rate)
    workers = embed.default_num_workers(len(paths), batch, device)
    return SizeResult(size, len(paths), workers, bare_rate, pipeline, naive_rate, decode, bound)


def records(results: list[SizeResult]) -> list[dict[str, Any]]:
    """One {name, value, unit, target, met} per number; only the ratio has a target."""
    out = []
    for r in results:
        for kind in ("bare", "pipeline", "naive", "decode"):
            out.append(_record(f"embed_{kind}_{r.size}px", getattr(r, kind), "img/s", None))
        out.append(_record(f"embed_pipeline_ratio_{r.size}px", r.ratio, "ratio", TARGET_RATIO))
        out.append(_record(f"embed_pipeline_bound_{r.size}px", r.bound, "ratio", None))
    return out


def _record(name: str, value: float, unit: str, target: float | None) -> dict[str, Any]:
    met = None if target is None else bool(value >= target)
    return {"name": name, "value": round(value, 3), "unit": unit, "target": target, "met": met}


def table(results: list[SizeResult]) -> str:
    lines = [
        "| size | images | workers | bare img/s | pipeline img/s | pipeline/bare | bound "
        "| naive img/s | decode img/s/core | target | met |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.size} | {r.images} | {r.workers} | {r.bare:.1f} | {r.pipeline:.1f} "
            f"| {r.ratio:.2f} | {r.bound:.2f} | {r.naive:.1f} | {r.decode:.1f} | >= {TARGET_RATIO} "
            f"| {'yes' if r.ratio >= TARGET_RATIO else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    device = embed.pick_device(args.device)
    dtype = embed.autocast_dtype(device)
    load = [os.getloadavg()]
    specs = [EncoderSpec(args.model, image_size=size) for size in args.sizes]  # validates
    counts = [args.images if size < LARGE_SIZE else args.images_large for size in args.sizes]
    with tempfile.TemporaryDirectory(prefix="feddel-bench-") as folder:
        paths = write_images(Path(folder), max(counts))
        kib = sum(path.stat().st_size for path in paths) / len(paths) / 1024
        results = [
            measure(spec, paths[:n], args.batch_size, args.repeats, device)
            for spec, n in zip(specs, counts, strict=True)
        ]
    load.append(os.getloadavg())
    console.print(
        f"files: {SOURCE_PX}x{SOURCE_PX} RGB PNG (textured, {kib:.0f} KiB each)\n"
        f"model: {args.model} (random init), batch size {args.batch_size}, best of "
        f"{args.repeats} after 1 warm-up; naive loop on {NAIVE_IMAGES} images\n"
        f"torch {torch.__version__}, device {device}, precision "
        f"{str(dtype).removeprefix('torch.') if dtype else 'float32'} (auto), "
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads\n"
        "load average (1/5/15 min) before "
        + ", after ".join("/".join(f"{v:.2f}" for v in avg) for avg in load)
        + "\n\n"
        + table(results),
        markup=False,
    )
    if args.json:
        write_json(args.json, records(results))
    return EXIT_OK


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return int(text)


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m simulations.benchmarks.embedding", description=__doc__)
    add = parser.add_argument
    add("--model", default="vit_tiny_patch16_224", help="timm ViT name (random init)")
    add("--sizes", type=lambda t: [_positive(s) for s in t.split(",")], default=[64, 224])
    add("--images", type=_positive, default=256, help=f"images per size < {LARGE_SIZE} px")
    add("--images-large", type=_positive, default=128, help=f"images per size >= {LARGE_SIZE} px")
    add("--batch-size", type=_positive, default=64)
    add("--repeats", type=_positive, default=3, help="timed rounds; the best is kept")
    add("--device", default="auto", help="cpu, cuda or auto")
    add("--json", type=Path, help="also write the records here as JSON (atomically)")
    return parser


if __name__ == "__main__":
    exit_with(main)
