"""Processes killed with SIGKILL (no cleanup, no exception handler): nothing is lost or half.

- `feddel-center embed` killed after some batches resumes from its cache without recomputing;
- a coordinator killed mid-round runs again and produces the same selection;
- a file rewritten through common/io.py and killed at random moments is always the old or the new
  file, never a mix;
- a center's event log cut mid-line stays readable.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from feddel.client.cli import main as center_cli
from feddel.client.state import CenterState
from feddel.common.config import CurationConfig
from feddel.common.io import read_csv
from feddel.common.models.embed import EncoderSpec, encoder_fingerprint
from feddel.simulations.federated import run_federated
from feddel.simulations.synth import generate_federation

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _start(script: str, *args: str, stdout: int = subprocess.DEVNULL) -> subprocess.Popen:
    """A Python child in its own process group (so its DataLoader workers die with it)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=REPO, env=ENV, start_new_session=True, stdout=stdout, stderr=subprocess.PIPE,
    )  # fmt: skip


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"child exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            _kill(proc)
            pytest.fail("child made no progress in time")
        time.sleep(0.01)


# --- a center killed while embedding ----------------------------------------------------------


def test_center_embed_killed_mid_way_resumes_without_recomputing(tmp_path):
    data, state = tmp_path / "data", tmp_path / "state"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(400):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(data / f"{i}.png")
    cache = state / "embeddings" / encoder_fingerprint(EncoderSpec(image_size=32))
    args = ["embed", "--data", str(data), "--state", str(state), "--image-size", "32"]
    proc = _start(
        "import sys; from feddel.client.cli import main; sys.exit(main(sys.argv[1:]))",
        *args, "--batch-size", "4",
    )  # fmt: skip

    def done_rows() -> int:
        try:
            with np.load(cache / "done.npz") as marker:
                return int(marker["done"].sum())
        except (OSError, ValueError, KeyError):  # not there yet
            return 0

    _wait_for(lambda: done_rows() >= 8, proc)
    _kill(proc)
    cached = done_rows()
    assert 8 <= cached < 400, "the kill came too late to test a resume"
    report = tmp_path / "embed.json"
    assert center_cli([*args, "--json", str(report)]) == 0
    summary = json.loads(report.read_text())
    assert (summary["reused"], summary["computed"]) == (cached, 400 - cached)
    assert summary["embedded"] == 400 and summary["failed"] == []


# --- a coordinator killed mid-round -----------------------------------------------------------


def _selection(run: Path) -> list[tuple[str, ...]]:
    return sorted(tuple(row.values()) for row in read_csv(run / "selection.csv"))


def test_coordinator_killed_mid_round_runs_again_to_the_same_selection(tmp_path, monkeypatch):
    """The whole simulated federation (coordinator and centers in one process) dies after the
    centers have scored; the next run with the same run name and state matches an
    uninterrupted run (made here meanwhile, from its own state)."""
    monkeypatch.setattr("feddel.client.handlers.write_center_report", lambda *args: None)
    monkeypatch.setattr("feddel.server.report.write_coordinator_report", lambda *args: None)
    data, state, run = tmp_path / "data", tmp_path / "state", tmp_path / "killed"
    generate_federation(data, centers=3, scale="small", seed=3, size=32)
    for center in ("center-00", "center-01", "center-02"):  # the same centers: the same
        for root in (state, tmp_path / "reference-state"):  # secret that keys their noise
            (root / center).mkdir(parents=True)
            (root / center / "noise.key").write_bytes(center.encode().ljust(32, b"."))
    proc = _start(
        """
        import sys
        from pathlib import Path
        from feddel.common.config import CurationConfig
        from feddel.simulations.federated import run_federated
        data, run, state = map(Path, sys.argv[1:])
        config = CurationConfig(image_size=32, k=4, budget=0.1)
        run_federated(data, run, config, engine="inprocess", state_root=state)
        """,
        str(data), str(run), str(state),
    )  # fmt: skip
    config = CurationConfig(image_size=32, k=4, budget=0.1)
    reference = run_federated(
        data, tmp_path / "reference", config, engine="inprocess",
        state_root=tmp_path / "reference-state",
    )  # fmt: skip
    scored = [state / f"center-0{i}" / "runs" / "killed" / "scores.npz" for i in range(3)]
    _wait_for(lambda: any(path.is_file() for path in scored), proc)
    _kill(proc)
    assert not (run / "summary.json").exists(), "the kill came too late to test a restart"
    again = run_federated(data, run, config, engine="inprocess", state_root=state)
    assert again.selected == reference.selected > 0
    assert _selection(run) == _selection(tmp_path / "reference")


# --- atomic rewrites --------------------------------------------------------------------------

WRITER = """
    import sys
    from feddel.common.io import atomic_write_bytes
    target, size, first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    versions = [bytes([65 + i]) * size for i in range(2)]
    print("ready", flush=True)
    i = first
    while True:
        atomic_write_bytes(target, versions[i % 2])
        i += 1
"""


def test_atomic_rewrite_killed_at_random_moments_leaves_old_or_new_never_partial(tmp_path):
    """Two MiB files, rewritten in a loop (temp file, fsync, rename) and SIGKILLed ten times at
    random points of that loop."""
    size = 2 << 20
    target = tmp_path / "cache.bin"
    whole = {hashlib.sha256(bytes([65 + i]) * size).hexdigest() for i in range(2)}
    rng = np.random.default_rng(0)
    seen = set()
    for kill in range(10):
        proc = _start(WRITER, str(target), str(size), str(kill), stdout=subprocess.PIPE)
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(float(rng.uniform(0.0, 0.2)))
        _kill(proc)
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        assert digest in whole
        seen.add(digest)
    assert seen == whole  # the kills caught both versions, so the file really was rewritten
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "cache.bin"]
    assert all(name.startswith(".cache.bin.") and name.endswith(".tmp") for name in leftovers)


# --- the center's event log -------------------------------------------------------------------


def test_center_event_log_cut_mid_line_keeps_every_other_event(tmp_path, caplog):
    state = CenterState(tmp_path)
    state.record("inventory", run="r1", samples=10)
    log = tmp_path / "events.jsonl"
    log.write_bytes(log.read_bytes() + b'{"event": "manifest", "ru')  # power lost mid-write
    state.record("manifest", run="r2", selected=3)
    events = state.events()
    assert [(e["event"], e["run"]) for e in events] == [("inventory", "r1"), ("manifest", "r2")]
    assert "events.jsonl line 2 is damaged; skipped" in caplog.text
