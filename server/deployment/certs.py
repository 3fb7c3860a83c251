"""`feddel-coordinator certs init|add-center`: the federation's CA, the SuperLink's TLS
certificate, and one node-authentication key pair per center (common/deployment/certs.py).

Both commands print what to hand to whom and when it expires: hospital IT staff receive a
folder (centers/<name>/) and must be able to check by phone that it is the right key.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from feddel.common.cliutil import EXIT_OK, console
from feddel.common.deployment.certs import (
    add_center,
    certificate_expiry,
    describe_expiry,
    init_authority,
    parse_hosts,
    public_key_fingerprint,
)
from feddel.server.deployment.site import DEFAULT_CERTS


def add_certs_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init",
        help="create the CA and the SuperLink's TLS certificate",
        description="Create the federation's CA (kept if it exists) and issue the SuperLink's "
        "TLS certificate for the names and addresses centers will dial. localhost and "
        "127.0.0.1 are always included (the SuperLink's own ServerApp runner uses them).",
    )
    _add_out(init)
    init.add_argument(
        "--host", required=True, metavar="NAME[,IP...]",
        help="comma-separated DNS names and IP addresses of the SuperLink, as centers dial it",
    )  # fmt: skip
    init.add_argument(
        "--days", type=int, default=397, help="validity of the SuperLink certificate (397)"
    )
    init.add_argument(
        "--force", action="store_true",
        help="replace an existing SuperLink certificate and key (the CA is always kept)",
    )  # fmt: skip
    init.set_defaults(certs_action=_cmd_init)
    center = actions.add_parser(
        "add-center",
        help="make a center's node-authentication key pair and register its public key",
        description="Write centers/NAME/ (center.key, center.pub, ca.crt) into the "
        "certificate folder. A running `feddel-coordinator start` registers center.pub with "
        "the SuperLink within seconds; hand the folder to the center's IT staff.",
    )
    center.add_argument("name", metavar="NAME", help="the center's name, e.g. hospital-a")
    _add_out(center)
    center.add_argument(
        "--public-key", type=Path, metavar="FILE",
        help="register this OpenSSH EC public key (made at the center with "
        "`ssh-keygen -t ecdsa -b 384`) instead of generating a pair here",
    )  # fmt: skip
    center.add_argument(
        "--force", action="store_true", help="replace the center's existing keys (key rotation)"
    )
    center.set_defaults(certs_action=_cmd_add_center)


def run_certs(args: argparse.Namespace) -> int:
    return args.certs_action(args)


def _add_out(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_CERTS, metavar="DIR",
        help=f"certificate folder (default {DEFAULT_CERTS})",
    )  # fmt: skip


def _cmd_init(args: argparse.Namespace) -> int:
    authority = init_authority(args.out, parse_hosts(args.host), days=args.days, force=args.force)
    verb = "created" if authority.ca_created else "kept the existing"
    console.print(f"{verb} CA {authority.ca_cert}: expires {describe_expiry(authority.ca_expires)}")
    console.print(
        f"SuperLink certificate {authority.server_cert} for {', '.join(authority.hosts)}: "
        f"expires {describe_expiry(authority.server_expires)}"
    )
    console.print(
        f"private keys ({authority.server_key}, {args.out / 'ca.key'}) are mode 0600; ca.key "
        "is only needed to issue certificates and can be kept offline"
    )
    console.print(f"next: feddel-coordinator certs add-center NAME --out {args.out}")
    return EXIT_OK


def _cmd_add_center(args: argparse.Namespace) -> int:
    keys = add_center(args.out, args.name, public_key=args.public_key, force=args.force)
    console.print(f"center {keys.name}: public key {keys.public_key}")
    console.print(
        f"  fingerprint {public_key_fingerprint(keys.public_key)} (read it to the center)"
    )
    ca_expires = describe_expiry(certificate_expiry(keys.ca_cert))
    console.print(f"  trusts CA {keys.ca_cert}, which expires {ca_expires}")
    if keys.private_key is not None:
        console.print(
            f"  private key {keys.private_key} (mode 0600): give the folder {keys.folder} to "
            "this center only, over a secure channel, then delete center.key here"
        )
    console.print("  a running `feddel-coordinator start` registers it within seconds")
    return EXIT_OK
