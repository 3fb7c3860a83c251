"""The coordinator's and a center's HTML reports, on hand-made summaries and center states."""

import html
import re
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from feddel.client.report import PRIVACY_NOTE, _spread, categorize, write_center_report
from feddel.client.state import CenterState
from feddel.common.curation.local import CenterScores
from feddel.common.data.manifest import write_manifest
from feddel.common.data.scan import Sample
from feddel.common.errors import DataError
from feddel.server.report_html import write_coordinator_report

SCRIPT = "<script>alert('x')</script>"


def _summary():
    per_center = {
        "big-hospital": dict(files=5200, samples=5000, unreadable=3, duplicate_files=197,
                             disruptive=400, selected=250),
        "mid & co": dict(files=1000, samples=1000, unreadable=0, duplicate_files=0,
                         disruptive=50, selected=40),
        "small$1$": dict(files=210, samples=200, unreadable=10, duplicate_files=0,
                         disruptive=5, selected=10),
        "tiny": dict(files=40, samples=40, unreadable=0, duplicate_files=0, disruptive=1,
                     selected=1),
    }  # fmt: skip
    return {
        "method": "feddel", "budget": 0.05, "centers": 4, "total_samples": 6240, "selected": 301,
        "retention": 301 / 6240, "k": 4, "kmeans_rounds": 3, "inertia": 12.5,
        "inertia_history": [20.0, 14.0, 12.5], "tau": 0.31, "eta": 0.95,
        "bytes_up": {"inventory": 2_000_000, "seed": 4096, "lloyd": 30_000, "total": 2_034_096},
        "bytes_down": {"inventory": 500, "seed": 600, "lloyd": 9000, "total": 10_100},
        "phase_seconds": {"inventory": 3.5, "seed": 0.1, "lloyd": 0.4},
        "wall_s": 4.2,
        "failed_centers": [{"center": "rogue<b>", "phase": "seed", "reason": SCRIPT}],
        "per_center": per_center,
        "clusters": {"candidates": [900, 40, 3000, 1500], "quotas": [80, 40, 90, 91],
                     "selected": [80, 40, 90, 91]},
        "config": {"k": 4, "method": "feddel", "run-name": "demo"},
        "quality": {
            "selection": {"disruptive_rate": 0.0, "mode_coverage": 1.0, "modes_selected": [3, 2]},
            "random_baseline": {"disruptive_rate": 0.081, "mode_coverage": 0.75},
        },
    }  # fmt: skip


def test_write_coordinator_report_shows_centers_failures_and_plots(tmp_path):
    summary = _summary()
    path = write_coordinator_report(summary, tmp_path)
    text = path.read_text()
    assert path == tmp_path / "report.html"
    for name in ("inertia", "clusters", "centers", "bytes"):
        png = tmp_path / "plots" / f"{name}.png"
        assert f'src="plots/{name}.png"' in text
        with Image.open(png) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] >= 400
    for name in summary["per_center"]:
        assert html.escape(name) in text
    positions = [
        text.index(html.escape(n)) for n in ("big-hospital", "mid & co", "small$1$", "tiny")
    ]
    assert positions == sorted(positions)  # largest center first
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "rogue&lt;b&gt;" in text and "<td>seed</td>" in text
    assert text.index("Failed centers") < text.index("Centers</h2>")  # failures come first
    assert "<td>big-hospital</td><td>5,200</td><td>5,000</td>" in text
    assert "<td>250</td><td>5.0%</td>" in text  # 250 of 5000
    assert "<td>40</td><td>4.0%</td>" in text  # 40 of 1000
    assert "4.8%" in text  # overall retention 301 / 6240
    assert "1.9 MiB" in text  # 2,034,096 bytes up in total
    assert "<td>disruptive_rate</td><td>0</td><td>0.081</td>" in text
    assert "<td>modes_selected</td><td>[3, 2]</td><td></td>" in text


def test_write_coordinator_report_tolerates_a_minimal_summary(tmp_path):
    path = write_coordinator_report({"method": "random"}, tmp_path)
    text = path.read_text()
    assert "random" in text and "Failed centers" not in text
    assert not (tmp_path / "plots").exists()


def test_write_coordinator_report_rejects_a_non_object(tmp_path):
    with pytest.raises(DataError, match="must be a JSON object"):
        write_coordinator_report([1, 2], tmp_path)


def test_categorize_orders_selected_disruptive_outlier_duplicate():
    selected = np.array([1, 1, 0, 0, 0, 0, 0], dtype=bool)
    disruptive = np.array([0, 1, 1, 0, 1, 0, 0], dtype=bool)
    disruption = ["", "blur", "dark", "", "", "", ""]
    outlier = np.array([0, 0, 0, 1, 1, 0, 0], dtype=bool)
    duplicate = np.array([0, 0, 0, 0, 0, 1, 0], dtype=bool)
    labels = np.array([3, 0, 1, 2, 2, 1, 0])
    out = categorize(selected, disruptive, disruption, outlier, duplicate, labels)
    assert out.category == [
        "selected", "selected", "disruptive: dark", "outlier", "disruptive: unknown",
        "near-duplicate", "not chosen",
    ]  # fmt: skip
    assert out.label == ["c3", "blur", "dark", "c2", "disruptive", "c1", "c0"]


def test_spread_keeps_ends_and_is_evenly_spaced():
    assert _spread([5, 6, 7], 48) == [5, 6, 7]
    picked = _spread(list(range(100)), 48)
    assert len(picked) == 48 == len(set(picked))
    assert picked[0] == 0 and picked[-1] == 99
    assert max(np.diff(picked)) - min(np.diff(picked)) <= 1


N = 30
COLORS = [(8 * i, 255 - 8 * i, (37 * i) % 256) for i in range(N)]


def _center(tmp_path, monkeypatch, with_manifest=True):
    """30 images: 0-5 selected (0 also disruptive), 6-7 blur, 8-10 dark, 11-13 outlier,
    14-17 near-duplicate, 18-29 not chosen (file 20 is corrupt)."""
    data, state_dir = tmp_path / "data", tmp_path / "state"
    data.mkdir()
    samples = []
    for i in range(N):
        file = f"img_{i:02d}.png"
        if i == 20:
            (data / file).write_bytes(b"not an image")
        else:
            Image.new("RGB", (40, 30), COLORS[i]).save(data / file)
        samples.append(Sample(f"id{i:02d}", file, None, 40, 30, "PNG"))
    flag = lambda ix: np.isin(np.arange(N), ix)  # noqa: E731
    disruption = [""] * N
    disruption[0] = "blank"
    for i in (6, 7):
        disruption[i] = "blur"
    for i in (8, 9, 10):
        disruption[i] = "dark"
    pool = SimpleNamespace(name="center-a", root=data, samples=samples,
                           disruptive=flag([0, 6, 7, 8, 9, 10]), disruption=disruption)  # fmt: skip
    outlier, duplicate = flag([11, 12, 13]), flag([14, 15, 16, 17])
    labels = np.arange(N) % 4
    zeros = np.zeros(N)
    scores = CenterScores(labels, zeros, outlier, duplicate, zeros, zeros, ~(outlier | duplicate))
    monkeypatch.setattr(CenterState, "load_pool", lambda self, run: pool)
    monkeypatch.setattr(CenterState, "load_scores", lambda self, run: scores)
    if with_manifest:
        rows = [
            ("center-a", f"img_{i:02d}.png", f"id{i:02d}", int(labels[i]), 0.5) for i in range(6)
        ]
        write_manifest(CenterState(state_dir).manifest_path("r1", 0), rows)
    return data, state_dir


def test_write_center_report_counts_categories_and_writes_sheets(tmp_path, monkeypatch):
    data, state_dir = _center(tmp_path, monkeypatch)
    path = write_center_report(state_dir, data, "r1", 0)
    assert path == state_dir / "report.html"
    text = path.read_text()
    counts = dict(re.findall(r"<tr><td>([^<]+)</td><td>(\d+)</td>", text))
    assert counts == {
        "selected": "6", "not chosen": "12", "near-duplicate": "4", "outlier": "3",
        "disruptive: blur": "2", "disruptive: dark": "3",
    }  # fmt: skip
    assert PRIVACY_NOTE in text and "never sent to the coordinator" in text
    sheets = state_dir / "report" / "r1-0"
    expected = {  # (shown, of, width, height): 8 thumbnails of 64 px per row, 12 px labels
        "selected": (6, 6, 6 * 64, 76), "not-chosen": (11, 12, 8 * 64, 2 * 76),
        "near-duplicate": (4, 4, 4 * 64, 76), "outlier": (3, 3, 3 * 64, 76),
        "disruptive-blur": (2, 2, 2 * 64, 76), "disruptive-dark": (3, 3, 3 * 64, 76),
    }  # fmt: skip
    assert {p.stem for p in sheets.glob("*.png")} == set(expected)
    for stem, (shown, total, width, height) in expected.items():
        assert f'src="report/r1-0/{stem}.png"' in text
        assert f"{shown} of {total} shown" in text
        with Image.open(sheets / f"{stem}.png") as sheet:
            assert sheet.size == (width, height)
            if stem == "selected":
                assert sheet.convert("RGB").getpixel((32, 32)) == COLORS[0]
                assert sheet.convert("RGB").getpixel((5 * 64 + 32, 32)) == COLORS[5]


def test_write_center_report_needs_the_round_manifest(tmp_path, monkeypatch):
    data, state_dir = _center(tmp_path, monkeypatch, with_manifest=False)
    with pytest.raises(DataError, match="no manifest for run 'r1' round 0"):
        write_center_report(state_dir, data, "r1", 0)


def test_write_center_report_rejects_a_manifest_from_another_pool(tmp_path, monkeypatch):
    data, state_dir = _center(tmp_path, monkeypatch)
    write_manifest(CenterState(state_dir).manifest_path("r1", 0), [("c", "x.png", "zzz", 0, 0.1)])
    with pytest.raises(DataError, match="1 sample"):
        write_center_report(state_dir, data, "r1", 0)
