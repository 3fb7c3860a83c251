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

from feddel.common.deployment.certs import (
    add_center,
    certificate_expiry,
    check_center_private_key,
    check_superlink_files,
    describe_expiry,
    init_authority,
    parse_hosts,
    public_key_fingerprint,
    registered_centers,
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


def test_add_center_writes_a_p384_openssh_pair_that_flower_accepts(certs):
    keys = add_center(certs, "hospital-a")
    private = serialization.load_ssh_private_key(keys.private_key.read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    public = serialization.load_ssh_public_key(keys.public_key.read_bytes())
    assert public.public_numbers() == private.public_key().public_numbers()
    assert try_load_public_key(keys.public_key)  # Flower's own check in `flwr supernode register`
    assert _mode(keys.private_key) == 0o600
    assert keys.ca_cert.read_bytes() == (certs / "ca.crt").read_bytes()
    assert check_center_private_key(keys.private_key) == keys.private_key
    assert registered_centers(certs) == {"hospital-a": keys.public_key}


def test_add_center_refuses_to_replace_keys_without_force(certs):
    first = add_center(certs, "hospital-a").private_key.read_bytes()
    with pytest.raises(ConfigError, match=r"already has keys.*--force"):
        add_center(certs, "hospital-a")
    assert (certs / "centers/hospital-a/center.key").read_bytes() == first
    rotated = add_center(certs, "hospital-a", force=True)
    assert rotated.private_key.read_bytes() != first


def test_add_center_registers_a_key_the_center_made_itself(certs, tmp_path):
    own = ec.generate_private_key(ec.SECP384R1()).public_key()
    line = own.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    (tmp_path / "own.pub").write_bytes(line + b" it@hospital-b\n")
    keys = add_center(certs, "hospital-b", public_key=tmp_path / "own.pub")
    assert keys.private_key is None and not (keys.folder / "center.key").exists()
    assert keys.public_key.read_bytes().split()[:2] == line.split()


def test_add_center_rejects_a_public_key_flower_could_not_use(certs, tmp_path):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    (tmp_path / "rsa.pub").write_bytes(
        rsa_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    (tmp_path / "junk.pub").write_text("not a key\n")
    with pytest.raises(ConfigError, match="not an EC public key"):
        add_center(certs, "hospital-c", public_key=tmp_path / "rsa.pub")
    with pytest.raises(ConfigError, match="not an OpenSSH public key"):
        add_center(certs, "hospital-c", public_key=tmp_path / "junk.pub")
    assert registered_centers(certs) == {}


@pytest.mark.parametrize("name", ["", "-lead", "a b", "x" * 64, "../etc"])
def test_add_center_rejects_unsafe_names(certs, name):
    with pytest.raises(ConfigError, match="center name"):
        add_center(certs, name)


def test_add_center_needs_the_ca_first(tmp_path):
    with pytest.raises(ConfigError, match="certs init"):
        add_center(tmp_path, "hospital-a")


def test_public_key_fingerprint_is_the_sha256_of_the_key_blob(certs):
    keys = add_center(certs, "hospital-a")
    blob = base64.b64decode(keys.public_key.read_text().split()[1])
    expected = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert public_key_fingerprint(keys.public_key) == f"SHA256:{expected}"
    assert len(expected) == 43  # what `ssh-keygen -l` prints for a SHA-256 fingerprint


def test_check_center_private_key_refuses_readable_or_foreign_keys(certs, tmp_path):
    keys = add_center(certs, "hospital-a")
    os.chmod(keys.private_key, 0o640)
    with pytest.raises(ConfigError, match=r"readable by other users \(mode 0640\); run `chmod 600"):
        check_center_private_key(keys.private_key)
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
    assert coordinator(["certs", "add-center", "hospital-a", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    ca_expires = certificate_expiry(out / "ca.crt")
    assert f"expires {ca_expires:%Y-%m-%d}" in printed
    assert f"expires {certificate_expiry(out / 'superlink.crt'):%Y-%m-%d}" in printed
    assert public_key_fingerprint(out / "centers/hospital-a/center.pub") in printed
    assert coordinator(["certs", "add-center", "hospital-a", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: center 'hospital-a' already has keys") and "\n" not in error
