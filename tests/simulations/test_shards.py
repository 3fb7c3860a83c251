"""`--parallel N`: the command starts itself once per shard, applies --fresh once, assembles."""

import subprocess
import sys

import pytest

from feddel.common.errors import RunFailed
from feddel.simulations.cli import build_parser
from feddel.simulations.cli import main as sim_main
from feddel.simulations.commands import compare as compare_cmd
from feddel.simulations.commands import shards as shards_module


class _Child:
    def __init__(self, code: int):
        self.code = code

    def wait(self) -> int:
        return self.code

    def terminate(self) -> None:
        pass


def _spawned(monkeypatch, codes=(0, 0)):
    started = []

    def popen(command, stdout, stderr):
        assert stderr is subprocess.STDOUT
        started.append(command)
        return _Child(codes[len(started) - 1])

    monkeypatch.setattr(shards_module.subprocess, "Popen", popen)
    return started


def test_parallel_compare_starts_one_shard_per_seed_set_then_assembles_all_seeds(
    tmp_path, monkeypatch
):
    started = _spawned(monkeypatch)
    assembled = []
    monkeypatch.setattr(compare_cmd, "run_pipeline", lambda *a, **k: assembled.extend(a[3]) or [])
    out = tmp_path / "run"
    (out / "cells" / "old").mkdir(parents=True)
    argv = ["compare", "--data", str(tmp_path), "--out", str(out), "--seeds", "3",
            "--methods", "random", "--budgets", "0.05", "--parallel", "2", "--fresh"]  # fmt: skip
    assert sim_main(argv) == 0
    assert not (out / "cells").exists()  # --fresh ran once, before the shards
    assert [c[:3] for c in started] == [[sys.executable, "-m", "feddel.simulations.cli"]] * 2
    assert [c[-2:] for c in started] == [["--shard", "1/2"], ["--shard", "2/2"]]
    for command in started:
        assert "--fresh" not in command and "--parallel" not in command
        assert command[3:-2] == argv[:-3]  # the same command otherwise
    assert sorted({cell.seed for cell in assembled}) == [0, 1, 2]  # the whole table


def test_a_failed_shard_is_named_with_its_log(tmp_path, monkeypatch):
    _spawned(monkeypatch, codes=(0, 1))
    argv = ["compare", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--seeds", "2",
            "--parallel", "2"]  # fmt: skip
    with pytest.raises(RunFailed, match=r"shard-2\.log \(exit 1\)"):  # the CLI: exit 1
        shards_module.run_in_shards(_args(argv), tmp_path / "run")


def test_one_shard_or_an_explicit_shard_runs_in_this_process(tmp_path, monkeypatch):
    started = _spawned(monkeypatch)
    for extra in (["--parallel", "1"], ["--parallel", "2", "--shard", "1/2"], ["--seeds", "1"]):
        argv = ["compare", "--data", str(tmp_path), "--out", str(tmp_path / "r"), *extra]
        assert not shards_module.run_in_shards(_args(argv), tmp_path / "r")
    assert started == []


def _args(argv):
    args = build_parser().parse_args(argv)
    args.argv = argv
    return args
