"""Deployment with Flower's own engine, proven on loopback with real processes.

One SuperLink (`feddel-coordinator start --config`: TLS, SuperNode and operator
authentication, the gate), three centers (`feddel-center join`, each with a key it made
itself, its own data and state), rounds submitted with `feddel-coordinator curate`, all on
127.0.0.1 with ports chosen free. The tests run in file order and share the processes; each
proves one promise of deploy/README.md:

1. keys enter the SuperLink's registry only through `certs add-center`, and a center added to a
   running SuperLink joins without a restart and without touching the others;
2. the operator APIs (Control, /docs) are closed to the centers' side and need a token, so an
   unauthenticated submit is refused, on the wire and in the audit log;
3. a rogue key, a second SuperNode with a center's key, another CA, plaintext and an expired
   certificate are refused with a one-line reason on both sides;
4. a center's policy refuses a disallowed method, with its reason at the center and the
   coordinator, and both audit logs record it;
5. a SuperLink killed mid-round ends that round with one line, comes back with its registry
   from the database, and the next round (centers untouched) selects exactly what the
   in-process simulation selects;
6. `certs revoke` removes a center in one command while the others stay connected;
7. both status commands report connection, last round, phases and errors.

They are slow by nature: Flower 1.41 runs every message in a fresh `flwr-clientapp` process
that imports FedDEL's ClientApp (torch, timm: 5-15 s of CPU each on 2 cores). Every process a
test starts is stopped afterwards, also when it fails.
"""

import datetime
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from feddel.client.commands.status import center_status
from feddel.common.config import CurationConfig
from feddel.common.deployment import certs
from feddel.common.deployment.audit import AuditLog
from feddel.common.io import read_csv
from feddel.server.deployment.operators import add_operator
from feddel.simulations.federated import run_federated
from feddel.simulations.synth import generate_federation

BIN = Path(sys.executable).parent
CENTERS = ("center-00", "center-01", "center-02")
LATE = "center-02"  # admitted while the SuperLink runs; its policy allows feddel only
ROUND = {"k": 4, "image-size": 32, "min-centers": 3, "connect-timeout": 300.0,
         "method": "feddel", "budget": 0.1}  # fmt: skip
RUN = "deployed"
READY_TIMEOUT = 180.0
ROUND_TIMEOUT = 1500.0
STOP_TIMEOUT = 30.0
pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Processes:
    """Every process a test module starts, each in its own session so that its Flower children
    (SuperExec, ClientApps) are stopped with it."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root = root
        self.env = env
        self.running: dict[str, tuple[subprocess.Popen, Path]] = {}

    def start(self, name: str, argv: list[str]) -> Path:
        log = self.root / f"{name}.log"
        handle = open(log, "w")  # noqa: SIM115 - closed when the process is stopped
        process = subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        handle.close()
        self.running[name] = (process, log)
        return log

    def run(self, name: str, argv: list[str], timeout: float = READY_TIMEOUT) -> tuple[int, str]:
        """Run to completion; return its exit code and output. Its session is stopped after it
        exits, because Flower's helpers (flower-superexec) can outlive their parent."""
        log = self.start(name, argv)
        return self.finish(name, timeout), log.read_text(errors="replace")

    def finish(self, name: str, timeout: float) -> int:
        process = self.running[name][0]
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} did not exit within {timeout:g} s:\n{self.tail(name)}")
        finally:
            self.stop(name)
        return process.returncode

    def wait_for(self, name: str, text: str, timeout: float = READY_TIMEOUT, count=1) -> None:
        process, log = self.running[name]
        deadline = time.monotonic() + timeout
        while log.read_text(errors="replace").count(text) < count:
            if process.poll() is not None or time.monotonic() > deadline:
                state = "exited" if process.poll() is not None else f"silent for {timeout:g} s"
                pytest.fail(f"{name} {state} before printing {text!r}:\n{self.tail(name)}")
            time.sleep(0.5)

    def output(self, name: str) -> str:
        return self.running[name][1].read_text(errors="replace")

    def tail(self, name: str, lines: int = 40) -> str:
        return "\n".join(self.output(name).splitlines()[-lines:])

    def kill(self, name: str) -> None:
        """SIGKILL the whole session at once: a power cut, not a shutdown."""
        process, _ = self.running.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        _wait_for_session_end(process.pid, 10.0)

    def stop(self, name: str) -> int:
        """SIGTERM to the whole session, SIGKILL after STOP_TIMEOUT s."""
        process, _ = self.running.pop(name)
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(wait)
                _wait_for_session_end(process.pid, wait)
                break
            except subprocess.TimeoutExpired:
                continue
        return process.returncode

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)


def _wait_for_session_end(pgid: int, timeout: float) -> None:
    """Flower's children outlive their parent by a few seconds; wait until the group is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    raise subprocess.TimeoutExpired(f"process group {pgid}", timeout)


@pytest.fixture(scope="module")
def site(tmp_path_factory, center_toml):
    """Data of 3 centers, each center's own key pair (only two admitted yet) and center.toml,
    coordinator.toml, an operator token, a stranger's key and another federation's CA."""
    root = tmp_path_factory.mktemp("deploy")
    generate_federation(root / "data", centers=len(CENTERS), scale="small", seed=1, size=32)
    certs.init_authority(root / "certs", certs.parse_hosts("127.0.0.1"))
    certs.init_authority(root / "other", certs.parse_hosts("127.0.0.1"))
    port = _free_port()
    (root / "coordinator.toml").write_text(
        f'[coordinator]\ncerts = "certs"\nstate = "link"\nhost = "127.0.0.1"\nport = {port}\n'
        'runs = "runs"\n[round]\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in ROUND.items())
    )
    tomls, keys = {}, {}
    for name in (*CENTERS, "stranger"):
        keys[name] = certs.make_center_key(root / "keys" / name, name)
    for name in CENTERS:
        policy = 'methods = ["feddel"]' if name == LATE else None
        tomls[name] = center_toml(
            root / f"{name}.toml", policy, name=name, data=str(root / "data" / name),
            state=str(root / "state" / name), address=f"127.0.0.1:{port}",
            ca=str(root / "certs" / "ca.crt"), key=str(keys[name][0]), port=_free_port(),
        )  # fmt: skip
        if name != LATE:
            certs.add_center(root / "certs", name, keys[name][1])
    common = {"data": str(root / "data" / CENTERS[0]), "address": f"127.0.0.1:{port}"}
    for name, ca, key in (
        ("stranger", root / "certs" / "ca.crt", keys["stranger"][0]),
        ("other-ca", root / "other" / "ca.crt", keys[CENTERS[0]][0]),
        ("duplicate", root / "certs" / "ca.crt", keys[CENTERS[0]][0]),
    ):
        tomls[name] = center_toml(
            root / f"{name}.toml", name=name, state=str(root / "state" / name), ca=str(ca),
            key=str(key), port=_free_port(), **common,
        )  # fmt: skip
    (root / "alice.token").write_text(add_operator(root / "link", "alice") + "\n")
    (root / "forged.token").write_text("alice:" + "x" * 43 + "\n")
    return {"root": root, "port": port, "tomls": tomls, "keys": keys}


@pytest.fixture(scope="module")
def processes(site):
    env = {
        **os.environ,
        "FLWR_HOME": str(site["root"] / "flwr-home"),  # nothing lands in ~/.flwr
        # flower-supernode, run directly below, starts flower-superexec by name
        "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
        "FLWR_TELEMETRY_ENABLED": "0",
        "OMP_NUM_THREADS": "1",  # inherited by every ClientApp process: 2 shared cores
        "MKL_NUM_THREADS": "1",
    }
    running = Processes(site["root"], env)
    yield running
    running.stop_all()


def _coordinator(site, *args: str) -> list[str]:
    return [
        str(BIN / "feddel-coordinator"),
        *args,
        "--config",
        str(site["root"] / "coordinator.toml"),
    ]


def _start_superlink(site, processes, name: str) -> Path:
    log = processes.start(name, _coordinator(site, "start"))
    processes.wait_for(name, "SuperLink ready")
    return log


@pytest.fixture(scope="module")
def superlink(site, processes):
    return _start_superlink(site, processes, "superlink")


def _registered(site) -> dict:
    return json.loads((site["root"] / "link" / "registered.json").read_text())


def _join(name: str, site) -> list[str]:
    return [str(BIN / "feddel-center"), "join", "--config", str(site["tomls"][name])]


def _last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


# --- 1. admission only through the coordinator; a center added without a restart -------------


def test_only_admitted_keys_are_registered_and_a_late_center_joins_without_a_restart(
    site, processes, superlink
):
    first = _registered(site)
    assert sorted(first) == [c for c in CENTERS if c != LATE]
    for name in CENTERS:
        if name != LATE:
            processes.start(name, _join(name, site))
    admitted_files = {p: p.read_bytes() for p in (site["root"] / "certs").rglob("*") if p.is_file()}
    link_pid = processes.running["superlink"][0].pid
    code, output = processes.run("add-late", [
        str(BIN / "feddel-coordinator"), "certs", "add-center", LATE, "--out",
        str(site["root"] / "certs"), "--public-key", str(site["keys"][LATE][1]),
    ])  # fmt: skip
    assert code == 0 and certs.public_key_fingerprint(site["keys"][LATE][1]) in output
    processes.wait_for("superlink", f"center {LATE}: key registered (node", timeout=60)
    processes.start(LATE, _join(LATE, site))
    for name in CENTERS:
        processes.wait_for("superlink", f"center {name} connected from 127.0.0.1")
    after = _registered(site)
    assert {n: after[n] for n in first} == first  # nothing re-issued to the others
    assert all(p.read_bytes() == data for p, data in admitted_files.items())
    assert processes.running["superlink"][0].pid == link_pid  # no restart
    assert not any((site["root"] / "certs" / "centers").rglob("center.key"))  # no private key


# --- 2. operator APIs: closed to the centers' side, token required ---------------------------


def test_operator_apis_are_closed_to_the_centers_side(site, superlink):
    context = ssl.create_default_context(cafile=str(site["root"] / "certs" / "ca.crt"))
    for source, expected in (("127.0.0.2", 403), ("127.0.0.1", 200)):  # a center / the host
        for path in ("/docs", "/openapi.json"):
            link = http.client.HTTPSConnection(
                "127.0.0.1", site["port"], timeout=10, context=context, source_address=(source, 0)
            )
            link.request("GET", path)
            assert link.getresponse().status == expected, (source, path)
    assert "answers the coordinator's operators only" in superlink.read_text()


def test_an_unauthenticated_submit_is_refused(site, processes, superlink):
    code, output = processes.run("curate-forged", _coordinator(
        site, "curate", "--operator-token", str(site["root"] / "forged.token"),
        "--run-name", "forged",
    ))  # fmt: skip
    assert code == 1 and "operator authentication failed" in output
    audit = AuditLog.in_folder(site["root"] / "link").entries()
    assert ("start-run", "unauthenticated", "refused") in [
        (e["action"], e["actor"], e["outcome"]) for e in audit
    ]
    assert not (site["root"] / "runs" / "forged").exists()


# --- 3. bad input refused with one line on both sides ---------------------------------------


def test_a_rogue_key_is_refused_at_registration_and_at_connection(site, processes, superlink):
    env = {**processes.env, "FLWR_HOME": str(site["root"] / "link" / "flwr")}  # the service's
    register = subprocess.run(
        [str(BIN / "flwr"), "supernode", "register", str(site["keys"]["stranger"][1]), "feddel"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "not admitted by the coordinator" in register.stdout + register.stderr
    code, output = processes.run("join-stranger", _join("stranger", site))
    assert code == 1, output[-3000:]  # exit 1: systemd retries, the key may be admitted later
    error = _last_line(output)
    assert error.startswith("failed: the SuperLink at") and "is not registered with this" in error
    fingerprint = certs.public_key_fingerprint(site["keys"]["stranger"][1])
    assert f"refused a SuperNode from 127.0.0.1: this SuperNode's key ({fingerprint})" in (
        superlink.read_text()
    )
    status = center_status(site["root"] / "state" / "stranger")
    assert status["connection"]["state"] == "refused"


def test_a_second_supernode_with_a_centers_key_is_refused(site, processes, superlink):
    code, output = processes.run("join-duplicate", _join("duplicate", site))
    assert code == 1, output[-3000:]
    assert f"center {CENTERS[0]} is already connected from another SuperNode" in _last_line(output)
    assert f"refused a SuperNode from 127.0.0.1: center {CENTERS[0]} is already connected" in (
        superlink.read_text()
    )


def test_join_trusting_another_ca_cannot_connect(site, processes, superlink):
    code, output = processes.run("join-other-ca", _join("other-ca", site))
    assert code == 2, output[-3000:]
    error = _last_line(output)
    assert "is not signed by the CA in" in error and str(site["root"] / "other/ca.crt") in error
    assert "the client does not trust this SuperLink's CA" in superlink.read_text()


def test_plaintext_connection_to_the_tls_superlink_fails(site, processes, superlink):
    code, output = processes.run("plaintext-supernode", [
        str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{site['port']}",
        "--max-retries", "1", "--port", str(_free_port()),
    ])  # fmt: skip
    assert code != 0
    assert "Server disconnected without sending a response" in output
    assert "the client spoke plain HTTP, not TLS" in superlink.read_text()


def test_an_expired_certificate_is_refused_on_both_sides(site, processes, center_toml, monkeypatch):
    root = site["root"] / "expired"
    certs.init_authority(root, certs.parse_hosts("127.0.0.1"))
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=400)
    monkeypatch.setattr(certs, "_now", lambda: long_ago)
    certs.init_authority(root, certs.parse_hosts("127.0.0.1"), days=1, force=True)
    monkeypatch.undo()
    code, output = processes.run("start-expired", [
        str(BIN / "feddel-coordinator"), "start", "--certs", str(root), "--state",
        str(root / "link"), "--host", "127.0.0.1", "--port", str(_free_port()),
    ])  # fmt: skip
    assert code == 2 and "superlink.crt expired on" in _last_line(output)
    port = _free_port()  # the same files served anyway: what a center sees
    processes.start("link-expired", [
        sys.executable, "-m", "feddel.server.deployment.linkserver", "--certs", str(root),
        "--state", str(root / "link"), "--", "--ssl-certfile", str(root / "superlink.crt"),
        "--ssl-keyfile", str(root / "superlink.key"), "--ssl-ca-certfile", str(root / "ca.crt"),
        "--enable-supernode-auth", "--database", ":flwr-in-memory:", "--isolation", "process",
        "--host", "127.0.0.1", "--port", str(port),
    ])  # fmt: skip
    processes.wait_for("link-expired", "Uvicorn running on")
    toml = center_toml(
        root / "center.toml", name="late", data=str(site["root"] / "data" / CENTERS[0]),
        state=str(root / "state"), address=f"127.0.0.1:{port}", ca=str(root / "ca.crt"),
        key=str(site["keys"]["stranger"][0]), port=_free_port(),
    )  # fmt: skip
    code, output = processes.run("join-expired", [str(BIN / "feddel-center"), "join",
                                                  "--config", str(toml)])  # fmt: skip
    assert code == 2 and "the SuperLink's certificate has expired" in _last_line(output)
    processes.wait_for("link-expired", "the client finds the SuperLink certificate expired")
    processes.stop("link-expired")


# --- 4. a center's policy refuses a round -------------------------------------------------


def test_a_center_policy_refuses_a_disallowed_method_on_both_sides(site, processes, superlink):
    code, output = processes.run("curate-random", _coordinator(
        site, "curate", "--method", "random", "--run-name", "random-refused",
        "--set", "min-fraction=1.0",
    ), timeout=ROUND_TIMEOUT)  # fmt: skip
    reason = "method 'random' is not allowed at this center (allowed: feddel"
    line = _last_line(output)  # the coordinator's one line names the center and its reason
    assert code == 1 and LATE in line and reason in line
    audit = AuditLog.in_folder(site["root"] / "state" / LATE).entries()
    refused = [e for e in audit if e["outcome"] == "refused"]
    assert [(e["run"], e["actor"], e["method"]) for e in refused] == [
        ("random-refused", "coordinator", "random")
    ]
    assert center_status(site["root"] / "state" / LATE)["refused_rounds"][0]["reason"].startswith(
        reason
    )
    allowed = AuditLog.in_folder(site["root"] / "link").entries()
    assert ("start-run", "coordinator", "allowed", "random-refused") in [
        (e["action"], e["actor"], e["outcome"], e.get("run-name")) for e in allowed
    ]


# --- 5. a SuperLink killed mid-round; the next round succeeds untouched ---------------------


def test_a_superlink_killed_mid_round_fails_it_cleanly_and_the_next_round_succeeds(
    site, processes, superlink, tmp_path
):
    root = site["root"]
    registered = _registered(site)
    joins = {name: processes.running[name][0].pid for name in CENTERS}
    processes.start("curate-killed", _coordinator(site, "curate", "--run-name", "killed"))
    processes.wait_for("curate-killed", "feddel query.keys: 3 of 3 centers answered",
                       timeout=ROUND_TIMEOUT)  # fmt: skip
    processes.kill("superlink")
    code = processes.finish("curate-killed", timeout=300)
    output = (root / "curate-killed.log").read_text()
    assert code == 1 and _last_line(output).startswith("failed: lost the SuperLink at")
    restarted = _start_superlink(site, processes, "superlink-restarted")
    assert _registered(site) == registered and "key registered" not in restarted.read_text()

    code, output = processes.run("curate", _coordinator(site, "curate", "--run-name", RUN),
                                 timeout=ROUND_TIMEOUT)  # fmt: skip
    assert code == 0, output[-5000:]
    assert {name: processes.running[name][0].pid for name in CENTERS} == joins  # untouched
    for phase in ("inventory", "keys", "seed", "lloyd", "score", "select"):
        assert f"feddel query.{phase}: 3 of 3 centers answered" in output
    deployed = json.loads((root / "runs" / RUN / "summary.json").read_text())
    assert (root / "runs" / RUN / "report.html").is_file()
    deployed_rows = set()
    for name in CENTERS:
        manifest = root / "state" / name / f"selection-{RUN}-0.csv"
        assert manifest.is_file(), f"{name} wrote no manifest"
        deployed_rows |= {(name, row["sample_id"]) for row in read_csv(manifest)}
        assert not (root / "state" / name / "selection-killed-0.csv").exists()

    config = CurationConfig.from_run_config(ROUND)
    for name in CENTERS:  # the same centers: the same secret keys their noise in both rounds
        (tmp_path / "state" / name).mkdir(parents=True)
        secret = root / "state" / name / "noise.key"
        shutil.copyfile(secret, tmp_path / "state" / name / secret.name)
    reference = run_federated(
        root / "data", tmp_path / RUN, config, engine="inprocess", state_root=tmp_path / "state"
    )
    assert deployed["failed_centers"] == [] and deployed["centers"] == len(CENTERS)
    assert deployed["total_samples"] == reference.total_samples
    assert deployed["selected"] == reference.selected == len(deployed_rows) > 0
    assert {c: v["selected"] for c, v in deployed["per_center"].items()} == {
        c: line.selected for c, line in reference.per_center.items()
    }
    reference_rows = {
        (r["center"], r["sample_id"]) for r in read_csv(tmp_path / RUN / "selection.csv")
    }
    assert deployed_rows == reference_rows


# --- 6 and 7. status; revoke one center in one command ---------------------------------------


def test_status_reports_connection_rounds_phases_and_errors(site, processes):
    root = site["root"]
    code, output = processes.run("status", _coordinator(
        site, "status", "--json", str(root / "status.json"), "--prometheus",
        str(root / "status.prom"),
    ))  # fmt: skip
    assert code == 0, output
    status = json.loads((root / "status.json").read_text())
    assert [(c["center"], c["connection"]) for c in status["centers"]] == [
        (name, "online") for name in CENTERS
    ]
    runs = {r["run"]: r for r in status["runs"]}
    # killed with its SuperLink: interrupted, or failed when its ServerApp saw the loss first
    assert runs["killed"]["state"].startswith(("interrupted", "failed"))
    assert runs[RUN]["state"] == "finished" and runs[RUN]["selected"] > 0
    assert runs["random-refused"]["state"] == "failed"
    assert status["errors"] == [] and "feddel_superlink_up 1" in (root / "status.prom").read_text()
    code, output = processes.run("center-status", [
        str(BIN / "feddel-center"), "status", "--config", str(site["tomls"][CENTERS[0]]),
        "--json", str(root / "center.json"), "--check",
    ])  # fmt: skip
    assert code == 0, output
    center = json.loads((root / "center.json").read_text())
    assert center["connection"]["state"] == "connected"
    assert center["last_round"]["run"] == RUN and center["last_round"]["phases"][-1] == "select"


def test_revoke_removes_one_center_in_one_command(site, processes):
    code, output = processes.run("revoke", _coordinator(site, "certs", "revoke", LATE))
    assert code == 0 and "unregistered: its SuperNode is refused" in output
    code = processes.finish(LATE, timeout=180)
    error = _last_line((site["root"] / f"{LATE}.log").read_text())
    assert code == 2 and f"key was revoked by the coordinator (center {LATE})" in error
    processes.run("status-after", _coordinator(site, "status", "--json",
                                               str(site["root"] / "after.json")))  # fmt: skip
    after = json.loads((site["root"] / "after.json").read_text())
    assert [(c["center"], c["connection"]) for c in after["centers"]] == [
        (name, "online") for name in CENTERS if name != LATE
    ]
