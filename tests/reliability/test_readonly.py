"""Raw data is never written: a full curation over a read-only copy of a federation.

Two guards, because a test running as root writes through `chmod a-w`: the data is made
read-only (what a non-root CI run enforces), and a Python audit hook records every attempt to
open for writing, create, rename, delete or re-time anything under the data folder. After a
federated round, `feddel-center check` and `feddel-center embed`, every file must have its old
bytes, mode and mtime, and no entry may have appeared or gone.
"""

import hashlib
import os
import stat
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from feddel.client.cli import main as center_cli
from feddel.common.config import CurationConfig
from feddel.simulations.federated import run_federated
from feddel.simulations.synth import generate_federation

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
CHANGING_EVENTS = {
    "os.rename": 2, "os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1,
    "os.utime": 1, "os.truncate": 1, "os.link": 2, "os.symlink": 2, "shutil.copyfile": 2,
    "shutil.rmtree": 1, "os.setxattr": 1, "os.removexattr": 1,
}  # fmt: skip  # event -> how many leading path arguments it has


class _Watch:
    """Audit hooks cannot be removed: one hook per process, watching a folder only while set."""

    root: str | None = None
    attempts: ClassVar[list[str]] = []
    installed = False


def _inside(path: object) -> bool:
    if isinstance(path, int) or path is None or _Watch.root is None:
        return False
    return os.path.abspath(os.fsdecode(path)).startswith(_Watch.root)


def _audit(event: str, args: tuple) -> None:
    if _Watch.root is None:
        return
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else flags & WRITE_FLAGS
        if writing and _inside(path):
            _Watch.attempts.append(f"open({path!r}, {mode!r}, {flags})")
    elif event in CHANGING_EVENTS and any(map(_inside, args[: CHANGING_EVENTS[event]])):
        _Watch.attempts.append(f"{event}{args!r}")


@pytest.fixture
def watch():
    """watch(root) starts recording changes under root; they are returned at the end."""
    if not _Watch.installed:
        sys.addaudithook(_audit)
        _Watch.installed = True
    _Watch.attempts.clear()

    def start(root: Path) -> list[str]:
        _Watch.root = str(root) + os.sep
        return _Watch.attempts

    yield start
    _Watch.root = None


def _snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every entry under root: (sha256 of a file's bytes or "dir", mode, mtime in ns)."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        snapshot[path.relative_to(root).as_posix()] = (digest, info.st_mode, info.st_mtime_ns)
    return snapshot


def _set_writable(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        write = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        path.chmod((mode | stat.S_IWUSR) if writable else (mode & ~write))


def test_full_curation_on_read_only_data_changes_nothing_in_it(tmp_path, watch):
    data = tmp_path / "data"
    generate_federation(data, centers=3, scale="small", seed=4, size=32)
    _set_writable(data, False)
    before = _snapshot(data)
    attempts = watch(data)
    try:
        summary = run_federated(
            data, tmp_path / "run", CurationConfig(image_size=32, k=4, budget=0.1),
            engine="inprocess", state_root=tmp_path / "state",
        )  # fmt: skip
        center = str(data / "center-00")
        assert center_cli(["check", "--data", center, "--json", str(tmp_path / "c.json")]) == 0
        embed = ["embed", "--data", center, "--state", str(tmp_path / "s2"), "--image-size", "32"]
        assert center_cli(embed) == 0
        after, changes = _snapshot(data), list(attempts)
    finally:
        _set_writable(data, True)
    assert summary.selected > 0 and summary.failed_centers == []
    assert (tmp_path / "run" / "report.html").is_file()  # the reports ran too (they read data)
    assert changes == []
    assert after == before


def test_watch_records_every_kind_of_change_under_its_folder(tmp_path, watch):
    """The guard above can fail: each way of changing a folder is recorded, reads are not."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.png").write_bytes(b"x")
    (tmp_path / "elsewhere.txt").write_text("outside the watched folder")
    attempts = watch(tmp_path / "data")
    (tmp_path / "data" / "a.png").read_bytes()
    (tmp_path / "data" / "b.txt").write_text("new")
    with open(tmp_path / "data" / "a.png", "r+b"):
        pass
    os.replace(tmp_path / "data" / "b.txt", tmp_path / "data" / "c.txt")
    os.utime(tmp_path / "data" / "a.png")
    (tmp_path / "data" / "c.txt").unlink()
    (tmp_path / "elsewhere.txt").write_text("still outside")
    kinds = [attempt.split("(")[0] for attempt in attempts]
    assert kinds == ["open", "open", "os.rename", "os.utime", "os.remove"]
