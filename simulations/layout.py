"""How a simulated federation lies on disk: one folder per center, optional ground truth."""

from __future__ import annotations

import json
from pathlib import Path

from feddel.common.errors import DataError
from feddel.common.io import read_csv

TRUTH_FILE = "truth.csv"
FEDERATION_FILE = "federation.json"


def center_dirs(data_dir: str | Path) -> list[Path]:
    """The center folders of a federation, in a stable order (partition-id = index).

    Uses federation.json when present (written by `feddel-sim data`), else every immediate
    sub-folder that is not hidden.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(
            f"federation folder {root} does not exist or is not a folder; "
            "create one with `feddel-sim data --out DIR`"
        )
    manifest = root / FEDERATION_FILE
    if manifest.is_file():
        dirs = [root / name for name in listed_centers(manifest)]
    else:
        dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise DataError(f"center folder(s) listed in {manifest} are missing: {', '.join(missing)}")
    if not dirs:
        raise DataError(f"no center folders under {root}; each center needs its own sub-folder")
    return dirs


def listed_centers(manifest: Path) -> list[str]:
    """The center folder names a federation.json lists, or a DataError saying what is wrong
    with the file: a federation.json that another tool left in the folder is common."""
    fix = (
        f"fix {manifest} or move it away (without it every sub-folder of "
        f"{manifest.parent} is a center)"
    )
    try:
        content = json.loads(manifest.read_bytes())
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON; nesting too deep
        raise DataError(f"{manifest} is not valid JSON ({exc}); {fix}") from exc
    centers = content.get("centers") if isinstance(content, dict) else None
    if not isinstance(centers, list) or not all(
        isinstance(center, dict) and isinstance(center.get("name"), str) for center in centers
    ):
        raise DataError(
            f'{manifest} does not list centers as {{"centers": [{{"name": FOLDER}}, ...]}}'
            f" (the layout `feddel-sim data` writes); {fix}"
        )
    names = [center["name"] for center in centers]
    if not names:
        raise DataError(f"{manifest} lists no centers; {fix}")
    for name in names:
        if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise DataError(f"{manifest} names center {name!r}, not a folder name; {fix}")
        if names.count(name) > 1:
            raise DataError(f"{manifest} lists center {name!r} twice; {fix}")
    return names


def load_truth(center_dirs_: list[Path]) -> dict[str, list[dict[str, str]]] | None:
    """Ground truth rows per center name, or None when any center lacks truth.csv."""
    truth: dict[str, list[dict[str, str]]] = {}
    for directory in center_dirs_:
        path = directory / TRUTH_FILE
        if not path.is_file():
            return None
        truth[directory.name] = read_csv(path)
    return truth
