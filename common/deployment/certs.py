"""Certificates and keys for a deployed federation: one CA, one SuperLink certificate, one
node-authentication key pair per center.

Flower 1.41 secures a deployment in two independent ways, and FedDEL sets up both:

- TLS: the SuperLink serves HTTPS with a certificate signed by a private CA; every SuperNode
  trusts only that CA (`--root-certificates ca.crt`), so a SuperNode cannot be talked into
  sending its aggregates to an impostor. The certificate always also names `localhost` and
  `127.0.0.1`, because the SuperLink's own SuperExec (which starts the ServerApp) connects to it
  on the loopback address with the same CA.
- Node authentication: each center makes its own EC P-384 key pair in OpenSSH format
  (`feddel-center keygen`, used as `--auth-supernode-private-key`) and sends only the public
  key; the coordinator registers it with the SuperLink (`flwr supernode register`), which then
  refuses every SuperNode whose key it does not know. No private key ever travels.

Folder layout written here (the coordinator's certificate folder):

    ca.crt, ca.key                      the CA (ca.key never leaves the coordinator)
    superlink.crt, superlink.key        the SuperLink's TLS certificate and key
    centers/<name>/center.pub           a center's public key: registered by `start`
    centers/<name>/ca.crt               a copy of the CA certificate for the center
    revoked/<name>@<time>/              a revoked center's folder, kept for the record

Private keys are written with mode 0600 and are never replaced unless the caller says so.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import ipaddress
import re
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from feddel.common.errors import ConfigError
from feddel.common.io import atomic_write_bytes

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "superlink.crt"
SERVER_KEY = "superlink.key"
CENTERS_DIR = "centers"
CENTER_PUBLIC = "center.pub"
CENTER_PRIVATE = "center.key"
REVOKED_DIR = "revoked"

CA_DAYS = 3650  # the CA outlives many server certificates: centers keep trusting ca.crt
SERVER_DAYS = 397  # browsers' and most TLS stacks' ceiling for a leaf certificate
LOOPBACK_HOSTS = ("localhost", "127.0.0.1")  # the SuperLink's own SuperExec connects here
_CURVE = ec.SECP384R1  # Flower's node authentication expects a NIST curve; P-384 as in its docs
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9*]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9-]+)*$")


class Authority(NamedTuple):
    """What `init_authority` wrote or reused; expiry dates are UTC."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    ca_expires: datetime.datetime
    server_expires: datetime.datetime
    ca_created: bool  # False: an existing CA was reused, centers keep their ca.crt
    hosts: tuple[str, ...]  # the certificate's subject alternative names


class CenterKeys(NamedTuple):
    """A center's folder under centers/: its public key and the CA certificate it trusts."""

    name: str
    folder: Path
    public_key: Path
    ca_cert: Path


def parse_hosts(spec: str) -> tuple[str, ...]:
    """`"link.example.org,10.0.0.5"` -> the certificate's names, loopback names appended.

    Each entry is a DNS name or an IPv4/IPv6 address; duplicates are dropped, order is kept.
    """
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise ConfigError(
            f"--host {spec!r} names no host; give the name or address centers will dial, "
            "e.g. --host link.hospital-net.org,10.0.0.5"
        )
    for name in names:
        if not (_is_ip(name) or _HOST.match(name)):
            raise ConfigError(f"host {name!r} is neither a DNS name nor an IP address")
    return tuple(dict.fromkeys([*names, *LOOPBACK_HOSTS]))


def init_authority(
    out: str | Path,
    hosts: Sequence[str],
    *,
    days: int = SERVER_DAYS,
    force: bool = False,
) -> Authority:
    """Create (or reuse) the CA in `out` and issue the SuperLink's certificate for `hosts`.

    An existing CA is always reused, so renewing the SuperLink certificate never forces the
    centers to install a new ca.crt. An existing SuperLink key is replaced only with `force`.
    """
    if days < 1:
        raise ConfigError(f"days={days} must be >= 1")
    root = Path(out)
    server_key_path = root / SERVER_KEY
    if server_key_path.exists() and not force:
        raise ConfigError(
            f"{server_key_path} already exists; pass --force to issue a new SuperLink "
            "certificate and key (the CA is kept, centers need no new ca.crt)"
        )
    ca_created = not (root / CA_KEY).exists()
    if ca_created and (root / CA_CERT).exists():
        raise ConfigError(
            f"{root / CA_CERT} exists but {root / CA_KEY} does not: restore ca.key to renew the "
            f"SuperLink certificate, or move {CA_CERT} away to create a new CA (every center "
            "then needs the new ca.crt)"
        )
    if ca_created:
        _write_ca(root)
    ca_key = _load_private_key(root / CA_KEY)
    ca_cert = _load_certificate(root / CA_CERT)
    hosts = tuple(hosts)
    server_key = ec.generate_private_key(_CURVE())
    now = _now()
    expires = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    san = x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in hosts]
    )
    cert = (
        _builder(
            _subject(f"FedDEL SuperLink {hosts[0]}"), ca_cert.subject, server_key, now, expires
        )
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write_private_key(server_key_path, server_key, serialization.PrivateFormat.PKCS8)
    atomic_write_bytes(root / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return Authority(
        ca_cert=root / CA_CERT,
        server_cert=root / SERVER_CERT,
        server_key=server_key_path,
        ca_expires=ca_cert.not_valid_after_utc,
        server_expires=cert.not_valid_after_utc,
        ca_created=ca_created,
        hosts=hosts,
    )


def add_center(
    out: str | Path, name: str, public_key: str | Path, *, force: bool = False
) -> CenterKeys:
    """Admit center `name` with the public key it made (`feddel-center keygen`).

    The key goes to centers/<name>/center.pub, which `feddel-coordinator start` registers with
    the SuperLink; nobody but the center ever holds its private key. A key that already
    belongs to another center, or that was revoked, is refused.
    """
    root = Path(out)
    check_center_name(name)
    if not (root / CA_CERT).is_file():
        raise ConfigError(
            f"{root} has no {CA_CERT}; run `feddel-coordinator certs init --out {root} "
            "--host NAME` first"
        )
    folder = root / CENTERS_DIR / name
    if (folder / CENTER_PUBLIC).exists() and not force:
        raise ConfigError(
            f"center {name!r} already has a key in {folder}; pass --force to replace it "
            "(a running `feddel-coordinator start` then unregisters the old key)"
        )
    public_bytes = _read_center_public_key(Path(public_key))
    key = serialization.load_ssh_public_key(public_bytes)
    owner = known_center_keys(root).get(spki(key))  # type: ignore[arg-type]
    if owner is not None and (owner.revoked or owner.center != name):
        whose = "was revoked" if owner.revoked else "is already registered"
        raise ConfigError(
            f"{public_key} {whose} as center {owner.center!r}; every center needs a key of "
            "its own: make a new one at the center with `feddel-center keygen`"
        )
    (folder / CENTER_PRIVATE).unlink(missing_ok=True)  # made here by an older FedDEL
    atomic_write_bytes(folder / CENTER_PUBLIC, public_bytes)
    shutil.copyfile(root / CA_CERT, folder / CA_CERT)
    return CenterKeys(name, folder, folder / CENTER_PUBLIC, folder / CA_CERT)


def make_center_key(folder: str | Path, comment: str, *, force: bool = False) -> tuple[Path, Path]:
    """Make a center's node-authentication key pair where the center keeps it: center.key
    (EC P-384, OpenSSH format, mode 0600) and center.pub (the only file sent to the
    coordinator). An existing key is never replaced without `force`."""
    root = Path(folder)
    private_path, public_path = root / CENTER_PRIVATE, root / CENTER_PUBLIC
    if private_path.exists() and not force:
        raise ConfigError(
            f"{private_path} already exists; pass --force to make a new key (the coordinator "
            "must then register the new center.pub with `certs add-center NAME --force`)"
        )
    key = ec.generate_private_key(_CURVE())
    _write_private_key(private_path, key, serialization.PrivateFormat.OpenSSH)
    atomic_write_bytes(public_path, _openssh_public(key.public_key(), comment))
    return private_path, public_path


def registered_centers(out: str | Path) -> dict[str, Path]:
    """Every center with a public key under out/centers/, by name (sorted)."""
    folder = Path(out) / CENTERS_DIR
    if not folder.is_dir():
        return {}
    keys = {p.parent.name: p for p in folder.glob(f"*/{CENTER_PUBLIC}")}
    return dict(sorted(keys.items()))


def public_key_fingerprint(path: str | Path) -> str:
    """`SHA256:...` of an OpenSSH public key, as `ssh-keygen -l` prints it, so the coordinator
    and a center can compare keys over the phone; the comment field does not count."""
    fields = Path(path).read_text(encoding="ascii", errors="replace").split()
    if len(fields) < 2:
        raise ConfigError(f"{path} is not an OpenSSH public key line")
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except binascii.Error:
        raise ConfigError(f"{path} is not an OpenSSH public key line") from None
    return _fingerprint(blob)


def key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """The same `SHA256:...` for a key object (e.g. one a SuperNode presented)."""
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return _fingerprint(base64.b64decode(line.split()[1]))


class KnownKey(NamedTuple):
    """A center key the coordinator has seen: whose, and whether it was revoked."""

    center: str
    revoked: bool
    fingerprint: str


def known_center_keys(out: str | Path) -> dict[bytes, KnownKey]:
    """Every center key under out/centers/ and out/revoked/, by its DER SubjectPublicKeyInfo
    (the form a SuperNode's PEM key and a registration request reduce to). Unreadable files
    are skipped: `add-center` checked each key when it wrote it."""
    root = Path(out)
    found: dict[bytes, KnownKey] = {}
    sources = [(path, path.parent.name, True) for path in _revoked_keys(root)]
    sources += [(path, name, False) for name, path in registered_centers(root).items()]
    for path, folder, revoked in sources:  # active keys last: they win over a revoked copy
        try:
            key = serialization.load_ssh_public_key(path.read_bytes())
        except (OSError, ValueError, UnsupportedAlgorithm):
            continue
        if isinstance(key, ec.EllipticCurvePublicKey):
            name = folder.rsplit("@", 1)[0] if revoked else folder
            found[spki(key)] = KnownKey(name, revoked, key_fingerprint(key))
    return found


def presented_key(data: bytes) -> ec.EllipticCurvePublicKey | None:
    """The EC public key in a PEM or DER blob sent over the wire, or None."""
    for load in (serialization.load_pem_public_key, serialization.load_der_public_key):
        try:
            key = load(data)
        except (ValueError, UnsupportedAlgorithm):
            continue
        return key if isinstance(key, ec.EllipticCurvePublicKey) else None
    return None


def spki(key: ec.EllipticCurvePublicKey) -> bytes:
    """A public key's DER SubjectPublicKeyInfo: one form for keys read in any format."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def revoke_center(out: str | Path, name: str) -> Path:
    """Move centers/<name>/ to revoked/<name>@<UTC time>/: `start` unregisters its key within
    seconds and the SuperLink refuses it from then on. The folder is kept for the record."""
    check_center_name(name)
    root = Path(out)
    folder = root / CENTERS_DIR / name
    if not (folder / CENTER_PUBLIC).is_file():
        known = ", ".join(registered_centers(root)) or "none"
        raise ConfigError(f"there is no center {name!r} in {root / CENTERS_DIR} (centers: {known})")
    target = root / REVOKED_DIR / f"{name}@{_now():%Y%m%dT%H%M%SZ}"
    target.parent.mkdir(parents=True, exist_ok=True)
    folder.rename(target)
    return target


def certificate_expiry(path: str | Path) -> datetime.datetime:
    """The UTC expiry date of a PEM certificate."""
    return _load_certificate(Path(path)).not_valid_after_utc


class SuperLinkFiles(NamedTuple):
    ca_cert: Path
    server_cert: Path
    server_key: Path
    expires: datetime.datetime  # the SuperLink certificate's expiry (UTC)


def check_superlink_files(certs: str | Path) -> SuperLinkFiles:
    """The SuperLink's TLS files in `certs`, checked before Flower sees them: present, the key
    private to its owner, the certificate signed by ca.crt and not expired."""
    root = Path(certs)
    files = SuperLinkFiles(root / CA_CERT, root / SERVER_CERT, root / SERVER_KEY, _now())
    for path in files[:3]:
        if not path.is_file():
            raise ConfigError(
                f"{path} does not exist; run `feddel-coordinator certs init --out {root} "
                "--host NAME` first"
            )
    _check_private_mode(files.server_key)
    ca, cert = _load_certificate(files.ca_cert), _load_certificate(files.server_cert)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(
            f"{files.server_cert} was not issued by {files.ca_cert}; run "
            f"`feddel-coordinator certs init --out {root} --force --host NAME` to reissue it"
        ) from None
    if cert.not_valid_after_utc <= _now():
        raise ConfigError(
            f"{files.server_cert} expired on {cert.not_valid_after_utc:%Y-%m-%d}; renew it with "
            f"`feddel-coordinator certs init --out {root} --force --host NAME`"
        )
    return files._replace(expires=cert.not_valid_after_utc)


def check_center_private_key(path: str | Path) -> Path:
    """Refuse a node-authentication key that is missing, not EC OpenSSH, or readable by others.

    Flower exits with "Unable to parse the private key file." for a wrong format; this names
    the file and the fix before the SuperNode starts.
    """
    key_path = Path(path)
    if not key_path.is_file():
        raise ConfigError(
            f"key file {key_path} does not exist; copy center.key from the coordinator"
        )
    _check_private_mode(key_path)
    try:
        key = serialization.load_ssh_private_key(key_path.read_bytes(), password=None)
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            f"key file {key_path} is not an unencrypted OpenSSH private key; use the "
            "center.key made by `feddel-coordinator certs add-center`"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"key file {key_path} is not an EC key; Flower needs a NIST curve")
    return key_path


def describe_expiry(moment: datetime.datetime) -> str:
    """`2027-12-25 (397 days)`: what every command prints next to a certificate."""
    return f"{moment:%Y-%m-%d} ({(moment - _now()).days} days)"


def check_center_name(name: str) -> None:
    check_name(name, "center")


def check_name(name: str, what: str) -> None:
    """Center and operator names: safe as folder names, in logs and in TOML."""
    if not is_name(name):
        raise ConfigError(
            f"{what} name {name!r} must be 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def is_name(name: str) -> bool:
    return bool(_NAME.match(name))


# --- private helpers (inputs already validated) ------------------------------------------


def _fingerprint(blob: bytes) -> str:
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def _revoked_keys(root: Path) -> list[Path]:
    folder = root / REVOKED_DIR
    return sorted(folder.glob(f"*/{CENTER_PUBLIC}")) if folder.is_dir() else []


def _check_private_mode(path: Path) -> None:
    """Like ssh: a private key that other users can read is refused, not used."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"key file {path} is readable by other users (mode {mode:04o}); run `chmod 600 {path}`"
        )


def _write_ca(root: Path) -> None:
    key = ec.generate_private_key(_CURVE())
    now = _now()
    subject = _subject("FedDEL federation CA")
    cert = (
        _builder(subject, subject, key, now, now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA384())
    )
    _write_private_key(root / CA_KEY, key, serialization.PrivateFormat.PKCS8)
    atomic_write_bytes(root / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    start: datetime.datetime,
    end: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - datetime.timedelta(minutes=5))  # tolerate clock skew
        .not_valid_after(end)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _subject(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FedDEL"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


def _write_private_key(
    path: Path, key: ec.EllipticCurvePrivateKey, fmt: serialization.PrivateFormat
) -> Path:
    data = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    return atomic_write_bytes(path, data, mode=0o600)


def _openssh_public(key: ec.EllipticCurvePublicKey, comment: str) -> bytes:
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line + f" feddel-{comment}\n".encode()


def _read_center_public_key(path: Path) -> bytes:
    """A center's own public key (e.g. `ssh-keygen -t ecdsa -b 384`), checked like Flower does."""
    if not path.is_file():
        raise ConfigError(f"public key file {path} does not exist")
    data = path.read_bytes().strip() + b"\n"
    try:
        key = serialization.load_ssh_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{path} is not an OpenSSH public key (ecdsa-sha2-nistp384 ...)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError(
            f"{path} is not an EC public key; generate one with `ssh-keygen -t ecdsa -b 384`"
        )
    return data


def _load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path} is not an EC private key; move it away and run init again")
    return key


def _load_certificate(path: Path) -> x509.Certificate:
    if not path.is_file():
        raise ConfigError(f"certificate {path} does not exist")
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise ConfigError(f"{path} is not a PEM certificate") from None


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
