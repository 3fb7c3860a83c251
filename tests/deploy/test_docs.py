"""deploy/README.md and the systemd units say only what FedDEL does: every FedDEL command they
show parses with the real command line, and every documented command is exercised by
deploy/smoke.sh or a deployment test."""

import shlex
from pathlib import Path

import pytest

from feddel.client.cli import build_parser as center_parser
from feddel.server.cli import build_parser as coordinator_parser

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "deploy" / "README.md"
PROGRAMS = {"feddel-coordinator": coordinator_parser, "feddel-center": center_parser}
WITH_ACTIONS = {("feddel-coordinator", "certs"), ("feddel-coordinator", "operator")}


def _documented_commands() -> list[list[str]]:
    """Each FedDEL command line in the runbook's shell code blocks, as argv from the program."""
    commands, fence, text = [], None, RUNBOOK.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = line.strip()[3:] if fence is None else None  # the language, while inside
            continue
        shell = fence in ("bash", "")
        if not shell or not any(program in line for program in PROGRAMS):
            continue
        words = shlex.split(line.split(" #")[0])
        starts = [i for i, word in enumerate(words) if Path(word).name in PROGRAMS]
        if starts:  # else the name is part of a path, e.g. /var/lib/feddel-center
            commands.append([Path(words[starts[0]]).name, *words[starts[0] + 1 :]])
    return commands


def _unit_commands() -> list[list[str]]:
    lines = [
        line.split("=", 1)[1]
        for unit in (ROOT / "deploy" / "systemd").glob("*.service")
        for line in unit.read_text().splitlines()
        if line.startswith("ExecStart=")
    ]
    return [[Path(argv[0]).name, *argv[1:]] for argv in map(shlex.split, lines)]


def test_the_runbook_shows_every_feddel_command_it_describes():
    names = {tuple(argv[:3]) if tuple(argv[:2]) in WITH_ACTIONS else tuple(argv[:2])
             for argv in _documented_commands()}  # fmt: skip
    assert names >= {
        ("feddel-center", "keygen"), ("feddel-center", "join"), ("feddel-center", "status"),
        ("feddel-coordinator", "certs", "init"), ("feddel-coordinator", "certs", "add-center"),
        ("feddel-coordinator", "certs", "revoke"), ("feddel-coordinator", "operator", "add"),
        ("feddel-coordinator", "start"), ("feddel-coordinator", "curate"),
        ("feddel-coordinator", "status"), ("feddel-coordinator", "config"),
    }  # fmt: skip


@pytest.mark.parametrize("argv", _documented_commands() + _unit_commands(), ids=" ".join)
def test_every_documented_command_parses_with_the_real_command_line(argv):
    PROGRAMS[argv[0]]().parse_args(argv[1:])  # an unknown command or flag raises ConfigError


def _exercised(argv: list[str]) -> bool:
    """The command (with its action) runs in deploy/smoke.sh or in a deployment test."""
    words = argv[:3] if tuple(argv[:2]) in WITH_ACTIONS else argv[:2]
    if " ".join(words) in (ROOT / "deploy" / "smoke.sh").read_text():
        return True
    quoted = ", ".join(f'"{word}"' for word in words[1:])
    tests = [*(ROOT / "tests" / "deploy").glob("*.py"),
             *(ROOT / "tests" / "common" / "deployment").glob("*.py")]  # fmt: skip
    return any(quoted in path.read_text() for path in tests)


@pytest.mark.parametrize("argv", _documented_commands(), ids=" ".join)
def test_every_documented_command_is_exercised_by_the_smoke_script_or_a_test(argv):
    assert _exercised(argv), f"nothing runs `{' '.join(argv[:3])}`"
