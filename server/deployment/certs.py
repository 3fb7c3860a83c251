"""`feddel-coordinator certs init|add-center|revoke`: the federation's CA, the SuperLink's TLS
certificate, and the centers' node-authentication keys (common/deployment/certs.py).

Each center makes its own key pair (`feddel-center keygen`) and sends only center.pub; the
coordinator admits it with `add-center` and sends back ca.crt, which is public. Fingerprints
are printed on both sides so the two can be compared by phone. `revoke` removes a center in one
command: its key leaves the SuperLink's registry at once when the SuperLink runs, and the
SuperLink refuses it from then on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from feddel.common.cliutil import EXIT_OK, console
from feddel.common.deployment.certs import (
    add_center,
    certificate_expiry,
    describe_expiry,
    init_authority,
    parse_hosts,
    public_key_fingerprint,
    revoke_center,
)
from feddel.server.deployment.flwrcli import CONNECTION, error_message, flwr_json, write_connection
from feddel.server.deployment.operators import add_operator_token_argument, operator_token
from feddel.server.deployment.site import DEFAULT_CERTS, load_site
from feddel.server.deployment.superlink import registered_nodes


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
        help="admit a center with the public key it made (feddel-center keygen)",
        description="Write centers/NAME/ (center.pub, ca.crt) into the certificate folder. A "
        "running `feddel-coordinator start` registers center.pub with the SuperLink within "
        "seconds, without a restart and without touching the other centers; send ca.crt back "
        "to the center. A key that is another center's, or was revoked, is refused.",
    )
    center.add_argument("name", metavar="NAME", help="the center's name, e.g. hospital-a")
    _add_out(center)
    center.add_argument(
        "--public-key", type=Path, metavar="FILE", required=True,
        help="the center's center.pub (from `feddel-center keygen`, or "
        "`ssh-keygen -t ecdsa -b 384`)",
    )  # fmt: skip
    center.add_argument(
        "--force", action="store_true", help="replace the center's key (key rotation)"
    )
    center.set_defaults(certs_action=_cmd_add_center)
    revoke = actions.add_parser(
        "revoke",
        help="remove a center: its key is unregistered and refused from then on",
        description="Move centers/NAME/ to revoked/NAME@TIME/ and, when the SuperLink runs, "
        "unregister the center's key at once (its SuperNode is refused from its next call). "
        "The other centers are not touched. To admit the center again it makes a new key.",
    )
    revoke.add_argument("name", metavar="NAME", help="the center's name")
    revoke.add_argument("--config", type=Path, metavar="FILE", help="coordinator.toml")
    _add_out(revoke, default=None)
    revoke.add_argument(
        "--state", type=Path, metavar="DIR", help="SuperLink state (default: coordinator.toml)"
    )
    add_operator_token_argument(revoke)
    revoke.set_defaults(certs_action=_cmd_revoke)


def run_certs(args: argparse.Namespace) -> int:
    return args.certs_action(args)


def _add_out(parser: argparse.ArgumentParser, default: Path | None = DEFAULT_CERTS) -> None:
    parser.add_argument(
        "--out", type=Path, default=default, metavar="DIR",
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
    console.print(
        f"next: each center runs `feddel-center keygen` and sends center.pub; admit it with "
        f"`feddel-coordinator certs add-center NAME --out {args.out} --public-key center.pub`"
    )
    return EXIT_OK


def _cmd_add_center(args: argparse.Namespace) -> int:
    keys = add_center(args.out, args.name, args.public_key, force=args.force)
    console.print(f"center {keys.name}: public key {keys.public_key}")
    console.print(
        f"  fingerprint {public_key_fingerprint(keys.public_key)} (compare it with the one "
        "`feddel-center keygen` printed at the center)"
    )
    ca_expires = describe_expiry(certificate_expiry(keys.ca_cert))
    console.print(f"  send back {keys.ca_cert} (public), which expires {ca_expires}")
    console.print("  a running `feddel-coordinator start` registers it within seconds")
    return EXIT_OK


def _cmd_revoke(args: argparse.Namespace) -> int:
    site = load_site(args.config, certs=args.out, state=args.state)
    record = registered_nodes(site).get(args.name, {})
    moved = revoke_center(site.certs, args.name)
    console.print(f"center {args.name}: key moved to {moved}; the SuperLink refuses it from now on")
    node = record.get("node")
    if not node:
        console.print("  it had no registered node; nothing to unregister")
        return EXIT_OK
    env = write_connection(
        site.flwr_home.with_name("flwr-revoke"), site.local_address, site.certs / "ca.crt",
        operator_token(args, site.state),
    )  # fmt: skip
    reply = flwr_json(["supernode", "unregister", node, CONNECTION], env)
    if reply.get("success"):
        console.print(f"  node {node} unregistered: its SuperNode is refused from its next call")
    else:
        console.print(
            f"[yellow]  node {node} not unregistered now ({escape(error_message(reply))}); a "
            "running `feddel-coordinator start` does it within seconds, or at its next start[/]"
        )
    return EXIT_OK
