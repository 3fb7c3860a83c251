"""A deployed center without processes: center.toml and its [policy], the policy applied to a
round (client/policy.py), how `join` reads Flower's output, and `feddel-center status`."""

import datetime
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from feddel.client.cli import main as center
from feddel.client.commands.join import ConnectionWatch, explain_failure, node_config_values
from feddel.client.commands.status import center_gauges, center_status
from feddel.client.policy import CENTER_CONFIG_KEY, admit
from feddel.client.site import RoundPolicy, load_center_site
from feddel.client.state import CenterState
from feddel.common.curation.methods import METHOD_NAMES
from feddel.common.deployment import certs
from feddel.common.deployment.audit import AuditLog
from feddel.common.deployment.metrics import render
from feddel.common.errors import ConfigError, DataError, Refused


@pytest.fixture
def _toml(center_toml):
    """center.toml in a folder, with defaults for every key."""

    def write(folder, policy=None, **overrides):
        values = dict(name="hospital-a", data="images", state="state", address="link:9093",
                      ca="/k/ca.crt", key="/k/center.key", port=9094)  # fmt: skip
        return center_toml(folder / "center.toml", policy, **{**values, **overrides})

    return write


# --- center.toml ----------------------------------------------------------------------------


def test_center_site_resolves_relative_paths_next_to_the_file(tmp_path, _toml):
    toml = _toml(tmp_path, ca="ca.crt", key="center.key")
    site = load_center_site(toml)
    assert (site.data, site.state, site.key) == (
        tmp_path / "images", tmp_path / "state", tmp_path / "center.key",
    )  # fmt: skip
    assert site.flwr_home == tmp_path / "state" / "flwr"
    assert site.policy == RoundPolicy()  # no [policy]: every method, any budget, any operator
    assert node_config_values(site, toml) == {
        "data-path": str(tmp_path / "images"), "state-path": str(tmp_path / "state"),
        "center-name": "hospital-a", CENTER_CONFIG_KEY: str(toml.resolve()),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[center]\nname = 'a'\n", r"lacks \[center\] data, \[center\] state, \[superlink\]"),
        ("[center]\nnmae = 'a'\n", r"unknown key\(s\) nmae in \[center\]"),
        ("[centre]\n", r"unknown section\(s\) centre"),
        ("[supernode]\nruntime-port = '9094'\n", "runtime-port = '9094' must be an integer"),
        ("[center\n", "is not valid TOML"),
    ],
)
def test_center_site_names_what_is_wrong(tmp_path, text, message):
    (tmp_path / "center.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_center_site(tmp_path / "center.toml")


@pytest.mark.parametrize("address", ["link.example.org", "https://link:9093", "link:port", ":9"])
def test_center_site_rejects_addresses_that_are_not_host_port(tmp_path, address, _toml):
    with pytest.raises(ConfigError, match="must"):
        load_center_site(_toml(tmp_path, address=address))


def test_policy_section_is_read_and_checked(tmp_path, _toml):
    site = load_center_site(_toml(tmp_path, 'methods = ["feddel"]\nmax-budget = 0.2\n'
                                            'operators = ["alice"]'))  # fmt: skip
    assert site.policy == RoundPolicy(("feddel",), 0.2, ("alice",))
    for policy, message in [
        ('methods = ["fedavg"]', r"\[policy\] methods = \['fedavg'\] must name some of feddel"),
        ("methods = []", r"must name some of"),
        ("max-budget = 1.5", r"\[policy\] max-budget = 1.5 must be in \(0, 1\]"),
        ('operators = "alice"', "operators = 'alice' must be a list of quoted strings"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_center_site(_toml(tmp_path, policy))


def test_round_policy_refusals_say_what_and_where_to_change_it():
    policy = RoundPolicy(("feddel", "meddel"), 0.2, ("alice",))
    assert policy.refusal("feddel", 0.2, "alice") is None
    assert policy.refusal("random", 0.05, "alice") == (
        "method 'random' is not allowed at this center (allowed: feddel, meddel; [policy] "
        "methods in center.toml)"
    )
    assert "budget 0.3 is above this center's max-budget 0.2" in policy.refusal(
        "feddel", 0.3, "alice"
    )
    assert "operator 'bob' may not submit" in policy.refusal("feddel", 0.1, "bob")
    assert all(RoundPolicy().refusal(method, 1.0, "") is None for method in METHOD_NAMES)


# --- the policy applied to rounds -----------------------------------------------------------


def _context(toml, **run):
    node_config = {CENTER_CONFIG_KEY: str(toml)} if toml else {}
    run_config = {"run-name": "q1", "method": "feddel", "budget": 0.05, "operator": "alice", **run}
    return Context(run_id=7, node_id=1, node_config=node_config, state=RecordDict(),
                   run_config=run_config)  # fmt: skip


def test_admit_audits_each_accepted_round_once_and_refuses_with_one_line(tmp_path, _toml):
    toml = _toml(tmp_path, 'methods = ["feddel"]\noperators = ["alice"]')
    state = tmp_path / "state"
    admit(_context(toml), state, "inventory")
    admit(_context(toml), state, "lloyd")  # later phases of an accepted round: no new line
    with pytest.raises(Refused, match=r"^refused this round: method 'random' is not allowed"):
        admit(_context(toml, method="random", **{"run-name": "q2"}), state, "inventory")
    with pytest.raises(Refused, match="operator 'mallory' may not submit"):
        admit(_context(toml, operator="mallory", **{"run-name": "q3"}), state, "keys")
    entries = AuditLog.in_folder(state).entries()
    assert [(e["run"], e["actor"], e["outcome"], e["phase"]) for e in entries] == [
        ("q1", "alice", "accepted", "inventory"),
        ("q2", "alice", "refused", "inventory"),
        ("q3", "mallory", "refused", "keys"),
    ]
    assert entries[0]["method"] == "feddel" and entries[0]["run_id"] == 7
    assert "\n" not in entries[1]["reason"]


def test_max_budget_caps_what_a_round_selects_not_the_budget_it_names(tmp_path, _toml):
    """`full` selects every sample whatever budget it names; a round naming none counts as 1."""
    toml = _toml(tmp_path, "max-budget = 0.2")
    state = tmp_path / "state"
    admit(_context(toml, budget=0.1), state, "inventory")
    with pytest.raises(Refused, match=r"budget 1 is above this center.s max-budget 0\.2"):
        admit(_context(toml, method="full", budget=0.05), state, "inventory")
    no_budget = _context(toml)
    del no_budget.run_config["budget"]
    with pytest.raises(Refused, match="budget 1 is above"):
        admit(no_budget, state, "inventory")


def test_a_policy_change_applies_to_the_next_round_without_a_restart(tmp_path, _toml):
    toml = _toml(tmp_path)
    admit(_context(toml, method="random"), tmp_path / "state", "inventory")
    _toml(tmp_path, 'methods = ["feddel"]')
    with pytest.raises(Refused):
        admit(_context(toml, method="random"), tmp_path / "state", "inventory")


def test_a_simulated_center_has_no_policy(tmp_path):
    admit(_context(None, method="random", budget=1.0), tmp_path, "inventory")
    assert not (tmp_path / "audit.jsonl").exists()


# --- join: Flower's output in one sentence -------------------------------------------------

# Flower 1.41's own words when a SuperNode gives up (from real runs of flower-supernode).
_UNREGISTERED = """ERROR :     Exit Code: 305
Failed to initialize the connection to the SuperLink.
[code: 2004] Failed to activate SuperNode.
The SuperNode could not establish a connection to the SuperLink."""
_OTHER_CA = """ERROR :     SSL/TLS handshake error detected.
ERROR :     Exit Code: 305
Failed to initialize the connection to the SuperLink.
[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer cert"""
_WRONG_NAME = _OTHER_CA.replace(
    "unable to get local issuer cert", "Hostname mismatch, certificate is not valid for 'x'"
)
_EXPIRED = _OTHER_CA.replace("unable to get local issuer cert", "certificate has expired")
# ... and FedDEL's SuperLink, whose gate puts its reason where Flower's generic one was.
_REVOKED = _UNREGISTERED.replace(
    "Failed to activate SuperNode.",
    "this SuperNode's key was revoked by the coordinator (center hospital-a)",
)
_DUPLICATE = _UNREGISTERED.replace(
    "Failed to activate SuperNode.",
    "center hospital-a is already connected from another SuperNode with this key; stop it",
)


@pytest.mark.parametrize(
    ("output", "retry", "expected"),
    [
        (_UNREGISTERED, True, "either its key /k/center.key is not registered (ask the "
         "coordinator to run `feddel-coordinator certs add-center hospital-a`"),
        (_OTHER_CA, False, "the server at link:9093 is not signed by the CA in /k/ca.crt"),
        (_WRONG_NAME, False, "the SuperLink's certificate does not name the host in link:9093"),
        (_EXPIRED, False, "the SuperLink's certificate has expired; ask the coordinator"),
        (_REVOKED, False, "the SuperLink at link:9093 refused this center: this SuperNode's "
         "key was revoked by the coordinator (center hospital-a)"),
        (_DUPLICATE, True, "refused this center: center hospital-a is already connected"),
        ("INFO : start\nERROR : Exit Code: 999\nsomething new\nmore\nINFO : bye", True,
         "the SuperNode stopped: ERROR : Exit Code: 999 something new more"),
    ],
)  # fmt: skip
def test_explain_failure_turns_flowers_output_into_one_sentence(
    tmp_path, output, retry, expected, _toml
):
    failure = explain_failure(output, load_center_site(_toml(tmp_path)))
    assert expected in failure.reason and "\n" not in failure.reason
    assert failure.retry is retry


def test_connection_watch_records_each_change_once(tmp_path):
    state = CenterState(tmp_path)
    watch = ConnectionWatch(state, "link:9093")
    for line in ["INFO : Starting Flower SuperNode", "INFO : SuperNode ID: 42",
                 "WARNING : Connection attempt failed, retrying in 0.3 seconds",
                 "WARNING : Connection attempt failed, retrying in 2.1 seconds",
                 "INFO : Connection successful after 36.87 seconds and 9 tries.",
                 "INFO : Received successfully"]:  # fmt: skip
        watch.line(line)
    events = [(e["event"], e.get("node")) for e in state.events()]
    assert events == [("connected", "42"), ("connection-lost", None), ("connected", None)]


def test_join_refuses_an_expired_ca_in_one_line(tmp_path, monkeypatch, _toml):
    now = datetime.datetime.now(datetime.UTC)
    monkeypatch.setattr(certs, "_now", lambda: now - datetime.timedelta(days=4000))
    authority = certs.init_authority(tmp_path / "certs", certs.parse_hosts("127.0.0.1"))
    private, _ = certs.make_center_key(tmp_path / "keys", "hospital-a")
    (tmp_path / "images").mkdir()
    toml = _toml(tmp_path, ca=str(authority.ca_cert), key=str(private), address="127.0.0.1:1")
    join = subprocess.Popen([str(Path(sys.executable).parent / "feddel-center"), "join",
                             "--config", str(toml)], stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        code = join.wait(120)  # a join that went on to Flower would retry forever
    except subprocess.TimeoutExpired:
        os.killpg(join.pid, signal.SIGKILL)
        pytest.fail("join started the SuperNode with an expired CA instead of refusing")
    error = join.stderr.read().strip()
    assert code == 2 and error.startswith("error: CA certificate") and "expired on" in error
    assert "get the current ca.crt from the coordinator" in error and "\n" not in error


# --- feddel-center status -------------------------------------------------------------------


def _events(tmp_path, *events):
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_center_status_counts_runs_phases_manifests_refusals_and_errors(tmp_path):
    _events(
        tmp_path,
        {"time": 1.0, "event": "join", "superlink": "link:9093", "pid": os.getpid()},
        {"time": 1.5, "event": "connected", "superlink": "link:9093", "node": "42"},
        {"time": 2.0, "event": "inventory", "run": "r1", "samples": 40},
        *[{"time": 2.0 + i, "event": "phase", "run": "r1", "phase": p}
          for i, p in enumerate(["inventory", "keys", "lloyd", "lloyd", "select"])],
        {"time": 3.0, "event": "manifest", "run": "r1", "round": 0, "selected": 4,
         "path": "selection-r1-0.csv"},
        {"time": 4.0, "event": "inventory", "run": "r2", "samples": 41},
        {"time": 5.0, "event": "error", "phase": "score", "reason": "disk full"},
    )  # fmt: skip
    (tmp_path / "selection-r1-0.csv").write_text("center,file\n")
    AuditLog.in_folder(tmp_path).append("round", actor="bob", outcome="refused", run="r3",
                                        reason="method 'random' is not allowed")  # fmt: skip
    status = center_status(tmp_path, "hospital-a")
    assert [(r["run"], r.get("samples"), r.get("selected")) for r in status["runs"]] == [
        ("r1", 40, 4), ("r2", 41, None),
    ]  # fmt: skip
    assert status["runs"][0]["phases"] == ["inventory", "keys", "lloyd", "lloyd", "select"]
    assert status["last_round"]["run"] == "r2"
    assert [(m["run"], m["selected"], m["present"]) for m in status["manifests"]] == [
        ("r1", 4, True)
    ]
    assert status["errors"] == 1 and status["last_error"]["reason"] == "disk full"
    assert [e["run"] for e in status["refused_rounds"]] == ["r3"]
    assert status["connection"] == {"state": "connected", "since": 1.5, "superlink": "link:9093",
                                    "node": "42"}  # fmt: skip
    assert status["privacy_ledger"] == {"releases": 0, "rho": 0.0, "epsilon": 0.0,
                                        "delta": 1e-6, "max_epsilon": None,
                                        "damaged_lines": 0}  # fmt: skip
    gauges = render(center_gauges(status))
    assert 'feddel_center_connected{center="hospital-a"} 1' in gauges
    assert 'feddel_center_refused_rounds{center="hospital-a"} 1' in gauges
    assert 'feddel_center_last_round_selected{center="hospital-a"} 0' in gauges
    with pytest.raises(DataError, match="has not joined"):
        center_status(tmp_path / "missing")


@pytest.mark.parametrize(
    ("events", "probe", "state"),
    [
        ([], None, "never joined"),
        ([("join", {"pid": "self"}), ("connected", {})], lambda: None, "connected"),
        ([("join", {"pid": "self"}), ("connected", {})], lambda: "not answering", "reconnecting"),
        ([("join", {"pid": "self"}), ("connection-lost", {})], None, "reconnecting"),
        ([("join", {"pid": "dead"}), ("connected", {})], lambda: None, "stopped"),
        ([("join", {"pid": "self"}), ("leave", {})], lambda: None, "stopped"),
        ([("join", {"pid": "self"}), ("error", {"phase": "connect", "reason": "revoked"})],
         lambda: None, "refused"),
    ],
)  # fmt: skip
def test_center_status_connection_is_judged_from_join_and_the_superlink(
    tmp_path, events, probe, state
):
    pids = {"self": os.getpid(), "dead": _dead_pid()}
    records = [
        {"time": float(i), "event": name,
         **{k: pids.get(v, v) if k == "pid" else v for k, v in details.items()}}
        for i, (name, details) in enumerate(events)
    ]  # fmt: skip
    _events(tmp_path, *records)
    assert center_status(tmp_path, "a", probe)["connection"]["state"] == state


def test_center_status_cli_writes_json_and_prometheus_and_checks(tmp_path, capsys):
    state = tmp_path / "state"
    _events(state.mkdir() or state, {"time": 1.0, "event": "join", "pid": _dead_pid()})
    args = ["status", "--state", str(state), "--json", str(tmp_path / "s.json"),
            "--prometheus", str(tmp_path / "s.prom")]  # fmt: skip
    assert center(args) == 0
    assert center([*args, "--check"]) == 1  # join is not running
    assert json.loads((tmp_path / "s.json").read_text())["connection"]["state"] == "stopped"
    assert 'feddel_center_connected{center="state"} 0' in (tmp_path / "s.prom").read_text()
    assert "connection: stopped" in capsys.readouterr().out
