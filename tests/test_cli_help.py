"""Every command and subcommand prints its help and exits 0 (a stray '%' once broke it)."""

import pytest

from feddel.client.cli import build_parser as center_parser
from feddel.server.cli import build_parser as coordinator_parser
from feddel.simulations.cli import build_parser as sim_parser


def _subcommands(parser):
    actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return [] if not actions else list(actions[0].choices.items())


@pytest.mark.parametrize("build", [sim_parser, center_parser, coordinator_parser])
def test_help_of_every_command_renders(build, capsys):
    parser = build()
    stack = [parser]
    while stack:
        current = stack.pop()
        with pytest.raises(SystemExit) as done:
            current.parse_args(["--help"])
        assert done.value.code == 0
        stack.extend(child for _, child in _subcommands(current))
    assert "usage:" in capsys.readouterr().out
