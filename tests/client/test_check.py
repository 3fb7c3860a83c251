"""`feddel-center check`: errors, JSON output, and counts against a synthetic federation's truth."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from feddel.client.cli import main
from feddel.common.cliutil import EXIT_OK, EXIT_USER_ERROR
from feddel.common.io import read_csv
from feddel.simulations.synth import generate_federation

JSON_KEYS = {
    "data",
    "files",
    "readable",
    "samples",
    "duplicate_groups",
    "duplicate_files",
    "unreadable",
    "unreadable_files",
    "unreadable_reasons",
    "ignored",
    "masks",
    "sizes",
    "modalities",
}


def run_check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["check", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("case", ["missing", "file", "empty"])
def test_check_bad_data_folder_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    data = {"missing": tmp_path / "nope", "file": tmp_path / "notes.txt", "empty": tmp_path}[case]
    code, out, err = run_check(capsys, "--data", str(data), "--json", str(tmp_path / "o.json"))
    assert code == EXIT_USER_ERROR
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and str(data) in err
    assert "Traceback" not in out + err
    assert not (tmp_path / "o.json").exists()


def test_check_writes_json_with_all_keys_and_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "center" / "images"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(data / f"{i}.png")
    shutil.copy(data / "0.png", data / "0_copy.png")
    shutil.copy(get_testdata_file("MR_small.dcm"), data / "mr.dcm")
    (data / "bad.jpg").write_bytes(b"")
    (data / "meta.json").write_text("{}")
    out_json = tmp_path / "out" / "check.json"
    code, out, _ = run_check(capsys, "--data", str(data.parent), "--json", str(out_json))
    assert code == EXIT_OK
    summary = json.loads(out_json.read_text())
    assert set(summary) >= JSON_KEYS
    assert summary["data"] == str(data.parent.resolve())
    assert {k: summary[k] for k in ("files", "readable", "samples", "unreadable", "ignored")} == {
        "files": 6,
        "readable": 5,
        "samples": 4,
        "unreadable": 1,
        "ignored": 1,
    }
    assert (summary["duplicate_groups"], summary["duplicate_files"], summary["masks"]) == (1, 1, 0)
    assert summary["unreadable_files"] == [{"file": "images/bad.jpg", "reason": "zero-byte file"}]
    assert summary["unreadable_reasons"] == {"zero-byte file": 1}
    assert summary["modalities"] == {"PNG": 3, "DICOM:MR": 1}
    assert summary["sizes"] == {
        "min_width": 30,
        "median_width": 30,
        "max_width": 64,
        "min_height": 20,
        "median_height": 21,
        "max_height": 64,
    }
    assert "zero-byte file" in out and "images/bad.jpg" in out


def test_check_counts_match_synthetic_federation_truth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fed = tmp_path / "fed"
    generate_federation(fed, centers=5, scale="small", seed=0, size=64)
    centers = sorted(fed.glob("center-*"))
    assert len(centers) == 5
    for center in centers:
        rows = read_csv(center / "truth.csv")
        readable = [r for r in rows if r["corrupt"] == "0"]
        copies = [r for r in rows if r["duplicate_of"]]
        out_json = tmp_path / f"{center.name}.json"
        code, _, _ = run_check(capsys, "--data", str(center), "--json", str(out_json))
        assert code == EXIT_OK
        got = json.loads(out_json.read_text())
        stems = {Path(r["file"]).stem for r in readable if not r["duplicate_of"]}
        with_mask = {p.stem for p in (center / "masks").iterdir()} & stems
        assert {
            k: got[k]
            for k in (
                "files",
                "readable",
                "unreadable",
                "duplicate_groups",
                "duplicate_files",
                "samples",
                "masks",
            )
        } == {
            "files": len(rows),
            "readable": len(readable),
            "unreadable": sum(r["corrupt"] == "1" for r in rows),
            "duplicate_groups": len({r["duplicate_of"] for r in readable if r["duplicate_of"]}),
            "duplicate_files": len(copies),
            "samples": len(readable) - len(copies),
            "masks": len(with_mask),
        }, center.name
        assert set(got["unreadable_reasons"]) <= {"truncated or corrupt image data"}


def test_embed_cli_fills_the_cache_then_reuses_it(tmp_path):
    from feddel.simulations.synth import generate_federation

    generate_federation(tmp_path / "fed", centers=2, scale="small", seed=0, size=32)
    center, state = tmp_path / "fed" / "center-00", tmp_path / "state"
    args = ["embed", "--data", str(center), "--state", str(state), "--image-size", "32"]
    assert main([*args, "--json", str(tmp_path / "first.json")]) == 0
    assert main([*args, "--json", str(tmp_path / "second.json")]) == 0
    first = json.loads((tmp_path / "first.json").read_text())
    second = json.loads((tmp_path / "second.json").read_text())
    assert first["computed"] == first["embedded"] > 0 and first["dim"] == 192
    assert second["computed"] == 0 and second["reused"] == first["embedded"]


def test_embed_cli_rejects_a_bad_image_size_in_one_line(tmp_path, capsys):
    (tmp_path / "c").mkdir()
    code = main(
        [
            "embed",
            "--data",
            str(tmp_path / "c"),
            "--state",
            str(tmp_path / "s"),
            "--image-size",
            "50",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "image-size=50 must be a multiple of the patch size 8" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
