"""Embedding throughput: FedDEL's file pipeline against the bare model forward, same batches.

Issue "Local curation engine": the full pipeline (`embed_files`: decode + resize in DataLoader
workers, normalize, forward) should reach >= 85% of the bare forward's images/s on 2 cores. The
bare forward (`embed_batch`, normalization included) gets the same images already decoded and
resized into a uint8 tensor, so pipeline/bare is the share of decoding the workers hide. A naive
loop (decode one file, forward a batch of one) shows what batching and workers buy. The images
are written here, never downloaded: textured 512x512 RGB PNGs (smooth colour blobs + grain).

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

from common.cliutil import EXIT_OK, ArgumentParser, console, exit_with
from common.decode import load_image
from common.embed import (
    EncoderSpec,
    autocast_dtype,
    build_encoder,
    default_num_workers,
    embed_batch,
    embed_files,
    pick_device,
)
from common.io import write_json

TARGET_RATIO = 0.85  # pipeline img/s over bare forward img/s
SOURCE_PX = 512  # side of the written PNGs: decoding and resizing them is real work
NAIVE_IMAGES = 32  # the per-image loop is slow; a subset gives its rate
LARGE_SIZE = 160  # sizes from here on use --images-large (224 px on 2 CPU cores: ~45 img/s)


class SizeResult(NamedTuple):
    size: int
    images: int
    workers: int  # DataLoader decoding workers embed_files picked
    bare: float  # images/s
    pipeline: float
    naive: float

    @property
    def ratio(self) -> float:
        return self.pipeline / self.bare


def write_images(folder: Path, count: int, seed: int) -> list[Path]:
    """`count` SOURCE_PX-square RGB PNGs: bicubic-upsampled random 8x8 colours plus grain."""
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((SOURCE_PX, SOURCE_PX), Image.Resampling.BICUBIC))
        grain = rng.normal(0.0, 6.0, (SOURCE_PX, SOURCE_PX, 1))
        path = folder / f"image_{index:04d}.png"
        Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def best_rate(run: Callable[[], object], count: int, repeats: int) -> float:
    """Images/s of the fastest of `repeats` timed calls of `run` (`count` images each), after
    one untimed warm-up call."""
    run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return count / min(seconds)


def measure(
    model: str, size: int, paths: list[Path], batch_size: int, repeats: int, device: torch.device
) -> SizeResult:
    """Bare forward, full pipeline and naive loop of one encoder over the same files."""
    encoder = build_encoder(EncoderSpec(model, image_size=size)).to(device)
    decoded = torch.from_numpy(np.stack([load_image(path, size) for path in paths]))

    def bare() -> None:
        for start in range(0, len(decoded), batch_size):
            embed_batch(encoder, decoded[start : start + batch_size])

    def naive() -> None:
        for path in paths[:NAIVE_IMAGES]:
            embed_batch(encoder, load_image(path, size)[None])

    return SizeResult(
        size,
        len(paths),
        default_num_workers(len(paths), batch_size, device),
        best_rate(bare, len(paths), repeats),
        best_rate(lambda: embed_files(encoder, paths, size, batch_size), len(paths), repeats),
        best_rate(naive, min(NAIVE_IMAGES, len(paths)), repeats),
    )


def records(results: list[SizeResult]) -> list[dict[str, Any]]:
    """One {name, value, unit, target, met} per number; only the ratio has a target."""
    out: list[dict[str, Any]] = []
    for r in results:
        for kind, value in (("bare", r.bare), ("pipeline", r.pipeline), ("naive", r.naive)):
            out.append(_record(f"embed_{kind}_{r.size}px", value, "img/s", None))
        out.append(_record(f"embed_pipeline_ratio_{r.size}px", r.ratio, "ratio", TARGET_RATIO))
    return out


def _record(name: str, value: float, unit: str, target: float | None) -> dict[str, Any]:
    met = None if target is None else bool(value >= target)
    return {"name": name, "value": round(value, 3), "unit": unit, "target": target, "met": met}


def table(results: list[SizeResult]) -> str:
    lines = [
        "| size | images | workers | bare img/s | pipeline img/s | pipeline/bare | naive img/s "
        "| target | met |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        met = "yes" if r.ratio >= TARGET_RATIO else "no"
        lines.append(
            f"| {r.size} | {r.images} | {r.workers} | {r.bare:.1f} | {r.pipeline:.1f} "
            f"| {r.ratio:.2f} | {r.naive:.1f} | >= {TARGET_RATIO} | {met} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    device = pick_device(args.device)
    dtype = autocast_dtype(device)
    load_before = os.getloadavg()
    counts = {size: args.images if size < LARGE_SIZE else args.images_large for size in args.sizes}
    results = []
    with tempfile.TemporaryDirectory(prefix="feddel-bench-") as folder:
        paths = write_images(Path(folder), max(counts.values()), args.seed)
        kib = sum(path.stat().st_size for path in paths) / len(paths) / 1024
        for size, n in counts.items():
            results.append(measure(args.model, size, paths[:n], args.batch, args.repeats, device))
    load_after = os.getloadavg()
    console.print(
        f"files: {SOURCE_PX}x{SOURCE_PX} RGB PNG, textured, {kib:.0f} KiB each\n"
        f"model: {args.model} (random init), batch size {args.batch}, best of "
        f"{args.repeats} after 1 warm-up, naive loop on {NAIVE_IMAGES} images\n"
        f"torch {torch.__version__}, device {device}, precision "
        f"{str(dtype).removeprefix('torch.') if dtype else 'fp32'} (auto), "
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads\n"
        f"load average (1/5/15 min) before {_load(load_before)}, after {_load(load_after)}\n",
        markup=False,
    )
    console.print(table(results), markup=False)
    if args.json:
        write_json(args.json, records(results))
    return EXIT_OK


def _load(values: tuple[float, float, float]) -> str:
    return "/".join(f"{value:.2f}" for value in values)


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return int(text)


def _sizes(text: str) -> list[int]:
    return [_positive(part) for part in text.split(",")]


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m simulations.benchmarks.embedding", description=__doc__)
    parser.add_argument("--model", default="vit_tiny_patch16_224", help="timm ViT name")
    parser.add_argument("--sizes", type=_sizes, default=[64, 224], help="encoder input sizes, px")
    parser.add_argument("--images", type=_positive, default=256, help="images per size")
    parser.add_argument(
        "--images-large", type=_positive, default=128, help=f"images per size >= {LARGE_SIZE} px"
    )
    parser.add_argument("--batch-size", dest="batch", type=_positive, default=64)
    parser.add_argument("--repeats", type=_positive, default=3, help="timed runs; best is kept")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--seed", type=int, default=0, help="seed of the written images")
    parser.add_argument("--json", type=Path, help="also write the records here as JSON")
    return parser


if __name__ == "__main__":
    exit_with(main)
