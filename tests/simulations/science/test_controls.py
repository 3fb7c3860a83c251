"""Control selections: each differs from the oracle in one ingredient, at the same count."""

from collections import Counter
from pathlib import Path

import pytest

from feddel.client.handlers import CenterPaths
from feddel.client.training import training_images
from feddel.common.data.manifest import read_manifest
from feddel.common.errors import ConfigError, RunFailed
from feddel.common.wire.trainproto import TrainRequest
from feddel.simulations.layout import center_dirs
from feddel.simulations.science.controls import (
    CONTROLS,
    Frame,
    control_selection,
    pool_frames,
    water_fill,
    write_control_manifests,
)
from feddel.simulations.synth import generate_federation


def _toy() -> list[Frame]:
    """3 modes: 'a' 4 videos x 5 frames, 'b' 4 x 5, rare 'r' 1 video x 2; in every video of a
    and b the last frame is disruptive."""
    frames = []
    for mode, videos, length in (("a", 4, 5), ("b", 4, 5), ("r", 1, 2)):
        for v in range(videos):
            for f in range(length):
                bad = mode != "r" and f == length - 1
                file = f"{mode}{v}_{f}.png"
                frames.append(Frame("c0" if v % 2 else "c1", file, file, f"{mode}{v}", mode, bad))
    return frames


def test_water_fill_gives_equal_shares_and_passes_on_what_a_small_mode_cannot_take():
    assert water_fill({"a": 2, "b": 10, "c": 10}, 12) == {"a": 2, "b": 5, "c": 5}
    assert water_fill({"a": 2, "b": 10, "c": 10}, 13) == {"a": 2, "b": 6, "c": 5}
    assert water_fill({"a": 2, "b": 3}, 5) == {"a": 2, "b": 3}
    assert water_fill({"a": 7, "b": 7}, 3) == {"a": 2, "b": 1}


def test_oracle_takes_clean_frames_of_every_mode_one_per_video_first():
    chosen = control_selection("oracle", _toy(), 10, seed=0)
    assert len(chosen) == 10 and not any(f.disruptive for f in chosen)
    assert Counter(f.mode for f in chosen) == {"a": 4, "b": 4, "r": 2}
    assert len({f.video for f in chosen if f.mode != "r"}) == 8  # one frame from each video


def test_disruptive_only_spreads_like_the_oracle_over_disruptive_frames():
    chosen = control_selection("disruptive-only", _toy(), 6, seed=0)
    assert len(chosen) == 6 and all(f.disruptive for f in chosen)
    assert Counter(f.mode for f in chosen) == {"a": 3, "b": 3}  # 'r' has no disruptive frame


def test_whole_videos_takes_the_fewest_videos_of_each_mode():
    chosen = control_selection("whole-videos", _toy(), 10, seed=0)
    assert not any(f.disruptive for f in chosen)
    per_video = Counter(f.video for f in chosen if f.mode != "r")
    assert sorted(per_video.values()) == [4, 4]  # 4 clean frames per video: 2 videos, not 8


def test_one_mode_only_keeps_the_most_common_clean_mode():
    frames = [f for f in _toy() if f.video != "b3"]  # 'a' now has the most clean frames
    chosen = control_selection("one-mode-only", frames, 8, seed=1)
    assert {f.mode for f in chosen} == {"a"} and len({f.video for f in chosen}) == 4


def test_controls_are_seeded_and_refuse_a_budget_they_cannot_fill():
    frames = _toy()
    assert control_selection("oracle", frames, 7, 3) == control_selection("oracle", frames, 7, 3)
    assert control_selection("oracle", frames, 7, 3) != control_selection("oracle", frames, 7, 4)
    with pytest.raises(RunFailed, match="disruptive-only has 8 eligible frames for a budget of 9"):
        control_selection("disruptive-only", frames, 9, seed=0)
    with pytest.raises(ConfigError, match="must be one of"):
        control_selection("best", frames, 2, seed=0)


def test_control_manifests_become_the_centers_training_sets(tmp_path):
    data = tmp_path / "data"
    generate_federation(data, centers=3, scale="small", seed=0, size=32)
    centers = center_dirs(data)
    frames = pool_frames(centers)
    assert len({(f.center, f.file) for f in frames}) == len(frames)
    assert 0.1 < sum(f.disruptive for f in frames) / len(frames) < 0.35  # the generator's rates
    for kind in CONTROLS:
        chosen = control_selection(kind, frames, 20, seed=0)
        counts = write_control_manifests(chosen, tmp_path / "state", f"run-{kind}")
        assert sum(counts.values()) == 20
        request = TrainRequest(
            run=f"mae-{kind}", round=0, selection=f"run-{kind}", uniform_fraction=0.0,
            model="vit_feddel_patch8_64", image_size=32, steps=0, step_offset=0, total_steps=1,
            batch_size=4, lr=1.0, seed=0, local_sgd=True,
        )  # fmt: skip
        loaded = sum(
            len(training_images(request, CenterPaths(c.name, c, tmp_path / "state" / c.name)))
            for c in centers
        )
        assert loaded == 20


def test_controls_need_a_federation_with_truth(tmp_path):
    (tmp_path / "c0").mkdir()
    with pytest.raises(ConfigError, match=r"truth\.csv"):
        pool_frames([Path(tmp_path / "c0")])


def test_controls_take_one_frame_per_series_on_the_real_image_federation(
    packaged_federation, tmp_path
):
    """`--source packages` names series, not videos, and frames of volumes as file#frame:
    the controls read both, and their manifests name the frame pre-training loads."""
    frames = pool_frames(center_dirs(packaged_federation))
    assert any(f.frame is not None for f in frames)
    chosen = control_selection("oracle", frames, 30, seed=0)
    assert not any(f.disruptive for f in chosen)
    for mode, taken in Counter(f.mode for f in chosen).items():  # a series' second frame last
        series = {f.video for f in frames if f.mode == mode and not f.disruptive}
        assert len({f.video for f in chosen if f.mode == mode}) == min(taken, len(series))
    write_control_manifests(chosen, tmp_path / "state", "oracle")
    rows = [
        row
        for path in (tmp_path / "state").glob("*/selection-oracle-0.csv")
        for row in read_manifest(path)
    ]
    assert len(rows) == 30
    assert {row["frame"] for row in rows} != {""}


def test_a_truth_file_without_a_sample_s_row_is_one_line(tmp_path):
    data = tmp_path / "data"
    generate_federation(data, centers=1, scale="small", seed=0, size=32)
    (center,) = center_dirs(data)
    (center / "truth.csv").write_text("file,video,mode,disruptive\n")
    with pytest.raises(ConfigError, match=r"truth\.csv has no row with mode and disruptive"):
        pool_frames([center])
