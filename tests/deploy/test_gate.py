"""The SuperLink gate (server/deployment/gate.py), driven as an ASGI app with Flower's own
request messages; the app behind it is a stand-in that records what reached it."""

import asyncio
import io
import json
import zipfile

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.proto.control_pb2 import RegisterNodeRequest, StartRunRequest, StopRunRequest
from flwr.proto.fleet_pb2 import ActivateNodeRequest

from feddel.common.deployment.audit import AuditLog
from feddel.common.deployment.certs import (
    add_center,
    init_authority,
    make_center_key,
    parse_hosts,
    revoke_center,
)
from feddel.server.deployment.fab import write_app
from feddel.server.deployment.gate import Gate, GateSettings
from feddel.server.deployment.operators import OperatorRegistry, add_operator
from feddel.server.deployment.site import operator_networks

FLOWER_REFUSAL = json.dumps({"code": 2004, "detail": "Failed to activate SuperNode."}).encode()


class Behind:
    """Flower's app as the gate sees it: answers `status` and remembers each request."""

    def __init__(self, status=200, body=b"ok"):
        self.status, self.body, self.seen = status, body, []

    async def __call__(self, scope, receive, send):
        message = await receive()
        self.seen.append((scope["path"], message.get("body", b"")))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(self.body)),
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def call(gate, path, body=b"", peer="127.0.0.1", token=None, method="POST"):
    """One request through the gate: (status, JSON or raw body)."""
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    scope = {"type": "http", "method": method, "path": path, "headers": headers,
             "client": (peer, 50000)}  # fmt: skip
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(gate(scope, receive, send))
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    length = dict(sent[0]["headers"]).get(b"content-length")
    assert length is None or int(length) == len(payload)
    try:
        return sent[0]["status"], json.loads(payload)
    except ValueError:
        return sent[0]["status"], payload


@pytest.fixture
def site(tmp_path):
    init_authority(tmp_path / "certs", parse_hosts("127.0.0.1"))
    keys = {}
    for name in ("hospital-a", "hospital-b"):
        _, public = make_center_key(tmp_path / "keys" / name, name)
        add_center(tmp_path / "certs", name, public)
        keys[name] = public
    token = add_operator(tmp_path / "state", "alice")
    settings = GateSettings(
        certs=tmp_path / "certs",
        operators=OperatorRegistry(tmp_path / "state"),
        networks=operator_networks(["10.0.5.0/24"]),
        audit=AuditLog.in_folder(tmp_path / "state"),
    )
    return {"root": tmp_path, "settings": settings, "token": token, "keys": keys}


def _pem(openssh_public_path):
    key = serialization.load_ssh_public_key(openssh_public_path.read_bytes())
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _start_run(tmp_path, operator, fab=None, app_spec=""):
    request = StartRunRequest(app_spec=app_spec)
    request.fab.content = fab if fab is not None else _fab(write_app(tmp_path / "app"))
    request.override_config["operator"].string = operator
    request.override_config["run-name"].string = "q1"
    request.override_config["method"].string = "feddel"
    request.override_config["budget"].double = 0.05
    return request.SerializeToString()


def _fab(folder, extra=None):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("pyproject.toml", (folder / "pyproject.toml").read_text())
        archive.writestr(".info/CONTENT", "pyproject.toml,abc,1")
        for name, text in (extra or {}).items():
            archive.writestr(name, text)
    return buffer.getvalue()


def test_fleet_and_health_are_open_to_everyone_and_reach_flower(site):
    behind = Behind()
    gate = Gate(behind, site["settings"])
    assert call(gate, "/health", peer="198.51.100.7", method="GET")[0] == 200
    assert call(gate, "/v1/fleet/pull-messages", b"x", peer="198.51.100.7")[0] == 200
    assert [path for path, _ in behind.seen] == ["/health", "/v1/fleet/pull-messages"]


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/v1/control/list-runs",
                                  "/v1/runtime/get-nodes", "/anything-else"])  # fmt: skip
def test_operator_apis_answer_only_operator_networks(site, path):
    behind = Behind()
    gate = Gate(behind, site["settings"])
    status, body = call(gate, path, peer="198.51.100.7", token=site["token"])
    assert status == 403 and "answers the coordinator's operators only" in body["detail"]
    assert behind.seen == []
    status, _ = call(gate, path, peer="10.0.5.9", token=site["token"])  # operators-from
    assert status == 200 and len(behind.seen) == 1
    status, _ = call(gate, path, peer="::ffff:127.0.0.1", token=site["token"])  # dual stack
    assert status == 200 and len(behind.seen) == 2
    assert call(gate, path, peer="::ffff:198.51.100.7", token=site["token"])[0] == 403


def test_control_calls_need_a_valid_operator_token(site):
    behind = Behind()
    gate = Gate(behind, site["settings"])
    for token in (None, "alice:wrong-secret-wrong-secret-wrong-secret", "mallory:" + "x" * 43):
        status, body = call(gate, "/v1/control/list-runs", token=token)
        assert status == 403 and body["detail"].startswith("operator authentication failed")
    assert behind.seen == []
    assert call(gate, "/v1/control/list-runs", token=site["token"])[0] == 200
    assert call(gate, "/docs", method="GET")[0] == 200  # from loopback, no token needed


def test_unauthenticated_start_run_is_refused_and_audited(site, tmp_path):
    behind = Behind()
    gate = Gate(behind, site["settings"])
    status, _ = call(gate, "/v1/control/start-run", _start_run(tmp_path, "alice"))
    assert status == 403 and behind.seen == []
    entry = site["settings"].audit.entries()[-1]
    assert (entry["action"], entry["actor"], entry["outcome"]) == (
        "start-run", "unauthenticated", "refused",
    )  # fmt: skip


def test_start_run_passes_for_a_feddel_round_by_its_operator_and_is_audited(site, tmp_path):
    behind = Behind()
    gate = Gate(behind, site["settings"])
    body = _start_run(tmp_path, "alice")
    assert call(gate, "/v1/control/start-run", body, token=site["token"])[0] == 200
    assert behind.seen == [("/v1/control/start-run", body)]  # the body reaches Flower intact
    entry = site["settings"].audit.entries()[-1]
    assert entry["actor"] == "alice" and entry["outcome"] == "allowed"
    assert (entry["run-name"], entry["method"], entry["budget"]) == ("q1", "feddel", 0.05)
    assert entry["peer"] == "127.0.0.1" and entry["time"].endswith("+00:00")


@pytest.mark.parametrize(
    ("operator", "fab_extra", "app_spec", "reason"),
    [
        ("bob", None, "", "the run config says operator = 'bob' but the token belongs to 'alice'"),
        ("alice", {"evil.py": "import os"}, "", "files besides its configuration (evil.py)"),
        ("alice", None, "@someone/app", "only a FedDEL round built by"),
    ],
)  # fmt: skip
def test_start_run_is_refused_for_another_operator_code_or_a_remote_app(
    site, tmp_path, operator, fab_extra, app_spec, reason
):
    behind = Behind()
    gate = Gate(behind, site["settings"])
    fab = _fab(write_app(tmp_path / "app"), fab_extra) if fab_extra else None
    request = _start_run(tmp_path, operator, fab, app_spec)
    status, body = call(gate, "/v1/control/start-run", request, token=site["token"])
    assert status == 403 and reason in body["detail"] and behind.seen == []
    entry = site["settings"].audit.entries()[-1]
    assert entry["outcome"] == "refused" and reason in entry["reason"]


def test_start_run_refuses_a_fab_with_other_components(site, tmp_path):
    folder = write_app(tmp_path / "app")
    text = (folder / "pyproject.toml").read_text().replace("feddel.client.app:app", "x.y:app")
    (folder / "pyproject.toml").write_text(text)
    gate = Gate(Behind(), site["settings"])
    request = _start_run(tmp_path, "alice", _fab(folder))
    status, body = call(gate, "/v1/control/start-run", request, token=site["token"])
    assert status == 403 and "are not FedDEL's" in body["detail"]


def test_only_admitted_keys_can_be_registered(site, tmp_path):
    behind = Behind()
    gate = Gate(behind, site["settings"])
    admitted = RegisterNodeRequest(public_key=_pem(site["keys"]["hospital-a"]), name="hospital-a")
    assert call(gate, "/v1/control/register-node", admitted.SerializeToString(),
                token=site["token"])[0] == 200  # fmt: skip
    _, stranger = make_center_key(tmp_path / "stranger", "stranger")
    rogue = RegisterNodeRequest(public_key=_pem(stranger), name="hospital-a")
    status, body = call(gate, "/v1/control/register-node", rogue.SerializeToString(),
                        token=site["token"])  # fmt: skip
    assert status == 403 and "not admitted by the coordinator" in body["detail"]
    revoke_center(site["root"] / "certs", "hospital-b")
    revoked = RegisterNodeRequest(public_key=_pem(site["keys"]["hospital-b"]))
    status, body = call(gate, "/v1/control/register-node", revoked.SerializeToString(),
                        token=site["token"])  # fmt: skip
    assert status == 403 and "this key is revoked" in body["detail"]
    assert len(behind.seen) == 1
    outcomes = [(e["action"], e["outcome"]) for e in site["settings"].audit.entries()]
    assert outcomes == [("register-key", "allowed"), ("register-key", "refused"),
                        ("register-key", "refused")]  # fmt: skip


def test_stop_run_is_audited_with_its_run_id(site):
    gate = Gate(Behind(), site["settings"])
    body = StopRunRequest(run_id=42).SerializeToString()
    assert call(gate, "/v1/control/stop-run", body, token=site["token"])[0] == 200
    entry = site["settings"].audit.entries()[-1]
    assert (entry["action"], entry["actor"], entry["run_id"]) == ("stop-run", "alice", 42)


def _activation(pem):
    return ActivateNodeRequest(public_key=pem, heartbeat_interval=30.0).SerializeToString()


def test_refused_activation_says_why_for_unknown_revoked_and_connected_keys(site, tmp_path):
    gate = Gate(Behind(412, FLOWER_REFUSAL), site["settings"])
    _, stranger = make_center_key(tmp_path / "stranger", "stranger")
    status, body = call(gate, "/v1/fleet/activate-node", _activation(_pem(stranger)),
                        peer="198.51.100.7")  # fmt: skip
    assert status == 412 and body["code"] == 2004
    assert "is not registered with this federation" in body["detail"]
    assert "SHA256:" in body["detail"]
    status, body = call(gate, "/v1/fleet/activate-node",
                        _activation(_pem(site["keys"]["hospital-a"])))  # fmt: skip
    assert body["detail"].startswith("center hospital-a is already connected from another")
    revoke_center(site["root"] / "certs", "hospital-b")
    status, body = call(gate, "/v1/fleet/activate-node",
                        _activation(_pem(site["keys"]["hospital-b"])))  # fmt: skip
    assert "was revoked by the coordinator (center hospital-b)" in body["detail"]
    refusals = [(e["actor"], e["peer"]) for e in site["settings"].audit.entries()]
    assert refusals == [("unknown key", "198.51.100.7"), ("hospital-a", "127.0.0.1"),
                        ("hospital-b", "127.0.0.1")]  # fmt: skip


def test_accepted_activation_passes_through_unchanged(site):
    gate = Gate(Behind(200, b'{"node_id": 7}'), site["settings"])
    status, body = call(gate, "/v1/fleet/activate-node",
                        _activation(_pem(site["keys"]["hospital-a"])))  # fmt: skip
    assert (status, body) == (200, {"node_id": 7})
    assert site["settings"].audit.entries() == []


def test_a_request_that_is_not_the_expected_message_is_refused(site):
    gate = Gate(Behind(), site["settings"])
    status, body = call(gate, "/v1/control/start-run", b"\xff\xff not protobuf",
                        token=site["token"])  # fmt: skip
    assert status == 400 and "not a StartRunRequest" in body["detail"]


def test_presented_keys_of_another_curve_are_not_matched(site):
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = other.public_bytes(serialization.Encoding.PEM,
                             serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
    gate = Gate(Behind(412, FLOWER_REFUSAL), site["settings"])
    _, body = call(gate, "/v1/fleet/activate-node", _activation(pem))
    assert "is not registered with this federation" in body["detail"]
