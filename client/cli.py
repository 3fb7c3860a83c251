"""feddel-center: what a hospital runs at its own site, before and during a federation."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from feddel.client.commands.embed import add_embed_arguments, run_embed
from feddel.client.commands.join import add_join_arguments, run_join
from feddel.client.commands.keygen import add_keygen_arguments, run_keygen
from feddel.client.commands.status import add_status_arguments, run_status
from feddel.common.cliutil import EXIT_FAILED, EXIT_OK, Command, console, dispatch, run_cli
from feddel.common.cliutil import build_parser as build_parser_for
from feddel.common.data.scan import Inventory, scan_center
from feddel.common.io import require_writable_file, write_json

DESCRIPTION = """\
Run FedDEL at one center. Images, embeddings and sample ids never leave this machine: the
coordinator only ever receives counts, per-cluster sums and score histograms.

Commands:
  check    scan a data folder: what will be in the pool, what cannot be read, and why
  embed    embed the images into the center's cache ahead of a round (resumable)
  keygen   make this center's key pair; only center.pub goes to the coordinator
  join     connect this center to the federation's SuperLink (runs until stopped)
  status   connection, rounds and their phases, refusals and errors, from the state folder

Deployment step by step: deploy/README.md.
"""

MAX_EXAMPLES = 10  # unreadable files listed per reason


# --- check ------------------------------------------------------------------------------------


def _add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        required=True,
        type=Path,
        metavar="DIR",
        help="the center's image folder (read-only; masks/ and test/ sub-folders are reserved)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the summary as JSON")


def _cmd_check(args: argparse.Namespace) -> int:
    if args.json:
        require_writable_file(args.json, "--json")
    inventory = _scan_with_progress(args.data)
    summary = check_summary(inventory)
    _print_check(inventory, summary)
    if args.json:
        write_json(args.json, summary)
        console.print(f"wrote {args.json}")
    if not summary["readable"]:
        console.print("[bold red]no image in this folder could be read[/]: see the reasons above")
        return EXIT_FAILED
    return EXIT_OK


def check_summary(inventory: Inventory) -> dict[str, Any]:
    """The machine-readable result of `check` (counts only, plus the unreadable file list)."""
    return {
        "data": str(inventory.root.resolve()),
        "files": inventory.n_files,
        "readable": inventory.n_readable,
        "samples": len(inventory.samples),
        "duplicate_groups": len(inventory.duplicates),
        "duplicate_files": inventory.n_duplicate_files,
        "unreadable": len(inventory.unreadable),
        "unreadable_files": [{"file": u.file, "reason": u.reason} for u in inventory.unreadable],
        "unreadable_reasons": inventory.unreadable_reasons(),
        "ignored": inventory.ignored,
        "links_outside": inventory.outside_links,
        "masks": inventory.n_masks,
        "sizes": inventory.size_stats(),
        "modalities": inventory.modalities(),
    }


def _scan_with_progress(data: Path) -> Inventory:
    columns = (
        TextColumn("decoding"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("decoding", total=None)
        return scan_center(data, lambda done, total: bar.update(task, completed=done, total=total))


def _print_check(inventory: Inventory, summary: dict[str, Any]) -> None:
    table = Table(title=f"{inventory.root}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("image files", str(summary["files"]))
    table.add_row("readable", str(summary["readable"]))
    table.add_row("unique samples (the pool)", str(summary["samples"]))
    table.add_row(
        "exact duplicates",
        f"{summary['duplicate_files']} extra files in {summary['duplicate_groups']} groups",
    )
    table.add_row("unreadable", str(summary["unreadable"]))
    table.add_row("masks matched", f"{summary['masks']} of {summary['samples']} samples")
    table.add_row("other files ignored", str(summary["ignored"]))
    if summary["links_outside"]:
        table.add_row("links leading outside (skipped)", str(summary["links_outside"]))
    if sizes := summary["sizes"]:
        for axis in ("width", "height"):
            table.add_row(
                f"{axis} min / median / max",
                f"{sizes[f'min_{axis}']} / {sizes[f'median_{axis}']} / {sizes[f'max_{axis}']}",
            )
    modalities = ", ".join(f"{name} {count}" for name, count in summary["modalities"].items())
    table.add_row("modalities", modalities or "-")
    console.print(table)
    for reason, count in summary["unreadable_reasons"].items():
        console.print(f"[yellow]unreadable ({count}): {reason}[/]", soft_wrap=True)
        examples = [u.file for u in inventory.unreadable if u.reason == reason]
        for file in examples[:MAX_EXAMPLES]:
            console.print(f"    {file}", soft_wrap=True, markup=False)
        if count > MAX_EXAMPLES:
            console.print(f"    ... and {count - MAX_EXAMPLES} more (all listed in --json)")


# --- the command table ------------------------------------------------------------------------


COMMANDS: tuple[Command, ...] = (
    Command(
        name="check",
        summary="scan a data folder: counts, duplicates, unreadable files and why",
        description="Scan a center's image folder recursively (png, jpg, bmp, tif, DICOM), "
        "decode every file, group exact duplicates, match masks, and report what cannot be "
        "read and why. Nothing in the folder is written.",
        add_arguments=_add_check_arguments,
        run=_cmd_check,
    ),
    Command(
        name="embed",
        summary="embed the folder's images into the center's resumable cache",
        description="Embed every readable image with a timm ViT (random init with --seed, or "
        "local weights) into <state>/embeddings/<fingerprint>/. Already cached samples are "
        "never recomputed, and an interrupted run goes on where it stopped. Uses the GPU when "
        "there is one.",
        add_arguments=add_embed_arguments,
        run=run_embed,
    ),
    Command(
        name="keygen",
        summary="make this center's key pair (only center.pub leaves the center)",
        description="Write center.key (EC P-384, OpenSSH format, mode 0600) and center.pub "
        "into --out, and print the key's fingerprint. Send center.pub to the coordinator, who "
        "admits it with `feddel-coordinator certs add-center NAME --public-key center.pub`.",
        add_arguments=add_keygen_arguments,
        run=run_keygen,
    ),
    Command(
        name="join",
        summary="connect this center to the federation (a Flower SuperNode)",
        description="Check center.toml (data folder, state folder, CA certificate, key), "
        "then run Flower's SuperNode with TLS and this center's key until stopped (SIGTERM "
        "or Ctrl-C). If the SuperLink refuses the center, one line says what to fix.",
        add_arguments=add_join_arguments,
        run=run_join,
    ),
    Command(
        name="status",
        summary="connection, rounds and their phases, refusals, last error",
        description="Read the center's state folder: whether the SuperNode is connected, the "
        "curation runs it took part in and their phases, the manifests it wrote, rounds its "
        "policy refused, and the last error with its phase. --json and --prometheus write the "
        "same for machines; --check exits 1 unless connected.",
        add_arguments=add_status_arguments,
        run=run_status,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    return build_parser_for("feddel-center", DESCRIPTION, COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda args: dispatch(build_parser(), args), argv)
