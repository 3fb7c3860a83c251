"""What an error reply may tell the coordinator: one line, no path or file name of the center.

A center's error messages are written for the person at the center: they name its folders and
files. Those names (patient ids in file names, the layout of the hospital's storage) must not
leave the site, so the reply carries a redacted copy and the center's own log keeps the detail:
- a `Refused` message (the center declines by its own policy) is written to be sent: kept;
- any other FedDELError keeps its text, with the center's folders, anything under them,
  every other absolute path and every name of a data file replaced by a placeholder;
- any other exception is a bug or a fault of the machine, and its text may hold anything:
  only "internal error in phase P; see the center's log" is sent.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from feddel.common.errors import FedDELError, Refused

MAX_REASON = 400  # characters: a reason is one line of a report, not a dump
# One path or name: up to whitespace, quotes, brackets or the separators messages put around it.
_TOKEN = r"[^\s'\"`,;()\[\]{}<>]+"
_ABSOLUTE = re.compile(rf"(?<![\w.~-])(?:[A-Za-z]:\\|~?/){_TOKEN}")
_DATA_FILE = re.compile(
    rf"{_TOKEN}?\.(?:png|jpe?g|bmp|tiff?|dcm|dicom|nii|gz|ima|img|npy|npz)\b",
    re.IGNORECASE,
)

_NAME_LIKE = re.compile(r"[\d/\\._]")  # what sets a file name apart from a word


def public_reason(exc: BaseException, phase: str, folders: dict[str, Path]) -> str:
    """The one-line reason a center sends for `exc` in `phase`. `folders` maps a placeholder
    ("data folder", "state folder") to the folder it stands for."""
    if isinstance(exc, Refused):
        return _one_line(str(exc))
    if not isinstance(exc, FedDELError):
        return f"internal error in phase {phase}; see the center's log"
    return _one_line(redact(str(exc), folders))


def redact(text: str, folders: dict[str, Path]) -> str:
    """`text` with the folders, paths and data-file names of a center replaced (see above)."""
    for label, folder in folders.items():
        spellings = "|".join(re.escape(name) for name in _spellings(folder))
        pattern = re.compile(rf"(?<![\w.~-])(?:{spellings})(?![\w-]|\.\w)([/\\]{_TOKEN})?")
        text = pattern.sub(lambda m, label=label: _placeholder(m.group(1), label), text)
    text = _ABSOLUTE.sub(lambda m: "<path>" + _tail(m.group(0)), text)
    data = folders.get("data folder")
    if data is not None:
        text = re.sub(_TOKEN, lambda m: _entry_of(m.group(0), data), text)
    return _DATA_FILE.sub("<file>", text)


def _spellings(folder: Path) -> list[str]:
    """The ways a message may write `folder`, longest first (so no prefix eats a longer one)."""
    names = {str(folder), str(folder.absolute())}
    with contextlib.suppress(OSError):
        names.add(str(folder.resolve()))
    return sorted((name for name in names if name not in ("", ".", "/")), key=len, reverse=True)


def _placeholder(inside: str | None, label: str) -> str:
    if not (inside or "").strip("/\\:."):
        return f"<{label}>" + _tail(inside or "")
    return f"<a file in the {label}>" + _tail(inside or "")


def _tail(path: str) -> str:
    """The punctuation a path ends with in a sentence ("cannot read x.png: ..."): kept."""
    return path[len(path.rstrip(":.")) :]


def _entry_of(token: str, data: Path) -> str:
    """A token that names something inside the data folder (a relative path, or a file name
    without an image extension, such as a DICOM `IM0001`) becomes a placeholder. Plain words
    are left alone: a message saying "no images found" must not lose its word to a folder
    called `images`."""
    bare = token[: len(token) - len(_tail(token))]
    if bare in ("", ".", "..") or not _NAME_LIKE.search(bare) or len(bare) > 255:
        return token
    try:
        inside = (data / bare).exists() or (data / bare).is_symlink()
    except (OSError, ValueError):  # a name the file system refuses cannot be one of its files
        return token
    return "<file>" + _tail(token) if inside else token


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_REASON else line[: MAX_REASON - 3] + "..."
