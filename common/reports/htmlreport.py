"""Small self-contained HTML reports: page skeleton, tables, escaping, atomic PNG output.

Shared by the coordinator's report (aggregates only) and each center's private report, so both
look alike and escape alike. Every string that reaches a page goes through `esc` (center names
and failure reasons come from remote peers and are untrusted). Pages carry their CSS inline and
reference images as relative PNG paths, so a report folder can be copied or zipped as a whole.
Figures use `matplotlib.figure.Figure` directly (Agg renderer, no pyplot global state).
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from PIL import Image

from feddel.common.io import atomic_write_bytes, atomic_write_text

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:72em;
color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;
border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:.6em}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em .9em;min-width:8em}
.card b{display:block;font-size:1.3em}.card span{color:#666;font-size:.85em}
.alert{background:#fdecea;border:2px solid #d93025;border-radius:6px;padding:.6em 1em}
.note{background:#eef5ff;border:1px solid #8ab4f8;border-radius:6px;padding:.6em 1em}
img{max-width:100%;border:1px solid #eee;margin:.3em 0}
.muted{color:#777}
"""


def esc(value: Any) -> str:
    """HTML-escape any value's text (quotes included), for both content and attributes."""
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """Readable text for a table cell: ints with thousands separators, floats to 4 significant
    digits, containers as compact JSON; never raises on odd input. Not yet escaped."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def pct(value: Any) -> str:
    """A fraction in [0, 1] as a percentage with one decimal ("5.0%"); other input as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{100.0 * value:.1f}%"
    return fmt(value)


def human_bytes(value: Any) -> str:
    """Byte counts with binary units ("1.5 MiB")."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return fmt(value)
    size = float(value)
    power = 0
    while power < len(_UNITS) - 1 and abs(size) >= 1024 ** (power + 1):
        power += 1
    if power == 0:
        return f"{int(size)} B"
    return f"{size / 1024**power:.1f} {_UNITS[power]}"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table; cells are formatted with `fmt` unless already str, then escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(_cell(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else fmt(value)


def cards(items: Iterable[tuple[str, str]]) -> str:
    """Headline numbers as (label, value) cards."""
    inner = "".join(
        f'<div class="card"><b>{esc(value)}</b><span>{esc(label)}</span></div>'
        for label, value in items
    )
    return f'<div class="cards">{inner}</div>'


def section(title: str, body_html: str) -> str:
    """A titled section; `body_html` must already be safe HTML (built with the helpers here)."""
    return f"<section><h2>{esc(title)}</h2>{body_html}</section>"


def image(src: str, alt: str) -> str:
    return f'<img src="{esc(src)}" alt="{esc(alt)}">'


def page(title: str, sections: Iterable[str], subtitle: str = "") -> str:
    """A complete HTML document with inline CSS; `sections` are safe HTML fragments."""
    sub = f'<p class="muted">{esc(subtitle)}</p>' if subtitle else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>"
        f"<body><h1>{esc(title)}</h1>{sub}{''.join(sections)}</body></html>\n"
    )


def write_page(path: Path, document: str) -> Path:
    return atomic_write_text(path, document)


def new_figure(width: float = 6.0, height: float = 3.2) -> Figure:
    """A small figure with constrained layout (inches; ~600x320 px at the saved 100 dpi)."""
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(figure: Figure, path: Path) -> Path:
    """Render a figure to PNG in memory, then write it atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return atomic_write_bytes(path, buffer.getvalue())


def save_image(picture: Image.Image, path: Path) -> Path:
    """Write a PIL image as PNG atomically, fast zlib: reports are written in every round."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)  # 4x faster than optimize=True, +8% bytes
    return atomic_write_bytes(path, buffer.getvalue())
