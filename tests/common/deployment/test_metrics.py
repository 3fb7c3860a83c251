"""Prometheus text-file output (common/deployment/metrics.py)."""

import math

import pytest

from feddel.common.deployment.metrics import Gauge, render, write_prometheus
from feddel.common.errors import ConfigError


def test_render_writes_help_type_and_one_line_per_labelled_value():
    text = render(
        [
            Gauge("feddel_center_online", "1 when online").add(1, center="a").add(0, center='b"x'),
            Gauge("feddel_superlink_up", "answers /health").add(0.5),
        ]
    )
    assert text == (
        "# HELP feddel_center_online 1 when online\n"
        "# TYPE feddel_center_online gauge\n"
        'feddel_center_online{center="a"} 1\n'
        'feddel_center_online{center="b\\"x"} 0\n'
        "# HELP feddel_superlink_up answers /health\n"
        "# TYPE feddel_superlink_up gauge\n"
        "feddel_superlink_up 0.5\n"
    )


def test_special_values_and_bad_names():
    assert render([Gauge("x", "h").add(math.nan).add(math.inf)]).splitlines()[2:] == [
        "x NaN", "x +Inf",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="not a Prometheus name"):
        render([Gauge("bad-name", "h")])
    with pytest.raises(ConfigError, match="not a Prometheus label"):
        render([Gauge("x", "h").add(1, **{"0bad": "v"})])


def test_write_prometheus_replaces_the_file_whole(tmp_path):
    path = write_prometheus(tmp_path / "feddel.prom", [Gauge("x", "h").add(1)])
    write_prometheus(path, [Gauge("y", "h").add(2)])
    assert path.read_text().endswith("y 2\n") and "x 1" not in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["feddel.prom"]
