"""Phases 5-6 over the in-process engine: FedAvg pre-training that resumes exactly, what the
centers send, and `feddel-sim compare` end to end on a tiny federation."""

import csv
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from feddel.client import training
from feddel.client.app import build_client_app
from feddel.client.handlers import CenterPaths
from feddel.common.config import CurationConfig
from feddel.common.errors import ConfigError
from feddel.common.io import write_json
from feddel.common.models.embed import EncoderSpec
from feddel.common.models.mae import MAE, load_mae_checkpoint
from feddel.common.wire.fedavg import weights_record
from feddel.common.wire.protocol import record_bytes
from feddel.common.wire.trainproto import TrainRequest
from feddel.server.broadcast import Broadcaster
from feddel.server.training import pretrain as pretrain_module
from feddel.server.training.pretrain import PretrainConfig, run_pretraining
from feddel.simulations import pipeline as pipeline_module
from feddel.simulations.cli import main as sim_main
from feddel.simulations.commands import compare as compare_cmd
from feddel.simulations.commands.compare import earlier_rows
from feddel.simulations.federated import simulation_resolver, worker_threads
from feddel.simulations.inprocess import InProcessGrid
from feddel.simulations.layout import center_dirs
from feddel.simulations.pipeline import (
    Pipeline,
    PipelineSettings,
    code_fingerprint,
    discard_results,
    source_commit,
)
from feddel.simulations.synth import generate_federation

SETTINGS = dict(uniform_fraction=0.5, image_size=32, rounds=2, local_steps=2, batch_size=4)


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline") / "data"
    generate_federation(root, centers=3, scale="small", seed=0, size=32)
    return root


def _pretrain(data: Path, state: Path, out: Path, observer=None, **settings):
    centers = center_dirs(data)
    app = build_client_app(simulation_resolver(centers, state))
    grid = InProcessGrid(app, len(centers), workers=3, observer=observer)
    try:
        cast = Broadcaster(grid, min_fraction=1.0, timeout=None, group="t", min_centers=3)
        return run_pretraining(cast, PretrainConfig(run="warm", **{**SETTINGS, **settings}), out)
    finally:
        grid.shutdown()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_mae_checkpoint(path).state_dict()


def test_pretraining_killed_after_a_round_resumes_to_the_same_model(
    federation, tmp_path, monkeypatch
):
    whole = _pretrain(federation, tmp_path / "s1", tmp_path / "whole")
    assert (whole.rounds_done, whole.resumed_from) == (2, 0)
    assert len(whole.losses) == 2 and sum(whole.examples.values()) > 0

    real_round, calls = pretrain_module._train_round, []

    def dies_in_round_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the coordinator is killed during round 2
        return real_round(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "_train_round", dies_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        _pretrain(federation, tmp_path / "s2", tmp_path / "split")
    monkeypatch.setattr(pretrain_module, "_train_round", real_round)
    resumed = _pretrain(federation, tmp_path / "s2", tmp_path / "split")
    assert (resumed.rounds_done, resumed.resumed_from) == (2, 1)
    a, b = _weights(whole.checkpoint), _weights(resumed.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # round 1's traffic was counted before the kill; the resume adds only a second probe
    assert whole.bytes_up <= resumed.bytes_up < 1.01 * whole.bytes_up
    assert whole.bytes_down <= resumed.bytes_down < 1.01 * whole.bytes_down


def test_centers_send_weights_and_counts_only(federation, tmp_path):
    sent = []
    result = _pretrain(
        federation, tmp_path / "s", tmp_path / "run", observer=lambda n, m: sent.append(m)
    )
    replies = [m.content for m in sent if m.metadata.message_type == "query.mae"]
    assert result.bytes_up == sum(record_bytes(content) for content in replies)
    weights = min(record_bytes(c) for c in replies if "weights" in c.array_records)
    assert result.bytes_down > 6 * weights  # the global model went to each trained center
    probes = [c for c in replies if int(c.config_records["fields"]["steps"]) == 0]
    trained = [c for c in replies if int(c.config_records["fields"]["steps"]) > 0]
    assert len(probes) == 3  # the probe: how many training images each center holds
    assert len(trained) == 6  # 3 centers x 2 rounds, compute-matched: same steps each
    for content in replies:
        assert set(content.config_records["fields"].keys()) == {
            "center", "examples", "steps", "loss"
        }  # fmt: skip
        assert not content.array_records["arrays"]  # no per-sample array of any kind
    for content in probes:
        assert set(content.array_records) == {"arrays"}  # a count, no weights
    for content in trained:
        assert int(content.config_records["fields"]["steps"]) == SETTINGS["local_steps"]
        assert set(content.array_records) == {"arrays", "weights"}


def test_centers_per_round_trains_that_many_drawn_by_round(federation, tmp_path):
    sent = []
    result = _pretrain(
        federation, tmp_path / "s", tmp_path / "run", centers_per_round=2, rounds=3,
        observer=lambda n, m: sent.append(m),
    )  # fmt: skip
    trained = [
        m.content.config_records["fields"]["center"]
        for m in sent
        if m.metadata.message_type == "query.mae"
        and int(m.content.config_records["fields"]["steps"]) > 0
    ]
    assert len(trained) == 6 and result.rounds_done == 3  # 2 centers x 3 rounds
    assert len(set(trained)) == 3  # the draw changes with the round: all 3 centers trained


def test_pretraining_refuses_to_resume_with_other_settings(federation, tmp_path):
    _pretrain(federation, tmp_path / "s", tmp_path / "run")
    with pytest.raises(ConfigError, match="other settings"):
        pretrain_module.resume_or_start(
            PretrainConfig(run="warm", **{**SETTINGS, "rounds": 3}), tmp_path / "run"
        )


@pytest.mark.slow
def test_compare_writes_results_and_resumes(federation, tmp_path, capsys):
    """~1-2 min: two methods, one budget, one seed, the whole pipeline in-process."""
    out = tmp_path / "cmp"
    argv = [
        "compare", "--data", str(federation), "--out", str(out), "--budgets", "0.3",
        "--methods", "random,feddel", "--seeds", "1", "--rounds", "1", "--local-steps", "2",
        "--warmup-rounds", "1", "--batch-size", "4", "--head-steps", "20",
        "--set", "image-size=32", "--set", "k=4", "--set", "k-local=2",
    ]  # fmt: skip
    assert sim_main(argv) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["method"] for r in rows] == ["scratch", "random", "feddel"]
    assert {"method", "budget", "R", "seed", "mIoU", "DEL", "NormDEL", "wall_s"} <= set(rows[0])
    assert float(rows[1]["R"]) == pytest.approx(0.3, abs=0.05)
    assert rows[0]["pretrain_gb"] == ""  # scratch is not pre-trained
    traffic = [float(r["pretrain_gb"]) for r in rows[1:]]  # the same rounds and centers
    assert traffic[0] > 0.001 and traffic[1] == pytest.approx(traffic[0], rel=0.01)
    assert (out / "results.png").stat().st_size > 1000
    assert "| feddel | 0.3 | 1 |" in (out / "results.md").read_text()
    assert "| pre-train GB |" in (out / "results.md").read_text()
    assert f"on {federation.parent.name}/data" in (out / "results.md").read_text().splitlines()[0]
    assert json.loads((out / "settings.json").read_text())["pipeline"]["batch_size"] == 4
    assert sim_main(argv) == 0  # finished cells are read back, not recomputed
    again = list(csv.DictReader((out / "results.csv").open()))
    assert [r["wall_s"] for r in again] == [r["wall_s"] for r in rows]
    methods = argv.index("--methods") + 1
    assert sim_main([*argv[:methods], "optidel", *argv[methods + 1 :]]) == 0  # extends the table
    extended = list(csv.DictReader((out / "results.csv").open()))
    assert [r["method"] for r in extended] == ["scratch", "optidel", "feddel", "random"]
    assert [r["wall_s"] for r in extended if r["method"] != "optidel"] == [
        rows[0]["wall_s"], rows[2]["wall_s"], rows[1]["wall_s"]
    ]  # fmt: skip


def test_earlier_rows_adds_cells_finished_by_other_runs_once(tmp_path):
    finished = (("scratch-0-s0", "scratch", 0.0), ("meddel-0.2-s0", "meddel", 0.2))
    for name, method, budget in finished:
        row = {"method": method, "budget": budget, "seed": 0, "mIoU": 0.5}
        write_json(tmp_path / "cells" / name / "row.json", row)
    now = [{"method": "scratch", "budget": 0.0, "seed": 0, "mIoU": 0.5}]
    assert [r["method"] for r in earlier_rows(tmp_path, now)] == ["meddel"]


def test_compare_refuses_to_mix_cells_of_other_settings(tmp_path):
    base = CurationConfig(image_size=32)
    Pipeline(None, base, PipelineSettings(rounds=2), tmp_path, [], tmp_path)._check_settings()
    Pipeline(None, base, PipelineSettings(rounds=2), tmp_path, [], tmp_path)._check_settings()
    with pytest.raises(ConfigError, match="other settings"):
        Pipeline(None, base, PipelineSettings(rounds=4), tmp_path, [], tmp_path)._check_settings()


def test_results_written_before_a_new_setting_existed_still_match(tmp_path):
    """A settings.json without `center_weighting` was made with its default (by examples); one
    without a code fingerprint predates fingerprints and cannot be told apart."""
    base = CurationConfig(image_size=32)
    Pipeline(None, base, PipelineSettings(rounds=2), tmp_path, [], tmp_path)._check_settings()
    stored = json.loads((tmp_path / "settings.json").read_text())
    del stored["pipeline"]["center_weighting"], stored["code"]
    write_json(tmp_path / "settings.json", stored)
    Pipeline(None, base, PipelineSettings(rounds=2), tmp_path, [], tmp_path)._check_settings()
    with pytest.raises(ConfigError, match="other settings"):
        settings = PipelineSettings(rounds=2, center_weighting="equal")
        Pipeline(None, base, settings, tmp_path, [], tmp_path)._check_settings()


def test_pretraining_written_before_a_new_setting_existed_resumes(federation, tmp_path):
    """A progress.json without `center_weighting` was trained with its default (by examples)."""
    _pretrain(federation, tmp_path / "s", tmp_path / "run")
    progress_path = tmp_path / "run" / pretrain_module.PROGRESS
    progress = json.loads(progress_path.read_text())
    del progress["config"]["center_weighting"]
    write_json(progress_path, progress)
    config = PretrainConfig(run="warm", **SETTINGS)
    _, resumed = pretrain_module.resume_or_start(config, tmp_path / "run")
    assert resumed["rounds_done"] == SETTINGS["rounds"]
    with pytest.raises(ConfigError, match="other settings"):
        config = PretrainConfig(run="warm", **{**SETTINGS, "center_weighting": "equal"})
        pretrain_module.resume_or_start(config, tmp_path / "run")


def test_compare_refuses_cells_made_by_other_code(tmp_path, monkeypatch):
    base = CurationConfig(image_size=32)
    Pipeline(None, base, PipelineSettings(rounds=2), tmp_path, [], tmp_path)._check_settings()
    monkeypatch.setattr(pipeline_module, "code_fingerprint", lambda: "0" * 16)
    with pytest.raises(ConfigError, match=r"other FedDEL code.*--fresh"):
        Pipeline(None, base, PipelineSettings(rounds=2), tmp_path, [], tmp_path)._check_settings()


def test_code_fingerprint_follows_the_sources(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(
        pipeline_module, "client", SimpleNamespace(__file__=str(package / "__init__.py"))
    )
    first = code_fingerprint()
    assert code_fingerprint() == first
    (package / "sub" / "a.py").write_text("x = 2\n")
    assert code_fingerprint() != first


def test_fresh_discards_earlier_results_but_not_the_data(federation, tmp_path, monkeypatch):
    out = tmp_path / "run"
    for path in (
        "cells/random-0.05-s0/row.json",
        "warmup/s0/checkpoint.pt",
        "state/x",
        "data/keep",
    ):
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text("x")
    for name in ("settings.json", "results.csv", "results.md", "results.png", "notes.txt"):
        (out / name).write_text("x")

    def stop(*_args, **_kwargs):
        raise ConfigError("stopped before the simulation")

    monkeypatch.setattr(compare_cmd, "run_apps", stop)
    argv = ["compare", "--data", str(federation), "--out", str(out), "--fresh"]
    assert sim_main(argv) == 2
    assert sorted(p.name for p in out.iterdir()) == ["data", "notes.txt"]
    assert (out / "data" / "keep").read_text() == "x"
    assert discard_results(out) == []


def _cells_run(monkeypatch, argv):
    """The cells `compare argv` hands to the pipeline (which is not run), or None on exit 2."""
    ran = []
    monkeypatch.setattr(compare_cmd, "run_pipeline", lambda *a, **k: ran.extend(a[3]) or [])
    return ran if sim_main(argv) == 0 else None


def test_compare_shards_split_the_seeds_into_disjoint_cell_sets(federation, tmp_path, monkeypatch):
    argv = ["compare", "--data", str(federation), "--out", str(tmp_path / "run"), "--seeds", "3",
            "--methods", "random,feddel", "--budgets", "0.05,1.0"]  # fmt: skip
    everything = _cells_run(monkeypatch, argv)
    shards = [_cells_run(monkeypatch, [*argv, "--shard", f"{k}/2"]) for k in (1, 2)]
    assert {cell.seed for cell in shards[0]} == {0, 2} and {cell.seed for cell in shards[1]} == {1}
    assert set(shards[0]) | set(shards[1]) == set(everything)
    assert len(shards[0]) + len(shards[1]) == len(everything) == 9  # disjoint


@pytest.mark.parametrize("shard", ["0/2", "3/2", "1/0", "2", "a/b", "4/4"])
def test_compare_refuses_a_shard_that_holds_no_seed(federation, tmp_path, monkeypatch, shard):
    argv = ["compare", "--data", str(federation), "--out", str(tmp_path / "run"), "--seeds", "3",
            "--shard", shard]  # fmt: skip
    assert _cells_run(monkeypatch, argv) is None


def test_compare_refuses_fresh_with_shards_and_deletes_nothing(federation, tmp_path, monkeypatch):
    out = tmp_path / "run"
    (out / "cells" / "random-0.05-s1").mkdir(parents=True)
    argv = ["compare", "--data", str(federation), "--out", str(out), "--shard", "1/2", "--fresh"]
    assert _cells_run(monkeypatch, argv) is None
    assert (out / "cells" / "random-0.05-s1").is_dir()


@pytest.mark.parametrize("timeout, workers", [(0, worker_threads(0)), (30, 8)])
def test_compare_runs_a_thread_per_core_unless_a_phase_can_time_out(
    federation, tmp_path, monkeypatch, timeout, workers
):
    used = []

    def stop(*_args, workers):
        used.append(workers)
        raise ConfigError("stopped before the simulation")

    monkeypatch.setattr(compare_cmd, "run_apps", stop)
    argv = ["compare", "--data", str(federation), "--out", str(tmp_path / "run"), "--set",
            f"phase-timeout={timeout}"]  # fmt: skip
    assert sim_main(argv) == 2 and used == [workers]


def test_fedadam_centers_take_sgd_steps_and_a_killed_run_resumes_exactly(
    federation, tmp_path, monkeypatch
):
    """FedSGD with a server Adam: one SGD step per center and round; the server's AdamW state
    is saved per round, so a run killed in round 2 resumes to the same weights."""
    import feddel.client.training as training

    real_train, local = training.train_mae, []

    def spy(*args, **kwargs):
        local.append((kwargs["local_sgd"], kwargs["lr"], kwargs["steps"]))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training, "train_mae", spy)
    fedsgd = dict(fedadam=True, local_lr=1.0, local_steps=1, rounds=3, lr=1e-3)
    whole = _pretrain(federation, tmp_path / "s1", tmp_path / "whole", **fedsgd)
    assert set(local) == {(True, 1.0, 1)} and len(local) == 9  # 3 centers x 3 rounds
    assert [p.name for p in (tmp_path / "whole").glob("server-adam-*")] == ["server-adam-r3.pt"]
    assert whole.losses[-1] < whole.losses[0]

    real_round, calls = pretrain_module._train_round, []

    def dies_in_round_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_round(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "_train_round", dies_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        _pretrain(federation, tmp_path / "s2", tmp_path / "split", **fedsgd)
    monkeypatch.setattr(pretrain_module, "_train_round", real_round)
    resumed = _pretrain(federation, tmp_path / "s2", tmp_path / "split", **fedsgd)
    assert (resumed.rounds_done, resumed.resumed_from) == (3, 1)
    a, b = _weights(whole.checkpoint), _weights(resumed.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # round 1's traffic was counted before the kill; the resume adds only a second probe
    assert whole.bytes_up <= resumed.bytes_up < 1.01 * whole.bytes_up
    assert whole.bytes_down <= resumed.bytes_down < 1.01 * whole.bytes_down


def test_pipeline_hands_its_optimizer_settings_to_every_pre_training_run(tmp_path):
    settings = PipelineSettings(
        rounds=2, fedadam=True, local_lr=0.5, lr=1e-3, center_weighting="equal"
    )
    pipeline = Pipeline(None, CurationConfig(image_size=32), settings, tmp_path, [], tmp_path)
    config = pipeline._pretrain_config(run="r", uniform_fraction=0.1, rounds=3, seed=2)
    assert (config.fedadam, config.local_lr, config.lr) == (True, 0.5, 1e-3)
    assert (config.image_size, config.rounds, config.seed) == (32, 3, 2)
    assert config.center_weighting == "equal"


@pytest.mark.parametrize(
    "bad, named",
    [
        ({"local_lr": 0.0}, "local-lr"),
        ({"local_lr": 2.0}, "local-lr"),
        ({"centers_per_round": -1}, "centers-per-round"),
        ({"center_weighting": "by-size"}, "center-weighting"),
    ],
)
def test_pretraining_settings_out_of_range_are_refused_by_name(bad, named):
    with pytest.raises(ConfigError, match=named):
        PretrainConfig(run="warm", **{**SETTINGS, **bad})


@pytest.mark.parametrize("fedadam", [False, True])
def test_a_kill_between_checkpoint_and_progress_file_resumes_to_the_same_model(
    federation, tmp_path, monkeypatch, fedadam
):
    """The checkpoint is the commit point: progress.json lagging one round behind it (a kill
    between the two writes) must not train that round twice."""
    settings = dict(fedadam=fedadam, rounds=3)
    whole = _pretrain(federation, tmp_path / "s1", tmp_path / "whole", **settings)
    real_write, writes = pretrain_module.write_json, []

    def dies_writing_round_two(path, obj):
        writes.append(path)
        if len(writes) == 2:
            raise KeyboardInterrupt
        return real_write(path, obj)

    monkeypatch.setattr(pretrain_module, "write_json", dies_writing_round_two)
    with pytest.raises(KeyboardInterrupt):
        _pretrain(federation, tmp_path / "s2", tmp_path / "split", **settings)
    monkeypatch.setattr(pretrain_module, "write_json", real_write)
    assert json.loads((tmp_path / "split" / "progress.json").read_text())["rounds_done"] == 1
    resumed = _pretrain(federation, tmp_path / "s2", tmp_path / "split", **settings)
    assert (resumed.rounds_done, resumed.resumed_from) == (3, 2)
    a, b = _weights(whole.checkpoint), _weights(resumed.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # round 1's traffic was counted before the kill; the resume adds only a second probe
    assert whole.bytes_up <= resumed.bytes_up < 1.01 * whole.bytes_up
    assert whole.bytes_down <= resumed.bytes_down < 1.01 * whole.bytes_down
    assert len(resumed.losses) == 3


@pytest.mark.parametrize("weighting", ["examples", "equal"])
def test_center_weighting_sets_each_centers_weight_in_the_average(
    federation, tmp_path, monkeypatch, weighting
):
    real_fedavg, used = pretrain_module.fedavg, []

    def spy(states, weights):
        used.append(list(weights))
        return real_fedavg(states, weights)

    monkeypatch.setattr(pretrain_module, "fedavg", spy)
    sent = []
    result = _pretrain(
        federation, tmp_path / "s", tmp_path / "run", center_weighting=weighting,
        observer=lambda n, m: sent.append(m.content.config_records["fields"]),
    )  # fmt: skip
    counts = sorted(result.examples.values())
    assert len(set(counts)) > 1  # the centers differ in size, so the two weightings differ
    expected = [1] * len(counts) if weighting == "equal" else counts
    assert all(sorted(weights) == expected for weights in used) and len(used) == 2
    # the reported loss is per training image either way (weighting changes the model only)
    first = [f for f in sent if int(f["steps"]) > 0][: len(counts)]
    per_image = sum(f["loss"] * f["examples"] for f in first) / sum(f["examples"] for f in first)
    assert result.losses[0] == pytest.approx(per_image)


def test_a_center_reusing_its_model_trains_exactly_as_a_fresh_model(federation, tmp_path):
    """Centers keep one MAE per thread across rounds; a request must leave nothing behind."""
    center = center_dirs(federation)[0]
    paths = CenterPaths(center.name, center, tmp_path / "state")
    spec = EncoderSpec(image_size=32)

    def request(init_seed: int, round_: int) -> TrainRequest:
        weights = weights_record(MAE(EncoderSpec(image_size=32, seed=init_seed)).state_dict())
        return TrainRequest(
            run="reuse", round=round_, selection="", uniform_fraction=0.5, model=spec.model,
            image_size=32, steps=2, step_offset=0, total_steps=2, batch_size=4, lr=1e-3,
            seed=0,
        ).with_weights(weights)  # fmt: skip

    def trained(*requests: TrainRequest) -> dict[str, torch.Tensor]:
        with ThreadPoolExecutor(1) as thread:  # a new thread: starts without a cached model
            replies = [thread.submit(training.train, r, paths).result() for r in requests]
        return {name: torch.as_tensor(a.numpy()) for name, a in replies[-1].weights.items()}

    fresh = trained(request(2, 1))
    reused = trained(request(1, 0), request(2, 1))
    assert fresh.keys() == reused.keys()
    assert all(torch.equal(fresh[name], reused[name]) for name in fresh)


@pytest.mark.parametrize(
    "bad, named",
    [({"batch_size": 0}, "batch-size"), ({"warmup_rounds": 0}, "rounds"),
     ({"local_lr": 2.0}, "local-lr"), ({"warmup_fraction": 1.5}, "uniform-fraction")],
)  # fmt: skip
def test_pipeline_settings_refuse_bad_pretraining_values_before_any_work(bad, named):
    with pytest.raises(ConfigError, match=named):
        PipelineSettings(**bad)


def test_source_commit_names_the_checkout_and_whether_its_sources_changed(tmp_path, monkeypatch):
    package = tmp_path / "repo" / "simulations"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.setattr(
        pipeline_module, "simulations", SimpleNamespace(__file__=str(package / "__init__.py"))
    )
    assert source_commit() == ""  # not a git checkout (an installed wheel)
    git = ["git", "-C", str(tmp_path / "repo"), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert source_commit() == head.strip()
    (tmp_path / "repo" / "notes.md").write_text("not a source")
    assert source_commit() == head.strip()
    (package / "__init__.py").write_text("x = 1\n")
    assert source_commit() == head.strip() + "+dirty"


@pytest.mark.slow
def test_compare_fast_with_controls_starts_every_cell_from_the_random_init(federation, tmp_path):
    """~1-2 min: the science protocol end to end on 3 centers, 2 seeds."""
    out = tmp_path / "science"
    argv = [
        "compare", "--data", str(federation), "--out", str(out), "--budgets", "0.2",
        "--methods", "random,oracle,disruptive-only", "--seeds", "2", "--first-seed", "5",
        "--fast", "--fedadam", "--local-steps", "1", "--local-lr", "1", "--rounds", "3",
        "--batch-size", "4", "--head-steps", "10", "--curation-encoder", "random-init",
        "--set", "image-size=32", "--set", "k=4", "--set", "k-local=2", "--set", "min-count=10",
    ]  # fmt: skip
    assert sim_main(argv) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["seed"] for r in rows} == {"5", "6"}
    cells = [r for r in rows if r["method"] != "scratch"]
    assert len(cells) == 6 and all(r["pretrain_engine"] == "fast" for r in cells)
    assert all(r["pretrain_gb"] == "" for r in cells)  # nothing travelled
    assert {r["method"]: r["curation_encoder"] for r in cells} == {
        "random": "random-init", "oracle": "truth", "disruptive-only": "truth"
    }  # fmt: skip
    for r in cells:
        assert float(r["R"]) == pytest.approx(0.2, abs=0.06)
        progress = json.loads((out / "cells" / f"{r['method']}-0.2-s{r['seed']}" / "mae-c0" /
                               "progress.json").read_text())  # fmt: skip
        assert progress["config"]["init"] == ""  # the seed's random init, never the warm-up
        assert progress["config"]["seed"] == int(r["seed"])
    assert {r["quality_disruptive_rate"] for r in cells if r["method"] == "disruptive-only"} == {
        "1.0"
    }
    summary = json.loads((out / "cells" / "random-0.2-s5" / "random-0.2-s5-c0" /
                          "summary.json").read_text())  # fmt: skip
    assert summary["config"]["weights"].endswith("warmup/random-s5/checkpoint.pt")
    text = (out / "results.md").read_text()
    assert "| oracle 20% - disruptive-only 20% | 2 |" in text
    assert (out / "paired.png").is_file()
