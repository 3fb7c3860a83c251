import math

import pytest

from feddel.common.errors import ConfigError, DataError
from feddel.common.reports.metrics import (
    curation_quality,
    del_score,
    norm_del,
)


@pytest.mark.parametrize(
    ("miou", "retention", "paper"),
    [
        (0.7545, 0.05, 0.6721),  # Kvasir-SEG, 5%
        (0.7602, 1.00, 0.5695),  # Kvasir-SEG, 100%
        (0.7524, 0.05, 0.6716),  # CVC-ClinicDB, 5%
        (0.7495, 1.00, 0.5685),  # CVC-ClinicDB, 100%
    ],
)
def test_norm_del_reproduces_paper_table(miou, retention, paper):
    # alpha = 1 reproduces the paper's 4 printed digits to 1e-4 (tighter than its 0.01 claim)
    assert abs(norm_del(miou, retention) - paper) <= 1e-4


def test_del_score_hand_values_and_range():
    assert del_score(0.5, 0.0) == 0.5
    assert del_score(0.8, 1.0, alpha=2.0) == pytest.approx(0.8 * math.exp(-2.0))
    assert norm_del(0.0, 1.0) == 0.5
    assert norm_del(1.0, 0.0) == pytest.approx(1 / (1 + math.exp(-1)))  # 0.731, the maximum


def test_del_score_rejects_percentages():
    with pytest.raises(ConfigError, match=r"miou=75\.45 must be a fraction"):
        del_score(75.45, 0.05)
    with pytest.raises(ConfigError, match=r"retention=-0\.1 must be a fraction"):
        norm_del(0.7, -0.1)


def _row(file, video, mode, disruptive="", duplicate_of="", corrupt="0"):
    return {
        "file": file,
        "video": video,
        "mode": mode,
        "disruptive": disruptive,
        "duplicate_of": duplicate_of,
        "corrupt": corrupt,
    }


TRUTH = {
    "A": [
        _row("a1", "v1", "polyp"),
        _row("a2", "v1", "polyp", disruptive="blur"),
        _row("a3", "v2", "normal"),
        _row("a4", "v2", "normal", duplicate_of="a3"),
        _row("a5", "v3", "ulcer", corrupt="1"),
        _row("a6", "v1", "polyp", duplicate_of="a2"),  # a copy of a blurred frame
        _row("a7", "v4", "bleeding"),
    ],
    "B": [_row("b1", "v9", "polyp"), _row("b2", "v9", "polyp", "dark"), _row("b3", "v9", "normal")],
}


def test_curation_quality_hand_built_truth():
    q = curation_quality({"A": ["a1", "a3", "a4", "a5", "a6"], "B": ["b1", "b2"]}, TRUTH)
    assert q["selected"] == 7
    assert q["disruptive_rate"] == pytest.approx(2 / 7)  # a6 (inherits blur), b2
    assert q["pool_disruptive_rate"] == pytest.approx(3 / 10)  # a2, a6, b2
    assert q["distinct_videos_per_selected"] == pytest.approx(4 / 7)  # A/v1, A/v2, A/v3, B/v9
    assert q["mode_coverage"] == pytest.approx(3 / 4)  # bleeding is never selected
    assert q["modes_selected"] == {"normal": 2, "polyp": 4, "ulcer": 1}
    expected = -sum(p * math.log2(p) for p in (2 / 7, 4 / 7, 1 / 7))
    assert q["mode_entropy"] == pytest.approx(expected)
    pool = -sum(p * math.log2(p) for p in (5 / 10, 3 / 10, 1 / 10, 1 / 10))
    assert q["pool_mode_entropy"] == pytest.approx(pool)
    assert q["corrupt_selected"] == 1
    assert q["duplicate_files_selected"] == 1  # a4 repeats a3; a6's original is not selected


def test_curation_quality_of_empty_selection_and_unknown_files():
    q = curation_quality({}, TRUTH)
    assert q["selected"] == 0 and q["modes_selected"] == {}
    assert q["disruptive_rate"] == q["mode_coverage"] == q["mode_entropy"] == 0.0
    assert q["pool_disruptive_rate"] == pytest.approx(0.3)
    with pytest.raises(DataError, match=r"1 selected file.*center 'B'.*'zz'"):
        curation_quality({"B": ["b1", "zz"]}, TRUTH)
    with pytest.raises(DataError, match="lacks column"):
        curation_quality({}, {"C": [{"file": "c1"}]})
