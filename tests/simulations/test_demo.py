"""`feddel-sim demo`: the controls and the primary comparison at 5%, with the science settings."""

import argparse

from feddel.simulations.cli import main as sim_main
from feddel.simulations.commands import demo as demo_cmd
from feddel.simulations.commands.compare import (
    add_pipeline_arguments,
    pipeline_flags,
    pipeline_settings,
)


def test_demo_runs_the_controls_and_feddel_against_random_with_fast_fedsgd(tmp_path, monkeypatch):
    seen = {}

    def pipeline(args, data, out, cells, keep_earlier=False):
        seen.update(args=args, cells=cells, keep=keep_earlier)
        return []

    monkeypatch.setattr(demo_cmd, "_ensure_demo_data", lambda data: None)
    monkeypatch.setattr(demo_cmd, "run_pipeline", pipeline)
    assert sim_main(["demo", "--out", str(tmp_path), "--parallel", "1"]) == 0
    names = {(cell.method, cell.budget, cell.seed) for cell in seen["cells"]}
    assert names == {
        (method, 0.05, seed)
        for method in ("oracle", "disruptive-only", "random", "feddel")
        for seed in (0, 1)
    }
    args = seen["args"]
    assert (args.fast, args.fedadam, args.local_steps, args.local_lr) == (True, True, 1, 1.0)
    assert (args.center_weighting, args.curation_encoder) == ("equal", "random-init")
    assert seen["keep"]  # the assembly after --parallel reads every shard's cells


def test_pipeline_flags_give_back_the_settings_they_were_made_from():
    """The GPU check runs the demo's cell through `compare` with these flags."""
    parser = argparse.ArgumentParser()
    add_pipeline_arguments(parser)  # compare's defaults, which the flags must override
    settings = pipeline_settings(parser.parse_args(pipeline_flags(demo_cmd.DEMO_SETTINGS)))
    assert settings == demo_cmd.DEMO_SETTINGS
