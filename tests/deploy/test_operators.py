"""Operator tokens (server/deployment/operators.py), the SuperLink launcher's pieces
(server/deployment/linkserver.py), and `feddel-coordinator operator`."""

import logging
import ssl
import stat

import pytest
from flwr.common.constant import ACCESS_TOKEN_KEY, NOOP_FLWR_AID
from flwr.supercore.credential_store.file_credential_store import FileCredentialStore

from feddel.common.deployment.certs import init_authority, parse_hosts
from feddel.common.errors import ConfigError
from feddel.server.cli import main as coordinator
from feddel.server.deployment.linkserver import ExplainedSSLObject, OperatorTokens, parse_args
from feddel.server.deployment.operators import (
    OPERATORS_FILE,
    SERVICE_TOKEN_FILE,
    OperatorRegistry,
    add_operator,
    list_operators,
    read_token,
    remove_operator,
    service_token,
    write_cli_credentials,
)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_a_token_identifies_its_operator_and_only_its_hash_is_kept(tmp_path):
    token = add_operator(tmp_path, "alice")
    name, secret = token.split(":")
    registry = OperatorRegistry(tmp_path)
    assert name == "alice" and registry.identify(token) == "alice"
    assert secret not in (tmp_path / OPERATORS_FILE).read_text()
    assert _mode(tmp_path / OPERATORS_FILE) == 0o600
    for wrong in (None, "", "alice", f"alice:{secret[:-1]}x", f"bob:{secret}", secret):
        assert registry.identify(wrong) is None


def test_removing_or_reissuing_a_token_takes_effect_without_a_restart(tmp_path):
    first = add_operator(tmp_path, "alice")
    registry = OperatorRegistry(tmp_path)
    assert registry.identify(first) == "alice"
    with pytest.raises(ConfigError, match="already exists; pass --force"):
        add_operator(tmp_path, "alice")
    second = add_operator(tmp_path, "alice", force=True)
    assert registry.identify(first) is None and registry.identify(second) == "alice"
    remove_operator(tmp_path, "alice")
    assert registry.identify(second) is None and list_operators(tmp_path) == {}
    with pytest.raises(ConfigError, match="there is no operator 'alice'"):
        remove_operator(tmp_path, "alice")


def test_the_service_token_is_reused_while_valid_and_cannot_be_removed(tmp_path):
    token = service_token(tmp_path)
    assert token.startswith("coordinator:") and service_token(tmp_path) == token
    assert _mode(tmp_path / SERVICE_TOKEN_FILE) == 0o600
    add_operator(tmp_path, "coordinator", force=True)  # someone reissued it
    renewed = service_token(tmp_path)
    assert renewed != token and OperatorRegistry(tmp_path).identify(renewed) == "coordinator"
    with pytest.raises(ConfigError, match="service's own operator"):
        remove_operator(tmp_path, "coordinator")


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 64, "a:b"])
def test_operator_names_are_checked(tmp_path, name):
    with pytest.raises(ConfigError, match="operator name"):
        add_operator(tmp_path, name)


def test_read_token_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist; `feddel-coordinator operator add"):
        read_token(tmp_path / "missing.token")
    (tmp_path / "bad.token").write_text("just-a-secret\n")
    with pytest.raises(ConfigError, match=r"bad.token is not an operator token"):
        read_token(tmp_path / "bad.token")
    token = add_operator(tmp_path, "alice")
    (tmp_path / "alice.token").write_text(token + "\n")
    assert read_token(tmp_path / "alice.token") == token


def test_flowers_credential_store_reads_the_token_for_the_connection(tmp_path):
    path = write_cli_credentials(tmp_path, "127.0.0.1:9093", "alice:s3cret")
    store = FileCredentialStore(path)
    key = "flower.account-auth.127.0.0.1:9093.{}"
    assert store.get(key.format("authn-type")) == b"oidc"
    assert store.get(key.format("oidc-access-token")) == b"alice:s3cret"
    assert _mode(path) == 0o600


def test_flowers_account_authentication_answers_from_the_registry(tmp_path):
    token = add_operator(tmp_path, "alice")
    plugin = OperatorTokens(OperatorRegistry(tmp_path))
    valid, account = plugin.validate_tokens_in_metadata([(ACCESS_TOKEN_KEY, token)])
    assert valid and (account.flwr_aid, account.account_name) == (NOOP_FLWR_AID, "alice")
    assert plugin.validate_tokens_in_metadata([]) == (False, None)
    assert plugin.validate_tokens_in_metadata([(ACCESS_TOKEN_KEY, "alice:nope")]) == (False, None)
    assert plugin.refresh_tokens([(ACCESS_TOKEN_KEY, token)]) == (None, None)


def test_linkserver_splits_its_flags_from_flowers():
    ours, flower = parse_args(["--certs", "/c", "--state", "/s", "--operators-from", "10.0.0.1",
                               "--", "--ssl-certfile", "x", "--port", "9093"])  # fmt: skip
    assert (str(ours.certs), str(ours.state), ours.operators_from) == ("/c", "/s", "10.0.0.1")
    assert flower == ["--ssl-certfile", "x", "--port", "9093"]


def _handshake_error(server_context, client_bytes):
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_context.wrap_bio(incoming, outgoing, server_side=True)
    incoming.write(client_bytes)
    with pytest.raises(ssl.SSLError):
        server.do_handshake()


def test_failed_tls_handshakes_are_logged_with_their_reason(tmp_path, caplog):
    authority = init_authority(tmp_path, parse_hosts("127.0.0.1"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(authority.server_cert, authority.server_key)
    context.sslobject_class = ExplainedSSLObject
    with caplog.at_level(logging.WARNING):
        _handshake_error(context, b"POST /v1/fleet/activate-node HTTP/1.1\r\nHost: x\r\n\r\n")
    assert "refused a connection during the TLS handshake: the client spoke plain HTTP" in (
        caplog.text
    )


def test_operator_cli_adds_lists_and_removes(tmp_path, capsys):
    out = tmp_path / "alice.token"
    state = ["--state", str(tmp_path / "state")]
    assert coordinator(["operator", "add", "alice", "--out", str(out), *state]) == 0
    assert _mode(out) == 0o600
    assert OperatorRegistry(tmp_path / "state").identify(out.read_text().strip()) == "alice"
    assert coordinator(["operator", "list", *state]) == 0
    assert "alice" in capsys.readouterr().out
    assert coordinator(["operator", "add", "alice", "--out", str(out), *state]) == 2
    assert "already exists" in capsys.readouterr().err
    assert coordinator(["operator", "remove", "alice", *state]) == 0
    assert OperatorRegistry(tmp_path / "state").identify(out.read_text().strip()) is None
