import tomllib
from pathlib import Path

import pytest

from feddel.common.config import CurationConfig, parse_overrides
from feddel.common.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_config_defaults_match_pyproject_app_config():
    app_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"
    ]
    assert app_config == CurationConfig().to_run_config()


def test_config_from_run_config_coerces_strings_by_field_type():
    cfg = CurationConfig.from_run_config({"budget": "0.2", "k": "12", "keep": "easy"})
    assert (cfg.budget, cfg.k, cfg.keep) == (0.2, 12, "easy")


def test_config_rejects_unknown_key_naming_it():
    with pytest.raises(ConfigError, match=r"unknown config key.*budgett"):
        CurationConfig.from_run_config({"budgett": 0.1})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("budget", 0.0, "budget=0.0 must be in"),
        ("budget", "abc", "budget='abc' must be a finite number"),
        ("method", "best", "method='best' must be one of"),
        ("k", 2.5, "k=2.5 must be an integer"),
        ("tau", "nan", "tau='nan' must be a finite number"),
        ("tau", -1.0, "tau=-1.0 must be >= 0"),
    ],
)
def test_config_rejects_bad_values_naming_key_and_rule(key, value, message):
    with pytest.raises(ConfigError, match=message):
        CurationConfig.from_run_config({key: value})


def test_parse_overrides_requires_key_value_pairs():
    assert parse_overrides(["budget=0.1", " k = 4 "]) == {"budget": "0.1", "k": "4"}
    with pytest.raises(ConfigError, match="not key=value"):
        parse_overrides(["budget"])
