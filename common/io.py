"""Atomic file output: a reader (or a crash) sees the old file or the new one, never half."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from feddel.common.errors import DataError


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> Path:
    """Write `data` to a temp file in the same folder, fsync it, then rename over `path`.

    `mode` is applied before the rename (mkstemp creates 0600); pass 0o600 for secrets.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """UTF-8; a file name that was not valid UTF-8 on disk (Python holds its bytes as
    surrogates) is written back as those bytes, and read_csv restores it, so a manifest names
    the file that exists instead of failing on it."""
    return atomic_write_bytes(path, text.encode("utf-8", errors="surrogateescape"))


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Pretty, key-sorted JSON written atomically (numpy scalars are converted)."""
    return atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n"
    )


def append_json_line(
    path: str | os.PathLike[str], record: Mapping[str, Any], durable: bool = False
) -> None:
    """Append one JSON line to a log (events, audit). A line cut short by a crash (power loss,
    full disk) is closed first, so it costs that line only, never the next. `durable` fsyncs
    the line before returning, for a log that must hold what happens after it is written."""
    line = json.dumps(record, sort_keys=True, default=_jsonable)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a+b") as handle:
        end = handle.seek(0, os.SEEK_END)
        if end:
            handle.seek(end - 1)
            if handle.read(1) != b"\n":
                line = "\n" + line
        handle.write((line + "\n").encode("utf-8"))
        if durable:
            handle.flush()
            os.fsync(handle.fileno())


def read_json_lines(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[int]]:
    """Every readable line of a JSON-lines log, oldest first, and the numbers of the damaged
    lines (skipped: a crash can cut one line short)."""
    target = Path(path)
    if not target.is_file():
        return [], []
    records, damaged = [], []
    for number, line in enumerate(target.read_text(errors="replace").splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if line.strip():
                damaged.append(number)
    return records, damaged


def write_npy(path: str | os.PathLike[str], array: Any) -> Path:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buffer.getvalue())


def write_csv(
    path: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def require_writable_folder(path: str | os.PathLike[str], setting: str) -> Path:
    """Fail now, in one line, when `path` cannot become a folder this process writes into.

    Commands call it on their output and state folders before any work: a folder found
    unwritable only when results are written loses the work (and, in a simulation, fails every
    center). Nothing is created: the nearest existing ancestor must be a folder that accepts a
    new file, probed with an unnamed temporary file, so that a run as root or a read-only mount
    answers truly where os.access would not. `setting` names what the user changes (`--out`).
    """
    target = Path(path).expanduser()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        problem = "is a file" if existing == target else f"lies under the file {existing}"
        raise DataError(f"{target} {problem}; give {setting} a folder you can write to")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        where = "" if existing == target else f" in {existing}"
        raise DataError(
            f"cannot write to {target} ({exc.strerror or exc}{where}); "
            f"give {setting} a folder you can write to"
        ) from exc
    return target


def require_writable_file(path: str | os.PathLike[str], setting: str) -> Path:
    """Fail now, in one line, when `path` cannot be written as a file: not a folder, and in a
    folder this process writes into (see require_writable_folder)."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise DataError(f"{target} is a folder; give {setting} a file name")
    require_writable_folder(target.parent, setting)
    return target


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        return list(csv.DictReader(handle))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    if hasattr(value, "tolist"):  # numpy array
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
