"""Deployment with Flower's own engine, proven on loopback with real processes.

The `integration` tests start `feddel-coordinator start` (flower-superlink with TLS and
SuperNode authentication), three `feddel-center join` (flower-supernode, each with its own key,
data and state), and `feddel-coordinator curate` (flwr run), all on 127.0.0.1 with ports chosen
free; every process they start is stopped afterwards, also when a test fails. They are slow by
nature: Flower 1.41 runs every message in a fresh `flwr-clientapp` process that imports
FedDEL's ClientApp (torch, timm: 5-10 s of CPU each on 2 cores), 3 centers x 7 messages.

The other tests check the pieces without processes: site files, TOML output, how a stopped
SuperNode's output becomes one sentence, and `feddel-center status`.
"""

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from feddel.client.commands.join import explain_failure, node_config_values
from feddel.client.commands.status import center_status
from feddel.client.site import load_center_site
from feddel.common.config import CurationConfig
from feddel.common.deployment.certs import add_center, init_authority, parse_hosts
from feddel.common.deployment.sites import read_site_config, toml_document
from feddel.common.errors import ConfigError, DataError
from feddel.common.io import read_csv
from feddel.server.deployment.site import load_site
from feddel.server.deployment.submit import write_app
from feddel.simulations.federated import run_federated
from feddel.simulations.synth import generate_federation

BIN = Path(sys.executable).parent
CENTERS = ("center-00", "center-01", "center-02")
ROUND = {"k": 4, "image-size": 32, "min-centers": 3, "connect-timeout": 300.0}
BUDGET = 0.1
RUN = "deployed"
READY_TIMEOUT = 180.0
ROUND_TIMEOUT = 1200.0
STOP_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _write_center_toml(path: Path, **values: str | int) -> Path:
    """A center.toml; values: name, data, state, address, ca, key, port."""
    path.write_text(
        f"[center]\n{toml_document({k: values[k] for k in ('name', 'data', 'state')})}"
        f"[superlink]\n{toml_document({k: values[k] for k in ('address', 'ca', 'key')})}"
        f"[supernode]\n{toml_document({'runtime-port': values['port']})}"
    )
    return path


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
        process = self.running[name][0]
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} did not exit within {timeout:g} s:\n{self.tail(name)}")
        finally:
            self.stop(name)
        return process.returncode, log.read_text(errors="replace")

    def wait_for(self, name: str, text: str, timeout: float = READY_TIMEOUT) -> None:
        process, log = self.running[name]
        deadline = time.monotonic() + timeout
        while text not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                state = "exited" if process.poll() is not None else f"silent for {timeout:g} s"
                pytest.fail(f"{name} {state} before printing {text!r}:\n{self.tail(name)}")
            time.sleep(0.5)

    def tail(self, name: str, lines: int = 40) -> str:
        return "\n".join(self.running[name][1].read_text(errors="replace").splitlines()[-lines:])

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
def site(tmp_path_factory):
    """Data of 3 centers, a CA and SuperLink certificate, each center's key and center.toml,
    plus a stranger's key (never registered) and another federation's CA."""
    root = tmp_path_factory.mktemp("deploy")
    generate_federation(root / "data", centers=len(CENTERS), scale="small", seed=1, size=32)
    init_authority(root / "certs", parse_hosts("127.0.0.1"))
    init_authority(root / "other", parse_hosts("127.0.0.1"))
    stranger = add_center(root / "other", "stranger")
    port = _free_port()
    tomls = {}
    for name in CENTERS:
        keys = add_center(root / "certs", name)
        tomls[name] = _write_center_toml(
            root / f"{name}.toml", name=name, data=str(root / "data" / name),
            state=str(root / "state" / name), address=f"127.0.0.1:{port}",
            ca=str(keys.ca_cert), key=str(keys.private_key), port=_free_port(),
        )  # fmt: skip
    common = {"name": "stranger", "data": str(root / "data" / CENTERS[0]),
              "address": f"127.0.0.1:{port}"}  # fmt: skip
    tomls["stranger"] = _write_center_toml(
        root / "stranger.toml", **common, state=str(root / "state" / "stranger"),
        ca=str(root / "certs" / "ca.crt"), key=str(stranger.private_key), port=_free_port(),
    )  # fmt: skip
    tomls["other-ca"] = _write_center_toml(
        root / "other-ca.toml", **common, state=str(root / "state" / "other-ca"),
        ca=str(root / "other" / "ca.crt"),
        key=str(root / "certs" / "centers" / CENTERS[0] / "center.key"), port=_free_port(),
    )  # fmt: skip
    return {"root": root, "port": port, "tomls": tomls}


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


def _start_superlink(site, processes, name: str = "superlink") -> Path:
    root = site["root"]
    log = processes.start(name, [
        str(BIN / "feddel-coordinator"), "start", "--certs", str(root / "certs"),
        "--state", str(root / "link"), "--host", "127.0.0.1", "--port", str(site["port"]),
    ])  # fmt: skip
    processes.wait_for(name, "SuperLink ready")
    return log


@pytest.fixture(scope="module")
def superlink(site, processes):
    return _start_superlink(site, processes)


def _join(site, processes, toml: str) -> tuple[int, str]:
    argv = [str(BIN / "feddel-center"), "join", "--config", str(site["tomls"][toml])]
    return processes.run(f"join-{toml}", argv)


@pytest.mark.integration
def test_superlink_registers_every_center_key(site, superlink):
    records = json.loads((site["root"] / "link" / "registered.json").read_text())
    assert sorted(records) == list(CENTERS)
    assert all(record["node"].isdigit() for record in records.values())
    assert superlink.read_text().count("key registered (node") == len(CENTERS)


@pytest.mark.integration
def test_join_with_an_unregistered_key_is_refused(site, processes, superlink):
    code, output = _join(site, processes, "stranger")
    assert code == 1, output[-3000:]  # exit 1: systemd retries, the key may be registered later
    error = output.strip().splitlines()[-1]
    assert error.startswith("failed: the SuperLink at") and "is not registered" in error
    status = center_status(site["root"] / "state" / "stranger")
    assert "is not registered" in status["last_error"]["reason"]


@pytest.mark.integration
def test_join_trusting_another_ca_cannot_connect(site, processes, superlink):
    code, output = _join(site, processes, "other-ca")
    assert code == 2, output[-3000:]
    error = output.strip().splitlines()[-1]
    assert "is not signed by the CA in" in error and str(site["root"] / "other/ca.crt") in error


@pytest.mark.integration
def test_plaintext_connection_to_the_tls_superlink_fails(site, processes, superlink):
    plain = http.client.HTTPConnection("127.0.0.1", site["port"], timeout=10)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        plain.request("GET", "/health")
        plain.getresponse()
    context = ssl.create_default_context(cafile=str(site["root"] / "certs" / "ca.crt"))
    tls = http.client.HTTPSConnection("127.0.0.1", site["port"], timeout=10, context=context)
    tls.request("GET", "/health")
    assert tls.getresponse().status == 200  # the same port answers over TLS
    code, output = processes.run("plaintext-supernode", [
        str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{site['port']}",
        "--max-retries", "1", "--port", str(_free_port()),
    ])  # fmt: skip
    assert code != 0
    assert "Failed to initialize the connection to the SuperLink" in output
    assert "Server disconnected without sending a response" in output


@pytest.mark.integration
def test_deployed_round_matches_the_inprocess_simulation(site, processes, superlink, tmp_path):
    root = site["root"]
    for name in CENTERS:
        processes.start(name, [str(BIN / "feddel-center"), "join", "--config",
                               str(site["tomls"][name])])  # fmt: skip
    argv = [
        str(BIN / "feddel-coordinator"), "curate", "--superlink", f"127.0.0.1:{site['port']}",
        "--certs", str(root / "certs"), "--state", str(root / "link"),
        "--out", str(root / "runs"), "--run-name", RUN, "--budget", str(BUDGET),
        "--method", "feddel", *[f"--set={key}={value}" for key, value in ROUND.items()],
    ]  # fmt: skip
    code, output = processes.run("curate", argv, timeout=ROUND_TIMEOUT)
    assert code == 0, output[-5000:]
    for phase in ("inventory", "keys", "seed", "lloyd", "score", "select"):
        assert f"feddel query.{phase}: 3 of 3 centers answered" in output
    deployed = json.loads((root / "runs" / RUN / "summary.json").read_text())
    assert (root / "runs" / RUN / "report.html").is_file()
    deployed_rows = set()
    for name in CENTERS:
        manifest = root / "state" / name / f"selection-{RUN}-0.csv"
        assert manifest.is_file(), f"{name} wrote no manifest"
        deployed_rows |= {(name, row["sample_id"]) for row in read_csv(manifest)}

    config = CurationConfig.from_run_config({**ROUND, "budget": BUDGET, "method": "feddel"})
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

    status = center_status(root / "state" / CENTERS[0])
    assert [run["run"] for run in status["runs"]] == [RUN]
    assert status["manifests"][0]["present"] and status["last_error"] is None


@pytest.mark.integration
def test_superlink_restart_keeps_registered_nodes(site, processes, superlink):
    """The database file, not a re-registration, brings the centers' node ids back."""
    before = (site["root"] / "link" / "registered.json").read_text()
    assert processes.stop("superlink") == 0
    log = _start_superlink(site, processes, name="superlink-restarted")
    assert (site["root"] / "link" / "registered.json").read_text() == before
    assert "key registered" not in log.read_text()


# --- pieces, without processes ------------------------------------------------------------


def test_toml_document_round_trips_awkward_strings():
    values = {"a": 'q"uo\\te', "b": "line\nbreak\ttab\x7f", "c": "Zürich 🏥", "d": 3, "e": 0.1,
              "f": True}  # fmt: skip
    assert tomllib.loads(toml_document(values)) == values


def test_center_site_resolves_relative_paths_next_to_the_file(tmp_path):
    toml = _write_center_toml(
        tmp_path / "center.toml", name="hospital-a", data="images", state="state",
        address="link.example.org:9093", ca="ca.crt", key="center.key", port=9194,
    )  # fmt: skip
    site = load_center_site(toml)
    assert (site.data, site.state, site.key) == (
        tmp_path / "images", tmp_path / "state", tmp_path / "center.key",
    )  # fmt: skip
    assert site.flwr_home == tmp_path / "state" / "flwr"
    assert node_config_values(site) == {
        "data-path": str(tmp_path / "images"), "state-path": str(tmp_path / "state"),
        "center-name": "hospital-a",
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
def test_center_site_rejects_addresses_that_are_not_host_port(tmp_path, address):
    toml = _write_center_toml(
        tmp_path / "center.toml", name="a", data="d", state="s", address=address, ca="c",
        key="k", port=9094,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="must"):
        load_center_site(toml)


def test_coordinator_site_flags_override_the_file_and_round_keys_are_checked(tmp_path):
    (tmp_path / "coordinator.toml").write_text(
        '[coordinator]\ncerts = "certs"\nport = 9100\n[round]\nmin-centers = 31\n'
    )
    site = load_site(tmp_path / "coordinator.toml", port=9200, state=None)
    assert (site.certs, site.port, site.host) == (tmp_path / "certs", 9200, "0.0.0.0")
    assert site.local_address == "127.0.0.1:9200" and site.round == {"min-centers": 31}
    (tmp_path / "coordinator.toml").write_text("[round]\nmin-centers = 0\n")
    with pytest.raises(ConfigError, match="min-centers=0 must be >= 1"):
        load_site(tmp_path / "coordinator.toml")


def test_generated_app_declares_feddels_components_and_config_defaults(tmp_path):
    project = tomllib.loads((write_app(tmp_path) / "pyproject.toml").read_text())
    app = project["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "feddel.server.deployment.deployed:app",
        "clientapp": "feddel.client.app:app",
    }
    assert app["config"] == CurationConfig().to_run_config()
    repo = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert project["project"]["version"] == repo["project"]["version"]


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


@pytest.mark.parametrize(
    ("output", "retry", "expected"),
    [
        (_UNREGISTERED, True, "either its key /k/center.key is not registered (ask the "
         "coordinator to run `feddel-coordinator certs add-center hospital-a`"),
        (_OTHER_CA, False, "the server at link:9093 is not signed by the CA in /k/ca.crt"),
        (_WRONG_NAME, False, "the SuperLink's certificate does not name the host in link:9093"),
        ("INFO : start\nERROR : Exit Code: 999\nsomething new\nmore\nINFO : bye", True,
         "the SuperNode stopped: ERROR : Exit Code: 999 something new more"),
    ],
)  # fmt: skip
def test_explain_failure_turns_flowers_output_into_one_sentence(tmp_path, output, retry, expected):
    toml = _write_center_toml(
        tmp_path / "c.toml", name="hospital-a", data="d", state="s", address="link:9093",
        ca="/k/ca.crt", key="/k/center.key", port=9094,
    )  # fmt: skip
    failure = explain_failure(output, load_center_site(toml))
    assert expected in failure.reason and "\n" not in failure.reason
    assert failure.retry is retry


def test_center_status_counts_runs_manifests_and_the_last_error(tmp_path):
    events = [
        {"time": 1.0, "event": "join", "superlink": "link:9093"},
        {"time": 2.0, "event": "inventory", "run": "r1", "samples": 40},
        {"time": 3.0, "event": "manifest", "run": "r1", "round": 0, "selected": 4,
         "path": "selection-r1-0.csv"},
        {"time": 4.0, "event": "inventory", "run": "r2", "samples": 41},
        {"time": 5.0, "event": "error", "phase": "score", "reason": "disk full"},
        {"time": 6.0, "event": "error", "phase": "connect", "reason": "[code: 2004] refused"},
    ]  # fmt: skip
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (tmp_path / "selection-r1-0.csv").write_text("center,file\n")
    status = center_status(tmp_path)
    assert [(r["run"], r.get("samples"), r.get("selected")) for r in status["runs"]] == [
        ("r1", 40, 4), ("r2", 41, None),
    ]  # fmt: skip
    assert [(m["run"], m["selected"], m["present"]) for m in status["manifests"]] == [
        ("r1", 4, True)
    ]
    assert status["errors"] == 2 and status["last_error"]["reason"] == "[code: 2004] refused"
    assert status["last_connection"]["event"] == "join"
    with pytest.raises(DataError, match="has not joined"):
        center_status(tmp_path / "missing")


def test_read_site_config_accepts_ints_for_numbers_only(tmp_path):
    (tmp_path / "s.toml").write_text("[a]\nx = 1\ny = true\n")
    assert read_site_config(tmp_path / "s.toml", {"a": {"x": float, "y": bool}}) == {
        "a": {"x": 1, "y": True}
    }
    with pytest.raises(ConfigError, match="y = True must be an integer"):
        read_site_config(tmp_path / "s.toml", {"a": {"x": int, "y": int}})
