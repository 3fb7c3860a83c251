"""A deployed coordinator without processes: coordinator.toml and the round settings `curate`
submits, `config --config`, the round's FAB, progress and `feddel-coordinator status`, and the
registrar's decisions (with `flwr` replaced by a recorder)."""

import datetime
import json
import tomllib
from pathlib import Path

import pytest

from feddel.common.config import CurationConfig
from feddel.common.deployment.certs import add_center, init_authority, make_center_key, parse_hosts
from feddel.common.deployment.metrics import render
from feddel.common.errors import ConfigError
from feddel.server.cli import build_parser
from feddel.server.cli import main as coordinator
from feddel.server.deployment import superlink
from feddel.server.deployment.deployed import PROGRESS_FILE, Progress
from feddel.server.deployment.fab import (
    COMPONENTS,
    OPERATOR_KEY,
    check_fab,
    curation_settings,
    write_app,
)
from feddel.server.deployment.flwrcli import boxed_error
from feddel.server.deployment.site import load_site
from feddel.server.deployment.status import coordinator_gauges, coordinator_status
from feddel.server.deployment.submit import round_config


def _coordinator_toml(tmp_path, text):
    (tmp_path / "coordinator.toml").write_text(text)
    return tmp_path / "coordinator.toml"


def test_coordinator_site_flags_override_the_file_and_round_keys_are_checked(tmp_path):
    toml = _coordinator_toml(
        tmp_path,
        '[coordinator]\ncerts = "certs"\nport = 9100\noperators-from = ["10.0.5.0/24"]\n'
        "[round]\nmin-centers = 31\n",
    )
    site = load_site(toml, port=9200, state=None)
    assert (site.certs, site.port, site.host) == (tmp_path / "certs", 9200, "0.0.0.0")
    assert site.local_address == "127.0.0.1:9200" and site.round == {"min-centers": 31}
    assert site.operators_from == ("10.0.5.0/24",)
    _coordinator_toml(tmp_path, "[round]\nmin-centers = 0\n")
    with pytest.raises(ConfigError, match="min-centers=0 must be >= 1"):
        load_site(toml)
    _coordinator_toml(tmp_path, '[coordinator]\noperators-from = ["the office"]\n')
    with pytest.raises(ConfigError, match="operators-from entry 'the office' is not an IP"):
        load_site(toml)


def _curate_config(tmp_path, *flags):
    args = build_parser().parse_args(["curate", "--config", str(tmp_path / "coordinator.toml"),
                                      *flags])  # fmt: skip
    return round_config(args, load_site(args.config))


def test_curate_honours_the_sites_round_method_and_budget(tmp_path):
    """Issue 20: `curate --config` ran feddel at 0.05 when [round] asked for random at 0.1."""
    _coordinator_toml(tmp_path, '[coordinator]\nruns = "runs"\n'
                                '[round]\nmethod = "random"\nbudget = 0.1\nk = 8\n')  # fmt: skip
    config = _curate_config(tmp_path)
    assert (config.method, config.budget, config.k) == ("random", 0.1, 8)
    assert config.out == str(tmp_path / "runs") and config.run_name.startswith("random-")


def test_curate_flags_beat_the_site_and_set_beats_the_flags(tmp_path):
    _coordinator_toml(tmp_path, '[round]\nmethod = "random"\nbudget = 0.1\n')
    config = _curate_config(tmp_path, "--method", "meddel", "--budget", "0.3")
    assert (config.method, config.budget) == ("meddel", 0.3)
    config = _curate_config(tmp_path, "--budget", "0.3", "--set", "budget=0.2",
                            "--run-name", "q1", "--out", str(tmp_path / "o"))  # fmt: skip
    assert (config.method, config.budget, config.run_name) == ("random", 0.2, "q1")
    assert config.out == str(tmp_path / "o")


def test_config_prints_the_sites_effective_settings_and_their_sources(tmp_path, capsys):
    toml = _coordinator_toml(
        tmp_path, '[coordinator]\nstate = "link"\nport = 9100\n[round]\nmethod = "random"\n'
    )
    args = ["config", "--config", str(toml), "--set", "k=7", "--json", str(tmp_path / "c.json")]
    assert coordinator(args) == 0
    printed = capsys.readouterr().out
    assert f"state = {tmp_path / 'link'}" in printed
    assert f"database = {tmp_path / 'link' / 'superlink.db'}" in printed
    assert "method = random  (from [round])" in printed and "k = 7  (from --set)" in printed
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["round"]["method"] == "random" and report["round"]["budget"] == 0.05
    assert report["coordinator"]["port"] == 9100
    assert report["coordinator"]["operators-from"] == "127.0.0.1/32, ::1/128"
    assert report["round_sources"]["k"] == "--set" and report["round_sources"]["budget"] == ""


def test_generated_app_declares_feddels_components_and_config_defaults(tmp_path):
    project = tomllib.loads((write_app(tmp_path) / "pyproject.toml").read_text())
    app = project["tool"]["flwr"]["app"]
    assert (
        app["components"]
        == COMPONENTS
        == {
            "serverapp": "feddel.server.deployment.deployed:app",
            "clientapp": "feddel.client.app:app",
        }
    )
    assert app["config"] == {**CurationConfig().to_run_config(), OPERATOR_KEY: ""}
    assert curation_settings(app["config"]) == CurationConfig().to_run_config()
    repo = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert project["project"]["version"] == repo["project"]["version"]
    assert check_fab(b"not a zip") == (
        "the app is not a FedDEL round (no readable pyproject.toml in a FAB archive)"
    )


def test_progress_records_each_phase_and_how_the_round_ended(tmp_path):
    progress = Progress(tmp_path / "q1" / PROGRESS_FILE, {"run": "q1", "run_id": 5})
    progress.phase("query.inventory", asked=3, answered=2, errors=1, seconds=1.234)
    saved = json.loads((tmp_path / "q1" / PROGRESS_FILE).read_text())
    assert saved["state"] == "running" and saved["phases"][0]["answered"] == 2
    progress.end(RuntimeError("only 1 of 3 centers remain"))
    saved = json.loads((tmp_path / "q1" / PROGRESS_FILE).read_text())
    assert (saved["state"], saved["error"]) == ("failed", "only 1 of 3 centers remain")


@pytest.fixture
def site(tmp_path):
    init_authority(tmp_path / "certs", parse_hosts("127.0.0.1"))
    for name in ("hospital-a", "hospital-b"):
        add_center(tmp_path / "certs", name, make_center_key(tmp_path / name, name)[1])
    toml = _coordinator_toml(tmp_path, '[coordinator]\ncerts = "certs"\nstate = "link"\n'
                                       'runs = "runs"\n')  # fmt: skip
    loaded = load_site(toml)
    loaded.state.mkdir()
    keys = loaded.certs / "centers"
    (loaded.state / "registered.json").write_text(json.dumps({
        name: {"key": superlink._key_digest(keys / name / "center.pub"), "node": node}
        for name, node in (("hospital-a", "11"), ("hospital-b", "22"))
    }))  # fmt: skip
    finished = {"selected": 5, "total_samples": 50}
    for run, run_id, state, summary in (("q1", 1, "finished", finished),
                                        ("q2", 2, "running", None)):  # fmt: skip
        folder = loaded.runs / run
        folder.mkdir(parents=True)
        (folder / PROGRESS_FILE).write_text(json.dumps(
            {"run": run, "run_id": run_id, "operator": "alice", "method": "feddel",
             "budget": 0.05, "started": f"2026-01-0{run_id}T00:00:00+00:00", "state": state,
             "phases": [{"phase": "query.inventory"}], "error": None}
        ))  # fmt: skip
        if summary:
            (folder / "summary.json").write_text(json.dumps(summary))
    return loaded


def test_coordinator_status_merges_the_superlinks_view_with_the_runs_folder(site, monkeypatch):
    def flwr(args, env):
        if args[0] == "supernode":
            return {
                "success": True,
                "nodes": [
                    {"node-id": "11", "status": "online"},
                    {"node-id": "22", "status": "offline"},
                ],
            }
        return {
            "success": True,
            "runs": [
                {"run-id": "1", "status": "finished:completed"},
                {"run-id": "2", "status": "finished:failed"},
            ],
        }

    monkeypatch.setattr("feddel.server.deployment.status.flwr_json", flwr)
    status = coordinator_status(site, None, lambda: "alice:" + "s" * 43)
    assert [(c["center"], c["node"], c["connection"]) for c in status["centers"]] == [
        ("hospital-a", "11", "online"), ("hospital-b", "22", "offline"),
    ]  # fmt: skip
    assert [(r["run"], r["state"]) for r in status["runs"]] == [
        ("q1", "finished"), ("q2", "interrupted (finished:failed)"),
    ]  # fmt: skip
    assert status["runs"][0]["selected"] == 5 and status["last_round"]["run"] == "q2"
    assert status["errors"] == ["center hospital-b is offline"]
    gauges = render(coordinator_gauges(status))
    assert (
        "feddel_superlink_up 1" in gauges
        and 'feddel_center_online{center="hospital-b"} 0' in gauges
    )


def test_coordinator_status_without_a_superlink_asks_nothing_and_exits_1(site, capsys):
    def no_token():
        raise AssertionError("the token is read only when the SuperLink answers")

    status = coordinator_status(site, "not answering at https://127.0.0.1:9093/health", no_token)
    assert status["superlink"]["up"] is False and status["errors"][0].startswith("SuperLink not")
    assert [c["connection"] for c in status["centers"]] == ["unknown", "unknown"]
    args = ["status", "--config", str(site.state.parent / "coordinator.toml")]
    assert coordinator([*args, "--check"]) == 1
    assert "not answering at https://127.0.0.1:9093/health" in capsys.readouterr().out


class FlwrRecorder:
    """`flwr_json` as the registrar calls it: answers from a script, remembers the calls."""

    def __init__(self, nodes=(), runs=()):
        self.calls, self.nodes, self.runs = [], list(nodes), list(runs)

    def __call__(self, args, env):
        self.calls.append(args[:-1] if args[-1] == "feddel" else args)
        if args[:2] == ["supernode", "list"]:
            return {"success": True, "nodes": self.nodes}
        if args[0] == "list":
            return {"success": True, "runs": self.runs}
        if args[:2] == ["supernode", "register"]:
            return {"success": True, "node-id": "99"}
        return {"success": True}


def test_start_stops_runs_its_restart_orphaned(monkeypatch):
    before, after = "2026-03-01 11:59:00Z", "2026-03-01 12:00:05Z"
    flwr = FlwrRecorder(runs=[
        {"run-id": "1", "status": "finished:completed", "pending-at": before},
        {"run-id": "2", "status": "running", "pending-at": before},
        {"run-id": "3", "status": "starting", "pending-at": before},
        {"run-id": "4", "status": "pending", "pending-at": before},
        {"run-id": "5", "status": "starting", "pending-at": after},  # submitted just now
    ])  # fmt: skip
    monkeypatch.setattr(superlink, "flwr_json", flwr)
    started = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
    assert superlink.stop_orphaned_runs({}, started) == ["2", "3"]
    assert flwr.calls[1:] == [["stop", "2"], ["stop", "3"]]


def test_registrar_unregisters_nodes_feddel_did_not_register(site, monkeypatch):
    flwr = FlwrRecorder(nodes=[{"node-id": "11", "status": "online"},
                               {"node-id": "22", "status": "registered"},
                               {"node-id": "66", "status": "online"}])  # fmt: skip
    monkeypatch.setattr(superlink, "flwr_json", flwr)
    registrar = superlink.Registrar(site, {})
    assert registrar.sync(verify=True) == 2
    assert ["supernode", "unregister", "66"] in flwr.calls
    assert not [c for c in flwr.calls if c[:2] == ["supernode", "register"]]


def test_registrar_follows_added_and_removed_key_folders(site, monkeypatch, tmp_path):
    flwr = FlwrRecorder()
    monkeypatch.setattr(superlink, "flwr_json", flwr)
    registrar = superlink.Registrar(site, {})
    registrar.records = {}
    assert registrar.sync() == 2  # both admitted keys registered
    registered = [c[2] for c in flwr.calls if c[:2] == ["supernode", "register"]]
    assert [Path(p).parent.name for p in registered] == ["hospital-a", "hospital-b"]
    (site.certs / "centers" / "hospital-b" / "center.pub").unlink()
    assert registrar.sync() == 1
    assert flwr.calls[-1] == ["supernode", "unregister", "99"]
    assert json.loads((site.state / "registered.json").read_text()).keys() == {"hospital-a"}


def test_flwr_errors_are_read_out_of_their_box():
    output = """Using SuperLink: feddel (127.0.0.1:9093)
╭─ Error ──────────────────────────────────────────╮
│ operator authentication failed: this call needs  │
│ an operator token                                 │
╰──────────────────────────────────────────────────╯"""
    assert boxed_error(output) == (
        "operator authentication failed: this call needs an operator token"
    )
    assert boxed_error("line one\n\nlast words\n") == "last words"
