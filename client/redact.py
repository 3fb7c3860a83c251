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
_TOKEN_RE = re.compile(_TOKEN)
_DRIVE = re.compile(r"[A-Za-z]:\\")
_ABSOLUTE = re.compile(rf"(?<![\w.~-])(?:{_DRIVE.pattern}|~?/){_TOKEN}")
_DATA_FILE = re.compile(
    rf"{_TOKEN}?\.(?:png|jpe?g|bmp|tiff?|dcm|dicom|nii|gz|ima|img|npy|npz)\b",
    re.IGNORECASE,
)

_NAME_LIKE = re.compile(r"[\d/\\._]")  # what sets a file name apart from a word
_HARD_STOP = re.compile(r"[:;'\"`\n]")  # a name in a message never runs past these
_GAP = re.compile(r"[ ,]+")  # what may sit between two words of one file or folder name


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
        pattern = re.compile(rf"(?<![\w.~-])(?:{spellings})(?![\w-]|\.\w)")
        text = _replace_paths(text, pattern, lambda inside, f=folder: f / inside, label)
    text = _replace_paths(text, _ABSOLUTE, Path, None)
    data = folders.get("data folder")
    if data is not None:
        text = _replace_entries(text, data)
    return _DATA_FILE.sub("<file>", text)


def _replace_paths(text: str, pattern: re.Pattern, locate, label: str | None) -> str:
    """Each match of `pattern` (a folder, or an absolute path when label is None) with the
    path that continues it replaced by a placeholder."""
    out, done = [], 0
    for match in pattern.finditer(text):
        if match.start() < done:
            continue
        if label is None:
            end = _name_end(text, match.start(), locate, fallback=True)
            out += [text[done : match.start()], "<path>" + _tail(text[match.start() : end])]
        elif re.match(r"[/\\]\S", text[match.end() :]):
            end = _name_end(text, match.end() + 1, locate, fallback=True)
            out += [text[done : match.start()], _placeholder(text[match.end() : end], label)]
        else:
            end = match.end()
            out += [text[done : match.start()], f"<{label}>"]
        done = end
    return "".join(out) + text[done:]


def _replace_entries(text: str, data: Path) -> str:
    """Names of entries inside the data folder (a relative path, or a file name without an
    image extension, such as a DICOM `IM0001`) replaced by a placeholder. Plain words are left
    alone: a message saying "no images found" must not lose its word to a folder called
    `images`."""
    out, done = [], 0
    for token in _TOKEN_RE.finditer(text):
        if token.start() < done:
            continue
        end = _name_end(text, token.start(), lambda name: data / name, fallback=False)
        if end > token.start():
            out += [text[done : token.start()], "<file>" + _tail(text[token.start() : end])]
            done = end
    return "".join(out) + text[done:]


def _name_end(text: str, start: int, locate, fallback: bool) -> int:
    """Where the name that starts at text[start] ends: after the longest run of tokens, joined
    by the spaces or commas between them, that names an existing entry (`locate(run)`), so
    that `John Smith/IM0001` goes whole. When none exists: the next colon, semicolon, quote or
    line end with `fallback` (a path half redacted would leak its other half), else `start`."""
    drive = 2 if _DRIVE.match(text, start) else 0  # the colon of C:\ does not end a name
    stop = _HARD_STOP.search(text, start + drive)
    limit = stop.start() if stop else len(text)
    longest, position = start, start
    for token in _TOKEN_RE.finditer(text, start, limit):
        if token.start() != position:
            break
        name = text[start : token.end()]
        if _names_entry(name[: len(name) - len(_tail(name))], locate):
            longest = token.end()
        gap = _GAP.match(text, token.end(), limit)
        if gap is None:
            break
        position = gap.end()
    if longest == start and fallback:
        return len(text[:limit].rstrip())
    return longest


def _names_entry(name: str, locate) -> bool:
    if name in ("", ".", "..") or not _NAME_LIKE.search(name) or len(name) > 4096:
        return False
    try:
        path = locate(name)
        return path.exists() or path.is_symlink()
    except (OSError, ValueError):  # a name the file system refuses cannot be one of its files
        return False


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


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_REASON else line[: MAX_REASON - 3] + "..."
