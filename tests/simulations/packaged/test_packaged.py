"""The real-image federation (simulations/packaged): truth that matches the files, the mix of
modalities, formats and series it promises, its defect rates, determinism, and its CLI."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest

from feddel.common.data.decode import decode_file
from feddel.common.data.scan import scan_center
from feddel.common.io import read_csv
from feddel.simulations.cli import main
from feddel.simulations.layout import center_dirs
from feddel.simulations.packaged import CENTERS, TRUTH_COLUMNS
from feddel.simulations.packaged.frames import DEFECTS


def truth(center: Path) -> dict[str, dict[str, str]]:
    rows = read_csv(center / "truth.csv")
    assert list(rows[0]) == list(TRUTH_COLUMNS)
    return {row["file"]: row for row in rows}


def digest(root: Path) -> str:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    blob = b"".join(p.relative_to(root).as_posix().encode() + p.read_bytes() for p in files)
    return hashlib.sha256(blob).hexdigest()


def test_truth_names_every_sample_and_only_files_that_exist(packaged_federation: Path) -> None:
    for center in center_dirs(packaged_federation):
        rows = truth(center)
        inventory = scan_center(center)
        assert {s.locator for s in inventory.samples} <= set(rows)
        copies = {f for f, row in rows.items() if row["duplicate_of"]}
        corrupt = {f for f, row in rows.items() if row["corrupt"] == "1"}
        collapsed = {f for files in inventory.duplicates.values() for f in files}
        readable = {s.locator for s in inventory.samples} | collapsed
        assert set(rows) == readable | corrupt  # nothing in truth that the scan does not see
        assert {u.file for u in inventory.unreadable} == corrupt
        for copy in copies:
            original = rows[copy]["duplicate_of"]
            assert (center / copy).read_bytes() == (center / original).read_bytes()
            assert rows[copy]["series"] == rows[original]["series"]


def test_it_mixes_modalities_formats_and_series_as_hospitals_do(packaged_federation: Path) -> None:
    rows = [row for c in center_dirs(packaged_federation) for row in truth(c).values()]
    assert len({row["mode"] for row in rows}) == 15
    assert {row["modality"] for row in rows} == {"CT", "MR", "US", "CR", "NM", "OP", "SM"}
    files = {row["file"].split("#")[0] for row in rows}
    suffixes = Counter(f.rsplit(".", 1)[-1] for f in files)
    assert {"dcm", "png", "jpg", "nii", "gz"} <= set(suffixes)
    frames = Counter(row["file"].split("#")[0] for row in rows if "#" in row["file"])
    assert frames["volumes/example4d.nii.gz"] == 24 and frames["echo/cine-a.dcm"] == 40
    series = Counter(row["series"] for row in rows)
    assert len(series) == 28 and max(series.values()) >= 40 and min(series.values()) >= 3
    per_center = {
        c.name: {row["modality"] for row in truth(c).values()}
        for c in center_dirs(packaged_federation)
    }
    assert sum(len(m) >= 2 for m in per_center.values()) >= 5  # most centers mix modalities


def test_defects_copies_and_the_corrupt_file_come_at_the_stated_rates(
    packaged_federation: Path,
) -> None:
    rows = [row for c in center_dirs(packaged_federation) for row in truth(c).values()]
    kinds = Counter(row["disruptive"] for row in rows if row["disruptive"])
    assert set(kinds) == set(DEFECTS)
    assert 0.06 <= sum(kinds.values()) / len(rows) <= 0.09
    assert all(row["modality"] == "US" for row in rows if row["disruptive"] == "no-contact")
    assert 0.02 <= sum(bool(row["duplicate_of"]) for row in rows) / len(rows) <= 0.04
    assert [row["file"] for row in rows if row["corrupt"] == "1"] == ["ct/head-1/view_018.dcm"]
    for center in center_dirs(packaged_federation):  # every center: about 7% (rounded)
        center_rows = truth(center).values()
        share = sum(bool(r["disruptive"]) for r in center_rows) / len(center_rows)
        assert 0.04 <= share <= 0.11, center.name


def test_a_defect_changes_what_a_reader_sees(packaged_federation: Path) -> None:
    rows = truth(packaged_federation / "center-02")
    blank = next(f for f, row in rows.items() if row["disruptive"] == "blank")
    path, _, frame = blank.partition("#")
    pixels = decode_file(packaged_federation / "center-02" / path, frame=int(frame or 0)).pixels
    assert pixels.std() == 0.0


def test_cli_builds_the_same_bytes_and_refuses_synthetic_only_flags(
    packaged_federation: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fed"
    assert main(["data", "--source", "packages", "--out", str(out)]) == 0
    assert "real-image federation" in capsys.readouterr().out
    assert digest(out) == digest(packaged_federation)
    assert [c.name for c in center_dirs(out)] == [name for name, _ in CENTERS]
    code = main(["data", "--source", "packages", "--out", str(tmp_path / "x"), "--scale", "full"])
    assert code == 2
    assert "--scale only applies to --source synthetic" in capsys.readouterr().err
