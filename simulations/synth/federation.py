"""`generate_federation`: the synthetic multi-center endoscopy federation, with ground truth.

Layout under `out`: `<center>/images/*.png` (the pool a center would curate), `<center>/masks/`
(polyp masks, same stem), `<center>/test/{images,masks}/` (held-out labeled videos),
`<center>/truth.csv` (one row per pool file), `federation.json` (counts), optional `preview.png`.
Truth is for evaluation only: curation must never read it.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from feddel.common.errors import ConfigError, DataError
from feddel.common.io import atomic_write_text, write_json
from feddel.simulations.synth.center import CenterSummary, write_center
from feddel.simulations.synth.plan import SCALES, CenterPlan, plan_federation
from feddel.simulations.synth.preview import write_preview

GENERATOR_VERSION = "1.0"
MARKER = ".feddel-synth.json"  # written first: marks a folder (even half-written) as ours
MAX_CENTERS = 999
MIN_SIZE, MAX_SIZE = 32, 512
_PARALLEL_FRAMES = 1000  # below this, starting worker processes costs more than it saves
_OURS = re.compile(r"center-\d+|federation\.json|preview\.png|" + re.escape(MARKER))

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def generate_federation(
    out: Path,
    centers: int = 31,
    scale: str = "demo",
    seed: int = 0,
    size: int = 64,
    preview: bool = False,
    progress: Progress | None = None,
    *,
    workers: int | None = None,
) -> dict:
    """Write a federation of `centers` centers to `out` and return federation.json's content.

    Same arguments -> byte-identical files. `out` must be empty, missing, or a federation this
    function wrote with the same arguments (it is then regenerated). `progress(done, total)`
    is called as centers finish. `workers` (default: CPU count, 1 for small jobs) only changes
    speed, never output.
    """
    args = _validate(centers, scale, seed, size, workers)
    out = Path(out)
    prepare_output(out, args)
    plans = plan_federation(centers, SCALES[scale], seed)
    summaries = _write_centers(plans, out, seed, size, workers, progress)
    content = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "scale": scale,
        "size": size,
        "centers": [s.as_dict() for s in summaries],
        "total_pool": sum(s.pool for s in summaries),
    }
    if preview:
        write_preview(out, [s.name for s in summaries], size, seed)
    write_json(out / "federation.json", content)
    logger.info("wrote %d centers, %d pool images to %s", centers, content["total_pool"], out)
    return content


def _validate(
    centers: int, scale: str, seed: int, size: int, workers: int | None
) -> dict[str, object]:
    if isinstance(centers, bool) or not isinstance(centers, int) or not 1 <= centers <= MAX_CENTERS:
        raise ConfigError(f"centers={centers!r} must be an integer in [1, {MAX_CENTERS}]")
    if scale not in SCALES:
        raise ConfigError(f"scale={scale!r} must be one of {', '.join(SCALES)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed={seed!r} must be a non-negative integer")
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"size={size!r} must be an integer in [{MIN_SIZE}, {MAX_SIZE}] pixels")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers={workers!r} must be a positive integer or None")
    return {
        "generator_version": GENERATOR_VERSION,
        "centers": centers,
        "scale": scale,
        "seed": seed,
        "size": size,
    }


def prepare_output(out: Path, args: dict[str, object]) -> None:
    """Make `out` ready: create it, or clear a previous federation made with the same args.

    Refuses anything else, so a typo in --out never deletes someone's data.
    """
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a folder path")
    entries = sorted(p.name for p in out.iterdir()) if out.exists() else []
    if entries:
        marker = out / MARKER
        if not marker.is_file():
            raise DataError(
                f"{out} is not empty and is not a feddel-sim federation; "
                "choose an empty or new folder for --out"
            )
        foreign = [name for name in entries if not _OURS.fullmatch(name)]
        if foreign:
            raise DataError(
                f"{out} holds {foreign[0]!r}, which feddel-sim did not write; "
                "move it away or choose another --out"
            )
        previous = _read_marker(marker)
        if previous != args:
            raise DataError(
                f"{out} holds a federation made with {_describe(previous)}; "
                f"delete it or choose another --out to generate {_describe(args)}"
            )
        for name in entries:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif name != MARKER:
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MARKER, json.dumps(args, sort_keys=True) + "\n")


def _read_marker(marker: Path) -> dict[str, object]:
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{marker} is unreadable ({exc}); delete the folder and rerun") from exc


def _describe(args: dict[str, object]) -> str:
    return ", ".join(f"{key}={args.get(key)}" for key in ("centers", "scale", "seed", "size"))


def _write_centers(
    plans: list[CenterPlan],
    out: Path,
    seed: int,
    size: int,
    workers: int | None,
    progress: Progress | None,
) -> list[CenterSummary]:
    """Write every center, in worker processes when the job is large; results in plan order."""
    frames = sum(v.frames for p in plans for v in p.videos)
    if workers is None:
        workers = min(os.cpu_count() or 1, len(plans)) if frames >= _PARALLEL_FRAMES else 1
    total = len(plans)
    if workers == 1:
        summaries = []
        for done, plan in enumerate(plans, start=1):
            summaries.append(write_center(plan, out, seed, size))
            if progress is not None:
                progress(done, total)
        return summaries
    by_index: dict[int, CenterSummary] = {}
    largest_first = sorted(plans, key=lambda p: -p.pool_frames)
    context = multiprocessing.get_context("spawn")  # safe next to threads (e.g. rich's live bar)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(write_center, p, out, seed, size): p.index for p in largest_first}
        for done, future in enumerate(as_completed(futures), start=1):
            by_index[futures[future]] = future.result()
            if progress is not None:
                progress(done, total)
    return [by_index[p.index] for p in plans]
