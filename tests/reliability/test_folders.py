"""Output and state folders that cannot be written, and the round's own accounting.

Every command that writes checks its folders first: one line naming the folder and the flag,
exit 2, and no work started (each test replaces the work with a tripwire). Two flavours of
unwritable: a file where a folder should be, and a folder that refuses new files (read-only
for a normal user; as root, who writes through any mode, a folder of /sys, which refuses
everyone). Then: a round where every center failed says so and counts them right, a center
without images does not fail `feddel-sim curate` after a good round, and a reduced k warns.
"""

import contextlib
import io
import json
import os
import stat
from pathlib import Path

import pytest

from feddel.client import app as client_app
from feddel.client.cli import main as center_cli
from feddel.common.config import CurationConfig
from feddel.common.errors import DataError
from feddel.common.io import require_writable_folder
from feddel.server.broadcast import RoundFailed
from feddel.server.cli import main as coordinator_cli
from feddel.simulations.cli import main as sim_cli
from feddel.simulations.federated import run_federated
from feddel.simulations.synth import generate_federation


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("folders") / "data"
    generate_federation(data, centers=3, scale="small", seed=5, size=32)
    return data


@pytest.fixture(params=["file-in-the-way", "read-only"])
def unwritable(request, tmp_path) -> Path:
    """A folder path that no command can create or write into."""
    if request.param == "file-in-the-way":
        (tmp_path / "taken").write_text("a file, not a folder")
        return tmp_path / "taken" / "out"
    if os.geteuid() == 0:
        target = Path("/sys/fs/feddel-test-out")
        with pytest.raises(OSError):
            target.mkdir()  # /sys refuses even root; skip nothing, but make sure
        return target
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    request.addfinalizer(lambda: locked.chmod(stat.S_IRWXU))
    return locked / "out"


@pytest.fixture
def tripwire(monkeypatch):
    """Make the work of every command fail the test if it is ever reached."""

    def reached(*args, **kwargs):
        raise AssertionError("the work started before the folder was checked")

    for target in (
        "feddel.simulations.commands.curate.run_federated",
        "feddel.simulations.commands.curate.run_centralized",
        "feddel.simulations.commands.compare.run_apps",
        "feddel.simulations.commands.demo.generate_federation",
        "feddel.common.data.scan.scan_center",
        "feddel.client.commands.join.FlowerProcess",
        "feddel.server.deployment.superlink.check_superlink_files",
        "feddel.server.deployment.submit.write_app",
        "feddel.client.commands.status.center_status",
        "feddel.server.deployment.status.load_site",
        "feddel.server.deployment.operators.add_operator",
        "feddel.server.cli.parse_overrides",
        "feddel.simulations.cli.generate_federation",
        "feddel.simulations.commands.bench.run_suite",
    ):
        monkeypatch.setattr(target, reached)


def _center_toml(tmp_path: Path, state: Path, data: Path) -> Path:
    path = tmp_path / "center.toml"
    path.write_text(
        f'[center]\nname = "north"\ndata = "{data}"\nstate = "{state}"\n'
        '[superlink]\naddress = "127.0.0.1:9093"\nca = "ca.crt"\nkey = "center.key"\n'
    )
    return path


def _commands(data: Path, bad: Path, tmp_path: Path) -> dict[str, tuple]:
    """command -> (main, argv, the flag the message must name)."""
    center = str(data / "center-00")
    return {
        "sim curate --out": (sim_cli, ["curate", "--data", str(data), "--out", str(bad)], "--out"),
        "sim curate --state": (
            sim_cli,
            ["curate", "--data", str(data), "--out", str(tmp_path / "run"), "--state", str(bad)],
            "--state",
        ),
        "sim compare": (sim_cli, ["compare", "--data", str(data), "--out", str(bad)], "--out"),
        "sim demo": (sim_cli, ["demo", "--out", str(bad)], "--out"),
        "center embed --state": (
            center_cli,
            ["embed", "--data", center, "--state", str(bad)],
            "--state",
        ),
        "center embed --json": (
            center_cli,
            ["embed", "--data", center, "--state", str(tmp_path / "s"), "--json", f"{bad}/e.json"],
            "--json",
        ),
        "center join": (
            center_cli,
            ["join", "--config", str(tmp_path / "center.toml")],
            "[center] state in center.toml",
        ),
        "coordinator start": (
            coordinator_cli,
            ["start", "--certs", str(tmp_path), "--state", str(bad)],
            "--state (or [coordinator] state)",
        ),
        "center check --json": (
            center_cli,
            ["check", "--data", center, "--json", f"{bad}/c.json"],
            "--json",
        ),
        "center status --json": (
            center_cli,
            ["status", "--state", str(tmp_path), "--json", f"{bad}/s.json"],
            "--json",
        ),
        "center status --prometheus": (
            center_cli,
            ["status", "--state", str(tmp_path), "--prometheus", f"{bad}/s.prom"],
            "--prometheus",
        ),
        "coordinator config --json": (
            coordinator_cli,
            ["config", "--json", f"{bad}/c.json"],
            "--json",
        ),
        "coordinator status --json": (
            coordinator_cli,
            [
                "status",
                "--certs",
                str(tmp_path),
                "--state",
                str(tmp_path),
                "--json",
                f"{bad}/s.json",
            ],
            "--json",
        ),
        "coordinator operator add --out": (
            coordinator_cli,
            ["operator", "add", "alice", "--state", str(tmp_path), "--out", f"{bad}/alice.token"],
            "--out",
        ),
        "sim data": (sim_cli, ["data", "--out", str(bad)], "--out"),
        "sim bench": (sim_cli, ["bench", "--out", str(bad)], "--out"),
        "coordinator curate": (
            coordinator_cli,
            ["curate", "--certs", str(tmp_path), "--state", str(tmp_path), "--out", str(bad)],
            "--out (or [coordinator] runs)",
        ),
    }


COMMANDS = list(_commands(Path("data"), Path("bad"), Path("tmp")))


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unwritable_folder_is_one_line_and_exit_2_before_any_work(
    command, federation, unwritable, tmp_path, tripwire, capsys
):
    main, argv, flag = _commands(federation, unwritable, tmp_path)[command]
    _center_toml(tmp_path, unwritable, federation / "center-00")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert str(unwritable) in " ".join(err.split())  # rich may wrap a long line
    assert f"give {flag} a folder you can write to" in " ".join(err.split())
    assert not (tmp_path / "run").exists()


def test_require_writable_folder_accepts_a_folder_still_to_be_made(tmp_path):
    target = tmp_path / "new" / "deeper"
    assert require_writable_folder(target, "--out") == target
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert list(tmp_path.iterdir()) == []  # and leaves no probe behind


# --- the round's accounting -------------------------------------------------------------------


def _all_centers_raise(monkeypatch, make_error):
    request_type, _handler = client_app.PHASES["inventory"]

    def failing(request, paths):
        raise make_error(paths)

    monkeypatch.setitem(client_app.PHASES, "inventory", (request_type, failing))


def _round(federation: Path, out: Path) -> dict:
    config = CurationConfig(image_size=32, k=4, budget=0.1)
    return run_federated(federation, out, config, engine="inprocess", state_root=out / "state")


def test_when_every_center_fails_alike_the_round_says_so_and_blames_no_center(
    federation, tmp_path, monkeypatch
):
    _all_centers_raise(monkeypatch, lambda paths: PermissionError(13, "denied", str(paths.state)))
    with pytest.raises(RoundFailed) as info:
        _round(federation, tmp_path / "run")
    assert str(info.value) == (
        "all 3 centers failed in phase 'inventory' with the same error, so its cause is common "
        "to them (not one center's fault): internal error in phase inventory; see the center's log"
    )


def test_when_every_center_fails_differently_none_is_counted_as_remaining(
    federation, tmp_path, monkeypatch
):
    _all_centers_raise(monkeypatch, lambda paths: DataError(f"disk of {paths.name} failed"))
    with pytest.raises(RoundFailed, match=r"^only 0 of 3 centers remain after phase 'inventory'"):
        _round(federation, tmp_path / "run")


@pytest.fixture(scope="module")
def curated_with_an_empty_center(federation, tmp_path_factory) -> tuple[int, dict, str]:
    """`feddel-sim curate` over the federation plus a center folder without images, asking
    for k=1000 clusters of a pool of about 200 samples: (exit code, summary, console)."""
    root = tmp_path_factory.mktemp("empty-center")
    data = root / "data"
    data.mkdir()
    for center in sorted(p for p in federation.iterdir() if p.is_dir()):
        (data / center.name).symlink_to(center, target_is_directory=True)
    (data / "center-empty").mkdir()
    argv = ["curate", "--data", str(data), "--out", str(root / "run"), "--engine", "inprocess",
            "--set", "image-size=32", "--set", "k=1000"]  # fmt: skip
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        code = sim_cli(argv)
    summary = json.loads((root / "run" / "summary.json").read_text())
    return code, summary, " ".join(console.getvalue().split())


def test_an_empty_center_is_named_and_curate_still_exits_0(curated_with_an_empty_center):
    code, summary, printed = curated_with_an_empty_center
    assert code == 0
    (failure,) = summary["failed_centers"]
    assert (failure["center"], failure["phase"]) == ("center-empty", "inventory")
    assert "no images found under <data folder>" in failure["reason"]
    assert summary["centers"] == 3 and summary["quality"] is not None  # judged over the 3 that ran
    assert "failed center center-empty in inventory" in printed


def test_a_reduced_k_is_a_warning_in_the_summary_and_on_the_console(curated_with_an_empty_center):
    _code, summary, printed = curated_with_an_empty_center
    k = summary["k"]
    warning = f"k=1000 was reduced to {k}: the pool cannot fill more clusters"
    assert 1 < k < 1000 and any(w.startswith(warning) for w in summary["warnings"])
    assert f"warning: {warning}" in printed
