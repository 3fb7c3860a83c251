"""`feddel-center embed`: embed a center's images into its resumable cache, before a round.

A hospital can run this ahead of time (overnight, on its GPU if it has one); the inventory
phase of a round then only reads the cache. Interrupting it loses nothing: the next call goes
on from the rows already written.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from feddel.common.cliutil import EXIT_FAILED, EXIT_OK, console
from feddel.common.config import CurationConfig
from feddel.common.io import require_writable_file, require_writable_folder, write_json

DEFAULTS = CurationConfig()


def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        required=True,
        type=Path,
        metavar="DIR",
        help="the center's image folder (read-only)",
    )
    parser.add_argument(
        "--state",
        required=True,
        type=Path,
        metavar="DIR",
        help="the center's state folder (the cache lives here)",
    )
    parser.add_argument(
        "--model",
        default=DEFAULTS.model,
        help=f"any plain timm ViT name (default {DEFAULTS.model})",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=DEFAULTS.image_size,
        help=f"input side in px, a multiple of the patch size (default {DEFAULTS.image_size})",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        metavar="FILE",
        help=".safetensors/.pth weights or a FedDEL MAE checkpoint "
        "(default: random init with --seed)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULTS.seed,
        help="random-init seed when no weights are given (default 0)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="images per forward pass (default 64)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the summary as JSON")


def run_embed(args: argparse.Namespace) -> int:
    from feddel.common.data.scan import scan_center
    from feddel.common.models.embed import EncoderSpec, encoder_fingerprint
    from feddel.common.models.embedcache import EmbeddingCache, embed_center

    spec = EncoderSpec(
        model=args.model, image_size=args.image_size, seed=args.seed,
        weights=str(args.weights) if args.weights else None,
    )  # fmt: skip
    require_writable_folder(args.state, "--state")
    if args.json:
        require_writable_file(args.json, "--json")
    inventory = scan_center(args.data)
    columns = (TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    started = time.perf_counter()
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("embedding", total=len(inventory.samples))
        cached = embed_center(
            inventory.samples, args.data, spec, args.state, batch_size=args.batch_size,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )  # fmt: skip
    seconds = time.perf_counter() - started
    summary = {
        "data": str(args.data),
        "state": str(args.state),
        "model": spec.model,
        "image_size": spec.image_size,
        "fingerprint": encoder_fingerprint(spec),
        "cache": str(EmbeddingCache(args.state, spec).path),
        "samples": len(inventory.samples),
        "embedded": len(cached.ids),
        "dim": int(cached.embeddings.shape[1]) if len(cached.ids) else 0,
        "computed": cached.computed,
        "reused": cached.reused,
        "failed": [{"sample_id": f.sample_id, "reason": f.reason} for f in cached.failed],
        "unreadable_at_scan": len(inventory.unreadable),
        "seconds": round(seconds, 3),
        "images_per_second": round(cached.computed / seconds, 1) if cached.computed else None,
    }
    _print(summary)
    if args.json:
        write_json(args.json, summary)
        console.print(f"wrote {args.json}")
    return EXIT_OK if summary["embedded"] else EXIT_FAILED


def _print(summary: dict) -> None:
    table = Table(title=f"embeddings of {summary['data']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    speed = summary["images_per_second"]
    rows = [
        ("encoder", f"{summary['model']} at {summary['image_size']} px ({summary['fingerprint']})"),
        ("samples / embedded", f"{summary['samples']} / {summary['embedded']}"),
        ("dimension", str(summary["dim"])),
        ("computed now / from cache", f"{summary['computed']} / {summary['reused']}"),
        ("failed to decode", str(len(summary["failed"]))),
        ("time", f"{summary['seconds']:.1f} s" + (f" ({speed} img/s)" if speed else "")),
        ("cache", summary["cache"]),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
