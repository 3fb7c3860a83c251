"""Site files and the SuperLink health probe (common/deployment/sites.py)."""

import http.server
import signal
import ssl
import subprocess
import sys
import threading
import time

import pytest

from feddel.common.deployment.certs import init_authority, parse_hosts
from feddel.common.deployment.sites import read_site_config, superlink_health
from feddel.common.errors import ConfigError


def test_read_site_config_accepts_ints_for_numbers_only(tmp_path):
    (tmp_path / "s.toml").write_text("[a]\nx = 1\ny = true\n")
    assert read_site_config(tmp_path / "s.toml", {"a": {"x": float, "y": bool}}) == {
        "a": {"x": 1, "y": True}
    }
    with pytest.raises(ConfigError, match="y = True must be an integer"):
        read_site_config(tmp_path / "s.toml", {"a": {"x": int, "y": int}})


def test_read_site_config_takes_lists_of_strings_only(tmp_path):
    (tmp_path / "s.toml").write_text('[a]\nnames = ["x", "y"]\nbad = ["x", 1]\n')
    schema = {"a": {"names": list}}
    with pytest.raises(ConfigError, match=r"unknown key\(s\) bad"):
        read_site_config(tmp_path / "s.toml", schema)
    (tmp_path / "s.toml").write_text('[a]\nnames = ["x", 1]\n')
    with pytest.raises(ConfigError, match=r'must be a list of quoted strings, e.g. \["a", "b"\]'):
        read_site_config(tmp_path / "s.toml", schema)
    (tmp_path / "s.toml").write_text('[a]\nnames = ["x", "y"]\n')
    assert read_site_config(tmp_path / "s.toml", schema) == {"a": {"names": ["x", "y"]}}


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def tls_server(tmp_path):
    authority = init_authority(tmp_path / "certs", parse_hosts("127.0.0.1"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(authority.server_cert, authority.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", authority.ca_cert
    server.shutdown()


def test_superlink_health_trusts_only_the_federations_ca(tls_server, tmp_path):
    address, ca_cert = tls_server
    assert superlink_health(address, ca_cert) is None
    other = init_authority(tmp_path / "other", parse_hosts("127.0.0.1"))
    problem = superlink_health(address, other.ca_cert)
    assert problem.startswith(f"not answering at https://{address}/health")
    assert "CERTIFICATE_VERIFY_FAILED" in problem
    assert "Connection refused" in superlink_health("127.0.0.1:9", ca_cert, timeout=2)


_HELD = """
from feddel.common.cliutil import run_cli
from feddel.common.deployment.sites import hold_on_error
from feddel.common.errors import ConfigError, RunFailed
import sys
def command():
    raise {error}("center.toml: [superlink] address = 'x' must be HOST:PORT")
sys.exit(run_cli(lambda argv: hold_on_error({enabled}, command)))
"""


def _held(error: str, enabled: bool) -> subprocess.Popen:
    code = _HELD.format(error=error, enabled=enabled)
    return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)


def test_hold_on_error_keeps_a_user_error_up_until_stopped():
    held = _held("ConfigError", enabled=True)
    first = held.stderr.readline()
    assert first.startswith("error: center.toml: [superlink] address = 'x' must be HOST:PORT")
    assert "holding until stopped" in held.stderr.readline()
    time.sleep(0.5)
    assert held.poll() is None  # still up: a container's restart policy sees nothing to redo
    held.send_signal(signal.SIGTERM)
    assert held.wait(10) == 2


@pytest.mark.parametrize(("error", "enabled", "code"), [("ConfigError", False, 2),
                                                        ("RunFailed", True, 1)])  # fmt: skip
def test_without_hold_or_for_a_failure_that_may_pass_the_command_exits(error, enabled, code):
    done = _held(error, enabled)
    assert done.wait(30) == code and "holding" not in done.stderr.read()
