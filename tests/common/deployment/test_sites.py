"""Site files and the SuperLink health probe (common/deployment/sites.py)."""

import http.server
import ssl
import threading

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
    def do_GET(self):  # noqa: N802 - http.server's name
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
