"""Control selections from the simulation's ground truth, to prove the testbed can see data
quality at all (docs/experiments.md).

Every control picks the same number of pool samples as a curation method at that budget, and
all four are made by one procedure that differs in one ingredient at a time:

- `oracle` (positive control): clean frames; the budget water-filled over the semantic modes
  (each mode an equal share, a mode with fewer frames gives the rest to the others); within a
  mode one frame per video before any video gets a second.
- `disruptive-only`: the same spreading over disruptive frames only (quality).
- `whole-videos`: clean frames, modes water-filled, but within a mode every clean frame of a
  video before the next video (redundancy; the issue's "one-video-only": a single video cannot
  fill a budget, so the fewest videos that do).
- `one-mode-only`: clean frames of the pool's most common mode only, one per video first
  (coverage).

Truth is read here, by the simulation, never by the curation (simulations/evaluate.py).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from feddel.common.curation import selection
from feddel.common.data.manifest import manifest_name, write_manifest
from feddel.common.data.scan import scan_center
from feddel.common.errors import ConfigError, RunFailed
from feddel.simulations.layout import TRUTH_FILE, load_truth

CONTROLS = ("oracle", "disruptive-only", "whole-videos", "one-mode-only")
_FALSE = ("", "0", "false", "no", "none")


@dataclass(frozen=True)
class Frame:
    """One pool sample with its truth."""

    center: str
    file: str
    sample_id: str
    video: str  # federation-unique, e.g. c07-v0012
    mode: str
    disruptive: bool
    frame: int | None = None  # of a multi-frame file (a NIfTI slice, a DICOM frame)


def pool_frames(centers: list[Path]) -> list[Frame]:
    """Every sample of every center's pool (scan order: one per unique decodable image), with
    its truth row. Fails in one line when the federation has no truth.csv."""
    truth = load_truth(centers)
    if truth is None:
        raise ConfigError(
            "control selections need the simulation's truth.csv in every center folder; "
            "use a federation made by `feddel-sim data`"
        )
    frames = []
    for folder in centers:
        rows = {row["file"]: row for row in truth[folder.name]}
        for sample in scan_center(folder).samples:
            row = rows.get(sample.locator)
            if row is None or not {"mode", "disruptive"} <= row.keys():
                raise ConfigError(
                    f"{folder / TRUTH_FILE} has no row with mode and disruptive for "
                    f"{sample.locator}; control selections need a truth.csv as `feddel-sim "
                    "data` writes it"
                )
            frames.append(
                Frame(
                    folder.name,
                    sample.file,
                    sample.sample_id,
                    _video(row, folder.name),
                    row["mode"],
                    row["disruptive"].strip().lower() not in _FALSE,
                    sample.frame,
                )
            )
    return frames


def _video(row: dict[str, str], center: str) -> str:
    """The sample's video (synthetic federations) or series (`--source packages`; both named
    federation-unique): the unit the controls take one frame of before a second."""
    unit = row.get("video") or row.get("series")
    if unit:
        return unit
    raise ConfigError(
        f"truth.csv of {center} names no video or series for {row.get('file')!r}; control "
        "selections need a truth.csv as `feddel-sim data` writes it"
    )


def control_selection(kind: str, frames: list[Frame], count: int, seed: int) -> list[Frame]:
    """`count` frames chosen as control `kind` (one of CONTROLS), seeded."""
    if kind not in CONTROLS:
        raise ConfigError(f"control {kind!r} must be one of {', '.join(CONTROLS)}")
    rng = np.random.default_rng([seed, CONTROLS.index(kind)])
    clean = [f for f in frames if not f.disruptive]
    if kind == "disruptive-only":
        eligible = [f for f in frames if f.disruptive]
    elif kind == "one-mode-only":
        common = Counter(f.mode for f in clean).most_common(1)[0][0]
        eligible = [f for f in clean if f.mode == common]
    else:
        eligible = clean
    if len(eligible) < count:
        raise RunFailed(
            f"control {kind} has {len(eligible)} eligible frames for a budget of {count}; "
            "use a smaller budget or a larger federation (--scale)"
        )
    by_mode: dict[str, list[Frame]] = defaultdict(list)
    for frame in eligible:
        by_mode[frame.mode].append(frame)
    quotas = water_fill({mode: len(members) for mode, members in by_mode.items()}, count)
    whole = kind == "whole-videos"
    chosen = []
    for mode in sorted(by_mode):
        chosen += _spread(by_mode[mode], quotas[mode], rng, whole_videos=whole)
    return chosen


def water_fill(capacity: dict[str, int], count: int) -> dict[str, int]:
    """Split `count` as evenly as the capacities allow (the curation's water-filling, modes in
    name order: the remainder of an even split goes to the first names)."""
    modes = sorted(capacity)
    quotas = selection.water_fill(np.array([capacity[m] for m in modes], np.int64), count)
    return {mode: int(q) for mode, q in zip(modes, quotas, strict=True)}


def _spread(frames: list[Frame], quota: int, rng: np.random.Generator, whole_videos: bool):
    """`quota` frames: videos in random order, frames of a video in random order; round-robin
    (one per video per pass) or, with `whole_videos`, each video exhausted before the next."""
    videos: dict[str, list[Frame]] = defaultdict(list)
    for frame in frames:
        videos[frame.video].append(frame)
    order = [videos[v] for v in rng.permutation(sorted(videos))]
    queues = [[members[i] for i in rng.permutation(len(members))] for members in order]
    if whole_videos:
        return [frame for queue in queues for frame in queue][:quota]
    picked: list[Frame] = []
    depth = 0
    while len(picked) < quota:
        picked += [queue[depth] for queue in queues if depth < len(queue)][: quota - len(picked)]
        depth += 1
    return picked


def write_control_manifests(chosen: list[Frame], state_root: Path, run: str) -> dict[str, int]:
    """Each center's manifest of `run` in its state folder, where pre-training reads its
    training set; returns center -> selected count (centers with none get no manifest)."""
    by_center: dict[str, list[Frame]] = defaultdict(list)
    for frame in chosen:
        by_center[frame.center].append(frame)
    for center, members in by_center.items():
        rows = [
            (center, f.file, f.sample_id, -1, 0.0, "" if f.frame is None else str(f.frame))
            for f in sorted(members, key=_file)
        ]
        write_manifest(state_root / center / manifest_name(run, 0), rows)
    return {center: len(members) for center, members in by_center.items()}


def _file(frame: Frame) -> str:
    return frame.file
