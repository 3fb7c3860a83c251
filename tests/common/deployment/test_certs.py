"""Certificates and keys for a deployment (common/deployment/certs.py) and `feddel-coordinator
certs`."""

import base64
import datetime
import hashlib
import ipaddress
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flwr.cli.supernode.register import try_load_public_key

from feddel.client.cli import main as center
from feddel.common.deployment.certs import (
    add_center,
    certificate_expiry,
    check_center_private_key,
    check_superlink_files,
    describe_expiry,
    init_authority,
    key_fingerprint,
    known_center_keys,
    make_center_key,
    parse_hosts,
    presented_key,
    public_key_fingerprint,
    registered_centers,
    revoke_center,
    spki,
)
from feddel.common.errors import ConfigError
from feddel.server.cli import main as coordinator


@pytest.fixture
def certs(tmp_path):
    init_authority(tmp_path / "certs", parse_hosts("link.example.org,10.1.2.3"))
    return tmp_path / "certs"


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_parse_hosts_keeps_order_drops_duplicates_and_adds_loopback():
    assert parse_hosts(" link.example.org, 10.1.2.3,link.example.org ,::1") == (
        "link.example.org", "10.1.2.3", "::1", "localhost", "127.0.0.1",
    )  # fmt: skip


@pytest.mark.parametrize("spec", ["", " , ", "bad host", "https://link:9093", "a..b"])
def test_parse_hosts_rejects_what_is_neither_a_name_nor_an_address(spec):
    with pytest.raises(ConfigError, match="host"):
        parse_hosts(spec)


def test_init_authority_signs_a_server_certificate_for_every_host(certs):
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((certs / "superlink.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["link.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("127.0.0.1"),
    ]  # fmt: skip
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    days = (cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)).days
    assert 395 <= days <= 397
    assert _mode(certs / "ca.key") == _mode(certs / "superlink.key") == 0o600


def test_init_authority_never_replaces_a_key_without_force_and_always_keeps_the_ca(certs):
    ca_before = (certs / "ca.crt").read_bytes()
    key_before = (certs / "superlink.key").read_bytes()
    with pytest.raises(ConfigError, match=r"superlink\.key already exists; pass --force"):
        init_authority(certs, parse_hosts("other.example.org"))
    assert (certs / "superlink.key").read_bytes() == key_before
    renewed = init_authority(certs, parse_hosts("other.example.org"), days=30, force=True)
    assert not renewed.ca_created
    assert (certs / "ca.crt").read_bytes() == ca_before
    assert (certs / "superlink.key").read_bytes() != key_before
    assert (renewed.server_expires - datetime.datetime.now(datetime.UTC)).days in (29, 30)
    assert check_superlink_files(certs).expires == renewed.server_expires


def test_init_authority_never_makes_a_new_ca_over_a_ca_whose_key_was_moved_away(certs):
    ca_before = (certs / "ca.crt").read_bytes()
    (certs / "ca.key").rename(certs.parent / "ca.key.offline")
    with pytest.raises(ConfigError, match=r"ca\.crt exists but .*ca\.key does not"):
        init_authority(certs, parse_hosts("link.example.org"), force=True)
    assert (certs / "ca.crt").read_bytes() == ca_before


def _center_key(tmp_path, name):
    """The key pair a center makes with `feddel-center keygen`: (private, public) paths."""
    return make_center_key(tmp_path / "at-center" / name, name)


def test_make_center_key_writes_a_p384_openssh_pair_that_flower_accepts(certs, tmp_path):
    private_path, public_path = _center_key(tmp_path, "hospital-a")
    private = serialization.load_ssh_private_key(private_path.read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    public = serialization.load_ssh_public_key(public_path.read_bytes())
    assert public.public_numbers() == private.public_key().public_numbers()
    assert try_load_public_key(public_path)  # Flower's own check in `flwr supernode register`
    assert _mode(private_path) == 0o600
    assert check_center_private_key(private_path) == private_path
    with pytest.raises(ConfigError, match=r"center\.key already exists; pass --force"):
        _center_key(tmp_path, "hospital-a")


def test_add_center_admits_the_public_key_only(certs, tmp_path):
    _, public = _center_key(tmp_path, "hospital-a")
    keys = add_center(certs, "hospital-a", public)
    assert sorted(p.name for p in keys.folder.iterdir()) == ["ca.crt", "center.pub"]
    assert keys.public_key.read_bytes() == public.read_bytes()
    assert keys.ca_cert.read_bytes() == (certs / "ca.crt").read_bytes()
    assert registered_centers(certs) == {"hospital-a": keys.public_key}


def test_add_center_refuses_to_replace_a_key_without_force(certs, tmp_path):
    _, first = _center_key(tmp_path, "hospital-a")
    add_center(certs, "hospital-a", first)
    _, second = make_center_key(tmp_path / "rotated", "hospital-a")
    with pytest.raises(ConfigError, match=r"already has a key.*--force"):
        add_center(certs, "hospital-a", second)
    assert (certs / "centers/hospital-a/center.pub").read_bytes() == first.read_bytes()
    add_center(certs, "hospital-a", second, force=True)
    assert (certs / "centers/hospital-a/center.pub").read_bytes() == second.read_bytes()


def test_one_key_cannot_be_two_centers_nor_come_back_after_revocation(certs, tmp_path):
    _, public = _center_key(tmp_path, "hospital-a")
    add_center(certs, "hospital-a", public)
    with pytest.raises(ConfigError, match="is already registered as center 'hospital-a'"):
        add_center(certs, "hospital-b", public)
    moved = revoke_center(certs, "hospital-a")
    assert moved.parent == certs / "revoked" and moved.name.startswith("hospital-a@")
    assert registered_centers(certs) == {}
    with pytest.raises(ConfigError, match="was revoked as center 'hospital-a'"):
        add_center(certs, "hospital-a", public, force=True)
    with pytest.raises(ConfigError, match="there is no center 'hospital-a'"):
        revoke_center(certs, "hospital-a")


def test_known_center_keys_finds_admitted_and_revoked_keys_in_any_format(certs, tmp_path):
    _, key_a = _center_key(tmp_path, "hospital-a")
    _, key_b = _center_key(tmp_path, "hospital-b")
    add_center(certs, "hospital-a", key_a)
    add_center(certs, "hospital-b", key_b)
    revoke_center(certs, "hospital-b")
    known = known_center_keys(certs)
    pem = serialization.load_ssh_public_key(key_a.read_bytes()).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    found = known[spki(presented_key(pem))]
    assert (found.center, found.revoked) == ("hospital-a", False)
    assert found.fingerprint == public_key_fingerprint(key_a)
    revoked = known[spki(serialization.load_ssh_public_key(key_b.read_bytes()))]
    assert (revoked.center, revoked.revoked) == ("hospital-b", True)
    assert presented_key(b"not a key") is None


def test_add_center_registers_a_key_made_with_ssh_keygen_style_comment(certs, tmp_path):
    own = ec.generate_private_key(ec.SECP384R1()).public_key()
    line = own.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    (tmp_path / "own.pub").write_bytes(line + b" it@hospital-b\n")
    keys = add_center(certs, "hospital-b", tmp_path / "own.pub")
    assert keys.public_key.read_bytes().split()[:2] == line.split()


def test_add_center_rejects_a_public_key_flower_could_not_use(certs, tmp_path):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    (tmp_path / "rsa.pub").write_bytes(
        rsa_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    (tmp_path / "junk.pub").write_text("not a key\n")
    with pytest.raises(ConfigError, match="not an EC public key"):
        add_center(certs, "hospital-c", tmp_path / "rsa.pub")
    with pytest.raises(ConfigError, match="not an OpenSSH public key"):
        add_center(certs, "hospital-c", tmp_path / "junk.pub")
    assert registered_centers(certs) == {}


@pytest.mark.parametrize("name", ["", "-lead", "a b", "x" * 64, "../etc"])
def test_add_center_rejects_unsafe_names(certs, tmp_path, name):
    with pytest.raises(ConfigError, match="center name"):
        add_center(certs, name, tmp_path / "any.pub")


def test_add_center_needs_the_ca_first(tmp_path):
    with pytest.raises(ConfigError, match="certs init"):
        add_center(tmp_path, "hospital-a", tmp_path / "any.pub")


def test_public_key_fingerprint_is_the_sha256_of_the_key_blob(tmp_path):
    _, public = _center_key(tmp_path, "hospital-a")
    blob = base64.b64decode(public.read_text().split()[1])
    expected = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert public_key_fingerprint(public) == f"SHA256:{expected}"
    assert len(expected) == 43  # what `ssh-keygen -l` prints for a SHA-256 fingerprint
    key = serialization.load_ssh_public_key(public.read_bytes())
    assert key_fingerprint(key) == f"SHA256:{expected}"


def test_check_center_private_key_refuses_readable_or_foreign_keys(certs, tmp_path):
    private, _ = _center_key(tmp_path, "hospital-a")
    os.chmod(private, 0o640)
    with pytest.raises(ConfigError, match=r"readable by other users \(mode 0640\); run `chmod 600"):
        check_center_private_key(private)
    pem = tmp_path / "pem.key"
    pem.write_bytes((certs / "ca.key").read_bytes())  # PKCS8, not OpenSSH
    pem.chmod(0o600)
    with pytest.raises(ConfigError, match="not an unencrypted OpenSSH private key"):
        check_center_private_key(pem)
    with pytest.raises(ConfigError, match="does not exist"):
        check_center_private_key(tmp_path / "missing.key")


def test_check_superlink_files_refuses_a_certificate_of_another_ca(certs, tmp_path):
    init_authority(tmp_path / "other", parse_hosts("link.example.org"))
    (certs / "superlink.crt").write_bytes((tmp_path / "other/superlink.crt").read_bytes())
    with pytest.raises(ConfigError, match="was not issued by"):
        check_superlink_files(certs)


def test_describe_expiry_counts_whole_days():
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=10, hours=1)
    assert describe_expiry(moment) == f"{moment:%Y-%m-%d} (10 days)"


def test_certs_cli_prints_expiry_and_refuses_overwrite_in_one_line(tmp_path, capsys):
    out = tmp_path / "certs"
    assert coordinator(["certs", "init", "--out", str(out), "--host", "127.0.0.1"]) == 0
    keys = tmp_path / "at-center"
    assert center(["keygen", "--out", str(keys), "--name", "hospital-a"]) == 0
    made = capsys.readouterr().out
    fingerprint = public_key_fingerprint(keys / "center.pub")
    assert fingerprint in made and "it never leaves here" in made
    add = ["certs", "add-center", "hospital-a", "--out", str(out),
           "--public-key", str(keys / "center.pub")]  # fmt: skip
    assert coordinator(add) == 0
    printed = capsys.readouterr().out
    ca_expires = certificate_expiry(out / "ca.crt")
    assert f"expires {ca_expires:%Y-%m-%d}" in printed and fingerprint in printed
    assert coordinator(add) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: center 'hospital-a' already has a key") and "\n" not in error
    assert coordinator(["certs", "add-center", "hospital-b", "--out", str(out)]) == 2
    assert "--public-key" in capsys.readouterr().err  # the coordinator makes no private keys


def test_certs_revoke_without_a_running_superlink_moves_the_folder(tmp_path, capsys):
    out = tmp_path / "certs"
    init_authority(out, parse_hosts("127.0.0.1"))
    _, public = _center_key(tmp_path, "hospital-a")
    add_center(out, "hospital-a", public)
    state = tmp_path / "state"
    assert coordinator(["certs", "revoke", "hospital-a", "--out", str(out), "--state",
                        str(state)]) == 0  # fmt: skip
    assert "no registered node" in capsys.readouterr().out
    assert registered_centers(out) == {} and len(list((out / "revoked").iterdir())) == 1
