"""Render and write one center's folder from its plan: pool, masks, test split, truth.csv.

Runs in a worker process for large federations; each video draws from its own seed
(seed, center, video), so the bytes do not depend on which process renders what.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from feddel.common.io import atomic_write_bytes, write_csv
from feddel.simulations.synth.disrupt import disrupt
from feddel.simulations.synth.modes import MODES
from feddel.simulations.synth.plan import CenterPlan, VideoPlan, frame_file, mask_file
from feddel.simulations.synth.scene import render, sample_path, sample_scene
from feddel.simulations.synth.style import develop

TRUTH_COLUMNS: tuple[str, ...] = ("file", "video", "mode", "disruptive", "duplicate_of", "corrupt")
_CORRUPT_KEEP = (0.3, 0.7)  # fraction of a PNG's bytes kept in a truncated (corrupt) file


@dataclass(frozen=True)
class CenterSummary:
    """What federation.json says about a center."""

    name: str
    pool: int
    test: int
    disruptive: int
    duplicates: int
    corrupt: int
    modes: dict[str, int]

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "pool": self.pool,
            "test": self.test,
            "disruptive": self.disruptive,
            "duplicates": self.duplicates,
            "corrupt": self.corrupt,
            "modes": dict(self.modes),
        }


def video_id(center: int, video: int) -> str:
    """Federation-unique video id, e.g. `c07-v0012`."""
    return f"c{center:02d}-v{video:04d}"


def write_center(plan: CenterPlan, root: Path, seed: int, size: int) -> CenterSummary:
    """Render every video of `plan` at size x size and write the center folder under `root`."""
    folder = root / plan.name
    for sub in ("images", "masks", "test/images", "test/masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    for video in plan.videos:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2, plan.index, video.number]))
        rows.extend(_write_video(plan, video, folder, size, rng))
    mode_of = {row[0]: row[2] for row in rows}
    video_of = {row[0]: row[1] for row in rows}
    for copy, source in plan.duplicates.items():
        atomic_write_bytes(folder / copy, (folder / source).read_bytes())
        if (folder / mask_file(source)).exists():
            atomic_write_bytes(folder / mask_file(copy), (folder / mask_file(source)).read_bytes())
        rows.append([copy, video_of[source], mode_of[source], "", source, "0"])
    rows.sort(key=lambda row: row[0])
    write_csv(folder / "truth.csv", TRUTH_COLUMNS, rows)
    modes = {mode: sum(row[2] == mode for row in rows) for mode in MODES}
    return CenterSummary(
        name=plan.name,
        pool=len(rows),
        test=sum(v.frames for v in plan.videos if v.test),
        disruptive=len(plan.disruptive),
        duplicates=len(plan.duplicates),
        corrupt=len(plan.corrupt),
        modes=modes,
    )


def _write_video(
    plan: CenterPlan, video: VideoPlan, folder: Path, size: int, rng: np.random.Generator
) -> list[list[str]]:
    """Write the frames (and masks) of one video; return its truth rows (none for test)."""
    scene = sample_scene(rng, video.mode)
    rows: list[list[str]] = []
    for t, pose in enumerate(sample_path(rng, video.frames)):
        file = frame_file(video.number, t, test=video.test)
        frame = render(scene, pose, size, t)
        kind = plan.disruptive.get(file, "")
        mask = frame.mask
        if kind:
            hit = disrupt(frame.rgb, kind, rng)
            pixels = develop(hit.rgb, plan.style, rng, hit.gain, hit.offset)
            mask = mask if hit.visible_lesion else np.zeros_like(mask)
        else:
            pixels = develop(frame.rgb, plan.style, rng)
        data = _png(pixels)
        if file in plan.corrupt:
            data = data[: int(len(data) * rng.uniform(*_CORRUPT_KEEP))]
        (folder / file).write_bytes(data)
        if video.test or video.mode == "polyp":
            (folder / mask_file(file)).write_bytes(_png(mask.astype(np.uint8) * 255))
        if not video.test:
            corrupt = "1" if file in plan.corrupt else "0"
            rows.append([file, video_id(plan.index, video.number), video.mode, kind, "", corrupt])
    return rows


def _png(pixels: np.ndarray) -> bytes:
    """(h, w, 3) or (h, w) uint8 -> PNG bytes (no metadata, so bytes depend on pixels only)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
