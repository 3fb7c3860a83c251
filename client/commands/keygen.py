"""`feddel-center keygen`: this center's node-authentication key pair, made where it stays.

The private key (center.key, EC P-384 in OpenSSH format, mode 0600) never leaves the center;
only center.pub goes to the coordinator, who admits it with `feddel-coordinator certs
add-center NAME --public-key center.pub` and sends back ca.crt (public too). Both sides print
the key's fingerprint, to compare over the phone before the key is trusted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from feddel.common.cliutil import EXIT_OK, console
from feddel.common.deployment.certs import (
    check_center_name,
    make_center_key,
    public_key_fingerprint,
)


def add_keygen_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR",
        help="folder for center.key and center.pub, e.g. /etc/feddel/center",
    )  # fmt: skip
    parser.add_argument(
        "--name", required=True, metavar="NAME",
        help="this center's name, as the coordinator will admit it (e.g. hospital-a)",
    )  # fmt: skip
    parser.add_argument(
        "--force", action="store_true",
        help="replace an existing key (the coordinator must admit the new center.pub)",
    )  # fmt: skip


def run_keygen(args: argparse.Namespace) -> int:
    check_center_name(args.name)
    private, public = make_center_key(args.out, f"feddel-{args.name}", force=args.force)
    console.print(f"center {args.name}: private key {private} (mode 0600; it never leaves here)")
    console.print(f"  public key {public}, fingerprint {public_key_fingerprint(public)}")
    console.print(
        f"  send {public} to the coordinator, who runs `feddel-coordinator certs add-center "
        f"{args.name} --public-key center.pub` and sends back ca.crt; compare fingerprints by "
        "phone"
    )
    return EXIT_OK
