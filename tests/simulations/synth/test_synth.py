"""The synthetic federation: layout, ground truth, proportions, determinism, and its CLI."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from feddel.common.errors import ConfigError, DataError
from feddel.common.io import read_csv
from feddel.simulations.cli import main
from feddel.simulations.synth import DISRUPTIONS, GENERATOR_VERSION, MODES, generate_federation
from feddel.simulations.synth.noise import value_noise
from feddel.simulations.synth.plan import mask_file, split_lengths
from feddel.simulations.synth.preview import EXAMPLES, MIN_TILE

SIZE = 64
TRUTH_HEADER = ["file", "video", "mode", "disruptive", "duplicate_of", "corrupt"]


@pytest.fixture(scope="module")
def fed3(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("fed3") / "fed"
    return out, generate_federation(out, centers=3, scale="small", seed=0, size=SIZE)


@pytest.fixture(scope="module")
def fed31(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("fed31") / "fed"
    return out, generate_federation(out, centers=31, scale="small", seed=0, size=SIZE)


def _truth(root: Path) -> dict[str, list[dict[str, str]]]:
    return {c.name: read_csv(c / "truth.csv") for c in sorted(root.glob("center-*"))}


def _files(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


def _gray(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.float64)


def _video_number(file: str) -> int:
    match = re.search(r"v(\d{4})_f\d{2}", file)
    assert match is not None, file
    return int(match.group(1))


# --- determinism ---------------------------------------------------------------------------


def test_generate_federation_same_args_give_identical_bytes_whatever_the_workers(fed3, tmp_path):
    root, content = fed3
    again = generate_federation(
        tmp_path / "again", centers=3, scale="small", seed=0, size=SIZE, workers=2
    )
    assert again == content
    assert _files(tmp_path / "again") == _files(root)


def test_generate_federation_other_seed_gives_other_images(fed3, tmp_path):
    root, _ = fed3
    generate_federation(tmp_path / "seed1", centers=3, scale="small", seed=1, size=SIZE)
    first = "center-00/images/v0000_f00.png"
    assert (tmp_path / "seed1" / first).read_bytes() != (root / first).read_bytes()
    assert (tmp_path / "seed1" / "center-00/truth.csv").read_bytes() != (
        root / "center-00/truth.csv"
    ).read_bytes()


# --- layout and truth ----------------------------------------------------------------------


def test_generate_federation_layout_truth_and_json_agree(fed3):
    root, content = fed3
    assert content["generator_version"] == GENERATOR_VERSION
    assert json.loads((root / "federation.json").read_text()) == content
    assert [c["name"] for c in content["centers"]] == ["center-00", "center-01", "center-02"]
    for center in content["centers"]:
        folder = root / center["name"]
        with open(folder / "truth.csv") as handle:
            assert handle.readline().strip().split(",") == TRUTH_HEADER
        rows = read_csv(folder / "truth.csv")
        on_disk = sorted(p.relative_to(folder).as_posix() for p in (folder / "images").iterdir())
        assert sorted(r["file"] for r in rows) == on_disk
        assert all(r["mode"] in MODES for r in rows)
        assert all(r["disruptive"] in ("", *DISRUPTIONS) for r in rows)
        assert all(r["corrupt"] in ("0", "1") for r in rows)
        assert center["pool"] == len(rows)
        assert center["disruptive"] == sum(bool(r["disruptive"]) for r in rows)
        assert center["duplicates"] == sum(bool(r["duplicate_of"]) for r in rows)
        assert center["corrupt"] == sum(r["corrupt"] == "1" for r in rows)
        assert center["modes"] == {m: sum(r["mode"] == m for r in rows) for m in MODES}
        assert center["test"] == len(list((folder / "test/images").iterdir()))
    assert content["total_pool"] == sum(c["pool"] for c in content["centers"])


def test_generate_federation_video_ids_are_unique_across_centers(fed3):
    root, _ = fed3
    videos_by_center = {name: {r["video"] for r in rows} for name, rows in _truth(root).items()}
    all_videos = [v for videos in videos_by_center.values() for v in videos]
    assert len(all_videos) == len(set(all_videos))


def test_generate_federation_masks_exist_exactly_for_polyp_frames(fed3):
    root, _ = fed3
    nonempty = []
    for name, rows in _truth(root).items():
        folder = root / name
        polyp = {mask_file(r["file"]) for r in rows if r["mode"] == "polyp"}
        masks = {p.relative_to(folder).as_posix() for p in (folder / "masks").iterdir()}
        assert masks == polyp
        for mask in sorted(polyp):
            with Image.open(folder / mask) as image:
                pixels = np.asarray(image)
            assert pixels.shape == (SIZE, SIZE)
            assert set(np.unique(pixels)) <= {0, 255}
            nonempty.append(bool(pixels.any()))
    assert np.mean(nonempty) > 0.8  # camera motion or a blank frame may hide a polyp


def test_generate_federation_test_split_is_labeled_and_disjoint_from_pool_videos(fed3):
    root, _ = fed3
    for name, rows in _truth(root).items():
        folder = root / name
        images = sorted(p.name for p in (folder / "test/images").iterdir())
        masks = sorted(p.name for p in (folder / "test/masks").iterdir())
        assert images and images == masks
        pool_videos = {_video_number(r["file"]) for r in rows}
        assert not pool_videos & {_video_number(f) for f in images}
        filled = [_gray(folder / "test/masks" / m).any() for m in masks]
        assert np.mean(filled) > 0.5  # mostly polyp frames


# --- federation-wide proportions (31 centers) ----------------------------------------------


def test_generate_federation_center_sizes_are_heavy_tailed(fed31):
    _, content = fed31
    pools = [c["pool"] for c in content["centers"]]
    assert len(pools) == 31
    assert max(pools) >= 10 * min(pools)
    assert np.median(pools) < np.mean(pools)  # most centers small, a few large


def test_generate_federation_rare_mode_is_rare_but_in_several_centers(fed31):
    _, content = fed31
    rare = [c["modes"]["diverticulum"] for c in content["centers"]]
    assert 0 < sum(rare) / content["total_pool"] < 0.03
    assert sum(n > 0 for n in rare) >= 3


def test_generate_federation_disruptive_rate_is_15_to_30_percent_per_center(fed31):
    root, content = fed31
    rates = [c["disruptive"] / c["pool"] for c in content["centers"]]
    assert all(0.15 <= r <= 0.30 for r in rates), rates
    assert max(rates) - min(rates) > 0.05  # varies by center
    kinds = Counter(r["disruptive"] for rows in _truth(root).values() for r in rows)
    assert all(kinds[k] > 0 for k in DISRUPTIONS)


def test_generate_federation_has_duplicates_and_corrupt_files_at_low_rates(fed31):
    _, content = fed31
    centers = content["centers"]
    assert all(c["duplicates"] >= 1 for c in centers)
    assert 0.01 <= sum(c["duplicates"] for c in centers) / content["total_pool"] <= 0.03
    assert sum(c["corrupt"] > 0 for c in centers) > len(centers) / 2
    assert sum(c["corrupt"] for c in centers) / content["total_pool"] < 0.025


def test_generate_federation_centers_differ_in_mode_mix_and_device_style(fed31):
    root, content = fed31
    normal_share = [c["modes"]["normal"] / c["pool"] for c in content["centers"]]
    assert max(normal_share) - min(normal_share) > 0.2
    means = []
    for name, rows in _truth(root).items():
        clean = [r for r in rows if not r["disruptive"] and r["corrupt"] == "0"][:20]
        rgb = [np.asarray(Image.open(root / name / r["file"]).convert("RGB")) for r in clean]
        means.append(np.mean(rgb, axis=(0, 1, 2)))
    assert np.std(means, axis=0).max() > 5.0  # grey levels between centers' average colours


# --- file-level truth ----------------------------------------------------------------------


def test_generate_federation_corrupt_files_fail_to_decode_and_others_decode(fed3):
    root, _ = fed3
    corrupt = 0
    for name, rows in _truth(root).items():
        for row in rows:
            with Image.open(root / name / row["file"]) as image:
                if row["corrupt"] == "1":
                    corrupt += 1
                    with pytest.raises(OSError):
                        image.load()
                else:
                    assert np.asarray(image.convert("RGB")).shape == (SIZE, SIZE, 3)
    assert corrupt >= 1


def test_generate_federation_duplicates_are_byte_copies_of_clean_originals(fed3):
    root, _ = fed3
    for name, rows in _truth(root).items():
        by_file = {r["file"]: r for r in rows}
        copies = [r for r in rows if r["duplicate_of"]]
        assert copies
        for row in copies:
            source = by_file[row["duplicate_of"]]
            assert not source["duplicate_of"]
            assert (source["video"], source["mode"]) == (row["video"], row["mode"])
            folder = root / name
            assert (folder / row["file"]).read_bytes() == (folder / source["file"]).read_bytes()


def test_generate_federation_frames_of_a_video_correlate_more_than_across_videos(fed3):
    root, _ = fed3
    name, rows = max(_truth(root).items(), key=lambda item: len(item[1]))
    clean = [r for r in rows if not r["disruptive"] and r["corrupt"] == "0"]
    pixels = np.stack([_gray(root / name / r["file"]).ravel() for r in clean])
    corr = np.corrcoef(pixels)
    video = np.array([r["video"] for r in clean])
    same = (video[:, None] == video[None, :]) & ~np.eye(len(clean), dtype=bool)
    across = video[:, None] != video[None, :]
    assert corr[same].mean() > 0.7
    assert corr[across].mean() < 0.3


def test_generate_federation_disruptive_frames_stand_out_from_their_centers_clean_frames(fed31):
    """Relative to the same center's clean frames (device style included), each kind moves the
    statistic a person would notice, for at least 90% of its frames."""
    root, _ = fed31
    hits: dict[str, list[bool]] = {k: [] for k in DISRUPTIONS}
    for name, rows in _truth(root).items():
        readable = [r for r in rows if r["corrupt"] == "0"]
        gray = {r["file"]: _gray(root / name / r["file"]) for r in readable}
        stats = {f: _frame_stats(g) for f, g in gray.items()}
        clean = np.array([stats[r["file"]] for r in readable if not r["disruptive"]])
        mean, std, lap, bright = np.median(clean, axis=0)
        for r in readable:
            if r["disruptive"]:
                m, s, lv, b = stats[r["file"]]
                hits[r["disruptive"]].append(
                    {
                        "dark": m < 0.5 * mean,
                        "overexposed": m > mean + 50,
                        "blank": s < 0.6 * std and lv < 0.5 * lap,
                        "blur": lv < 0.5 * lap,
                        "bubbles": b > bright + 0.01,
                    }[r["disruptive"]]
                )
    for kind, flags in hits.items():
        assert np.mean(flags) >= 0.9, (kind, np.mean(flags))


def _frame_stats(gray: np.ndarray) -> tuple[float, float, float, float]:
    """mean, std, Laplacian variance, fraction of pixels > 30 grey levels above their 5x5 mean."""
    lap = 4 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:]
    padded = np.pad(gray, 2, mode="edge")
    local = (
        sum(
            padded[dy : dy + gray.shape[0], dx : dx + gray.shape[1]]
            for dy in range(5)
            for dx in range(5)
        )
        / 25.0
    )
    return gray.mean(), gray.std(), lap.var(), float(((gray - local) > 30).mean())


# --- the output folder ---------------------------------------------------------------------


def test_generate_federation_refuses_a_foreign_nonempty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a feddel-sim federation"):
        generate_federation(tmp_path, centers=1, scale="small")
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_generate_federation_regenerates_same_args_and_refuses_other_args(tmp_path):
    out = tmp_path / "fed"
    first = generate_federation(out, centers=1, scale="small", seed=3, size=32)
    before = _files(out)
    (out / "center-00" / "images" / "stray.png").write_bytes(b"x")
    assert generate_federation(out, centers=1, scale="small", seed=3, size=32) == first
    assert _files(out) == before
    with pytest.raises(DataError, match=r"seed=3.*delete it or choose another --out"):
        generate_federation(out, centers=1, scale="small", seed=4, size=32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"centers": 0}, r"centers=0 must be an integer in \[1, 999\]"),
        ({"centers": -2}, r"centers=-2 must be"),
        ({"scale": "huge"}, r"scale='huge' must be one of small, demo, full"),
        ({"size": 16}, r"size=16 must be an integer in \[32, 512\]"),
        ({"seed": -1}, r"seed=-1 must be a non-negative integer"),
    ],
)
def test_generate_federation_rejects_bad_values_naming_them(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        generate_federation(tmp_path / "x", **{"scale": "small", **kwargs})
    assert not (tmp_path / "x").exists()


# --- pure helpers --------------------------------------------------------------------------


@pytest.mark.parametrize("total", [3, 4, 12, 13, 15, 27, 100, 1001])
def test_split_lengths_covers_total_with_videos_in_bounds(total):
    lengths = split_lengths(total, np.random.default_rng(total), lo=3, hi=12)
    assert sum(lengths) == total
    assert all(3 <= n <= 12 for n in lengths)


def test_value_noise_matches_plain_bilinear_interpolation():
    grid = np.arange(16.0 * 16.0).reshape(16, 16)
    # a lattice point returns its value; halfway between two points (smoothstep(0.5) = 0.5)
    # returns their mean; coordinates wrap around the period 16
    x = np.array([[3.0, 3.5, -1.0, 19.5]])
    y = np.array([[2.0, 2.0, 0.0, 5.0]])
    expected = [
        [grid[2, 3], (grid[2, 3] + grid[2, 4]) / 2, grid[0, 15], (grid[5, 3] + grid[5, 4]) / 2]
    ]
    np.testing.assert_allclose(value_noise(grid, x, y), expected)


# --- CLI ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--centers", "-1"], "centers=-1"),
        (["--scale", "huge"], "scale='huge'"),
        (["--size", "16"], "size=16"),
        (["--centers", "abc"], "invalid int value: 'abc'"),
    ],
)
def test_cli_data_bad_values_exit_2_with_one_error_line(tmp_path, capsys, args, message):
    assert main(["data", "--out", str(tmp_path / "x"), *args]) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich may wrap a long line
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err and "usage:" not in err


def test_cli_without_subcommand_exits_2(capsys):
    assert main([]) == 2
    assert "required" in capsys.readouterr().err


def test_cli_data_writes_federation_summary_and_preview(tmp_path, capsys):
    out = tmp_path / "fed"
    args = ["--centers", "2", "--scale", "small", "--size", "32", "--preview"]
    assert main(["data", "--out", str(out), *args]) == 0
    stdout = capsys.readouterr().out
    content = json.loads((out / "federation.json").read_text())
    assert "federation.json" in stdout and "total" in stdout
    assert str(content["total_pool"]) in stdout
    with Image.open(out / "preview.png") as sheet:
        width, height = sheet.size
    rows = len(MODES) + 1 + len(DISRUPTIONS)  # + one row of polyp masks
    assert height >= rows * MIN_TILE and width >= EXAMPLES * MIN_TILE
