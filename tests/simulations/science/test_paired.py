"""Paired differences over seeds: hand-computed intervals, pairing by seed, the standard set."""

import math

import pytest

from feddel.simulations.results import write_results
from feddel.simulations.science.paired import paired, paired_markdown, standard_comparisons


def _rows(values: dict[tuple[str, float], list[float]]) -> list[dict]:
    return [
        {"method": m, "budget": b, "seed": s, "mIoU": v, "R": b, "DEL": v, "NormDEL": v}
        for (m, b), per_seed in values.items()
        for s, v in enumerate(per_seed)
    ]


def test_paired_t_interval_matches_the_hand_computation():
    rows = _rows({("feddel", 0.05): [0.61, 0.62, 0.63], ("random", 0.05): [0.60, 0.60, 0.60]})
    p = paired(rows, ("feddel", 0.05), ("random", 0.05))
    assert p.differences == pytest.approx((0.01, 0.02, 0.03))
    # mean 0.02, sd 0.01, t(0.975, 2) = 4.302653: half-width 0.024841
    low, high = p.interval
    assert p.mean == pytest.approx(0.02)
    assert (low, high) == pytest.approx((0.02 - 0.024841, 0.02 + 0.024841), abs=1e-6)
    assert not p.excludes_zero
    assert p.label == "feddel 5% - random 5%"


def test_pairs_only_the_seeds_that_hold_both_cells():
    rows = _rows({("oracle", 0.05): [0.7, 0.8, 0.9], ("disruptive-only", 0.05): [0.6, 0.7]})
    p = paired(rows, ("oracle", 0.05), ("disruptive-only", 0.05))
    assert p.seeds == (0, 1) and p.differences == pytest.approx((0.1, 0.1))
    assert p.excludes_zero  # the same difference twice: a zero-width interval above 0
    assert paired(rows, ("oracle", 0.2), ("disruptive-only", 0.05)) is None
    one = paired(rows[:1] + rows[3:4], ("oracle", 0.05), ("disruptive-only", 0.05))
    assert one.n == 1 and all(math.isnan(x) for x in one.interval)


def test_standard_comparisons_put_the_primary_and_the_controls_first():
    rows = _rows(
        {
            ("scratch", 0.0): [0.60, 0.61],
            ("random", 0.05): [0.62, 0.62],
            ("feddel", 0.05): [0.63, 0.64],
            ("oracle", 0.05): [0.65, 0.66],
            ("disruptive-only", 0.05): [0.61, 0.61],
            ("full", 1.0): [0.62, 0.63],
        }
    )
    labels = [p.label for p in standard_comparisons(rows)]
    assert labels[:2] == ["feddel 5% - random 5%", "oracle 5% - disruptive-only 5%"]
    assert "feddel 5% - full" in labels and "full - scratch" in labels
    assert "random 5% - random 5%" not in labels and len(labels) == len(set(labels))
    assert "| feddel 5% - random 5% | 2 | +0.0150 |" in paired_markdown(standard_comparisons(rows))


def test_results_gain_the_paired_table_and_plot_with_two_seeds(tmp_path):
    one_seed = _rows({("random", 0.05): [0.62], ("feddel", 0.05): [0.63]})
    write_results(one_seed, tmp_path / "one", "t")
    assert "Paired" not in (tmp_path / "one" / "results.md").read_text()
    assert not (tmp_path / "one" / "paired.png").exists()
    two = _rows({("random", 0.05): [0.62, 0.61], ("feddel", 0.05): [0.63, 0.63]})
    write_results(two, tmp_path / "two", "t")
    text = (tmp_path / "two" / "results.md").read_text()
    assert "| feddel 5% - random 5% | 2 | +0.0150 |" in text
    assert (tmp_path / "two" / "paired.png").stat().st_size > 1000
