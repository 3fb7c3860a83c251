"""Symlinks in a center's folder: inside ones are read, outside ones are skipped unopened.

A link to a file of the machine (an image elsewhere, /etc/hostname) would make a center embed,
select and train on what is not its data; a link inside the folder (an export tool's alias) is
an ordinary duplicate. Every outside link is counted, none is opened, nothing is changed.
"""

import hashlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from feddel.client.cli import main as center_cli
from feddel.common.data.scan import scan_center
from feddel.common.errors import DataError


class _Opens:
    """Audit hooks cannot be removed: one per process, recording only while `paths` is set."""

    paths: list[str] | None = None
    installed = False


def _audit(event: str, args: tuple) -> None:
    if _Opens.paths is not None and event == "open" and isinstance(args[0], str | bytes | Path):
        _Opens.paths.append(os.fsdecode(args[0]))


@contextmanager
def _recording_opens() -> Iterator[list[str]]:
    """The paths opened inside the `with` block."""
    if not _Opens.installed:
        sys.addaudithook(_audit)
        _Opens.installed = True
    _Opens.paths = []
    try:
        yield _Opens.paths
    finally:
        _Opens.paths = None


def _png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def center(tmp_path: Path) -> Path:
    """Two images, an inside link, four outside links (image, folder, chain, mask), a loop."""
    root = tmp_path / "center"
    _png(root / "images" / "a.png", 0)
    _png(root / "images" / "b.png", 1)
    elsewhere = _png(tmp_path / "elsewhere" / "private.png", 2)
    _png(tmp_path / "elsewhere" / "masks" / "a.png", 3)
    (root / "images" / "alias.png").symlink_to("a.png")  # inside: read, a copy of a.png
    (root / "images" / "stolen.png").symlink_to(elsewhere)  # outside, absolute
    (root / "images" / "relative.png").symlink_to("../../elsewhere/private.png")
    (root / "hop.png").symlink_to(root / "images" / "stolen.png")  # inside link to outside one
    (root / "hostname.dcm").symlink_to("/etc/hostname")  # a system file, DICOM by name
    (root / "masks").symlink_to(tmp_path / "elsewhere" / "masks", target_is_directory=True)
    (root / "loop.png").symlink_to("loop.png")
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_scan_skips_and_counts_links_leading_outside_without_opening_them(center):
    before = _snapshot(center.parent / "elsewhere")
    with _recording_opens() as opened:
        inventory = scan_center(center, workers=1)
    touched = [path for path in opened if "elsewhere" in path or path.startswith("/etc/")]
    assert [s.file for s in inventory.samples] == ["images/a.png", "images/b.png"]
    assert list(inventory.duplicates.values()) == [["images/a.png", "images/alias.png"]]
    assert inventory.outside_links == 4  # stolen, relative, hop, hostname
    assert inventory.ignored == 1  # the loop
    assert all(s.mask is None for s in inventory.samples)  # the linked masks/ is outside
    assert any(path.endswith("images/a.png") for path in opened)  # the hook does see opens
    assert touched == []
    assert _snapshot(center.parent / "elsewhere") == before


def test_center_check_reports_the_skipped_links(center, tmp_path, capsys):
    out = tmp_path / "check.json"
    assert center_cli(["check", "--data", str(center), "--json", str(out)]) == 0
    assert '"links_outside": 4' in out.read_text()
    assert "links leading outside (skipped)" in capsys.readouterr().out


def test_a_folder_of_outside_links_only_is_refused_saying_so(tmp_path):
    root = tmp_path / "center"
    root.mkdir()
    (root / "x.png").symlink_to(_png(tmp_path / "other" / "x.png", 0))
    with pytest.raises(DataError, match="1 links leading outside the folder skipped"):
        scan_center(root)


def test_a_center_reached_through_a_linked_path_still_reads_its_own_files(tmp_path, center):
    alias = tmp_path / "alias-of-center"
    alias.symlink_to(center, target_is_directory=True)
    inventory = scan_center(alias, workers=1)
    assert [s.file for s in inventory.samples] == ["images/a.png", "images/b.png"]
    assert inventory.outside_links == 4
