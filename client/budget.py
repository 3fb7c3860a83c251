"""A center's own privacy ledger: the zCDP cost of every release it makes, across runs.

The round's DP accountant runs at the coordinator (server/curation/privacy.py), which a
curious coordinator could simply skip. A center with `max-dp-epsilon` in its policy keeps its
own account instead: before it masks a secure sum it charges rho = sum Delta^2 / (2 sigma^2)
over the sum's parts (common/privacy/sensitivity.py, with the sigmas the whole sum carries when
every member adds its share: the distributed-DP assumption, which a roster padded with the
coordinator's own keys would break), and refuses the release once the total would exceed
its budget.
Identical values carry identical noise (common/privacy/noise.py), so asking for them again
reveals nothing new and costs nothing: only new values are charged. The ledger is an
append-only log in the center's state folder (`privacy-ledger.jsonl`, one line per charged
release, on disk before the release leaves, so a crash can cut short only a line whose release
never left), checked and written under a file lock that concurrent rounds share. Deleting it
resets the budget, which is the hospital's decision, never the coordinator's.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from feddel.common.errors import DataError, Refused
from feddel.common.io import append_json_line, read_json_lines
from feddel.common.privacy.accountant import gaussian_rho, rho_epsilon
from feddel.common.privacy.policy import PrivacyPolicy
from feddel.common.privacy.sensitivity import Part, release_sigmas

LEDGER = "privacy-ledger.jsonl"
LEDGER_LOCK = "privacy-ledger.lock"  # held while a release is checked and charged
_lock = threading.Lock()  # in-process simulations run several centers' handlers in threads


@dataclass
class _Ledger:
    """What the log adds up to, kept in memory while the file is the one last read."""

    rho: float = 0.0
    releases: int = 0
    damaged: int = 0
    seen: set[str] = field(default_factory=set)
    stamp: tuple[int, int, int] | None = None


_ledgers: dict[Path, _Ledger] = {}


def ledger_summary(state: Path, policy: PrivacyPolicy) -> dict:
    """What `feddel-center status` reports of the ledger: releases charged, rho, epsilon at the
    policy's delta, the budget (None: the center keeps no budget) and lines cut short by a
    crash (their releases never left)."""
    with _lock:
        ledger = _load(state / LEDGER)
    return {
        "releases": ledger.releases, "rho": ledger.rho,
        "epsilon": rho_epsilon(ledger.rho, policy.dp_delta), "delta": policy.dp_delta,
        "max_epsilon": policy.max_dp_epsilon if policy.has_budget else None,
        "damaged_lines": ledger.damaged,
    }  # fmt: skip


def charge_release(
    state: Path,
    policy: PrivacyPolicy,
    run: str,
    phase: str,
    parts: list[Part],
    sigmas: tuple[float, float],
    roster: int,
    values: np.ndarray,
) -> None:
    """Charge one release (noise sigma, count sigma of the whole sum over `roster` members)
    to the center's ledger, or raise Refused when it would take the center past its
    max-dp-epsilon."""
    if not policy.has_budget:
        return
    rho = gaussian_rho(release_sigmas(parts, *sigmas))
    if math.isinf(rho):
        policy.check_dp_release(phase)
    digest = hashlib.sha256(
        f"{phase}/{roster}".encode()
        + np.asarray([*sigmas], np.float64).tobytes()
        + values.tobytes()
    ).hexdigest()
    path = state / LEDGER
    with _charging(state):
        ledger = _load(path)
        if digest in ledger.seen:
            return  # the same values again: the same noise, nothing new revealed
        epsilon = rho_epsilon(ledger.rho + rho, policy.dp_delta)
        if epsilon > policy.max_dp_epsilon * (1.0 + 1e-9):
            raise Refused(
                f"phase '{phase}' of run '{run}' would take this center's privacy loss to "
                f"epsilon={epsilon:.3g} (delta={policy.dp_delta:g}), past its max-dp-epsilon="
                f"{policy.max_dp_epsilon:g}; its budget is spent ({LEDGER} in its state folder "
                "lists every release) (center.toml [privacy])"
            )
        record = {"time": time.time(), "run": run, "phase": phase, "rho": rho, "digest": digest}
        append_json_line(path, record, durable=True)
        _add(ledger, record)
        ledger.stamp = _stamp(path)


@contextlib.contextmanager
def _charging(state: Path) -> Iterator[None]:
    """One charge at a time per ledger: across this process's threads and across processes
    (a deployed center runs each message in its own process, so two rounds could otherwise
    both pass the budget check before either wrote its line)."""
    state.mkdir(parents=True, exist_ok=True)
    with _lock, open(state / LEDGER_LOCK, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file closes
        yield


def _load(path: Path) -> _Ledger:
    """The ledger's totals: from memory when the file is unchanged since this process last
    read or wrote it, else from the file (another process, a restored backup)."""
    stamp = _stamp(path)
    cached = _ledgers.get(path)
    if cached is not None and cached.stamp == stamp:
        return cached
    records, damaged = read_json_lines(path)
    ledger = _Ledger(damaged=len(damaged), stamp=stamp)
    for number, record in enumerate(records, start=1):
        try:
            _add(ledger, record)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise DataError(
                f"privacy ledger {path} is unreadable (record {number}: {error!r}); restore it "
                "from a backup (deleting it resets this center's privacy budget, which only the "
                "hospital may decide)"
            ) from error
    _ledgers[path] = ledger
    return ledger


def _add(ledger: _Ledger, record: dict) -> None:
    rho = float(record["rho"])
    if not rho >= 0.0:
        raise ValueError(f"rho {record['rho']!r} is not a privacy cost")
    ledger.seen.add(str(record["digest"]))
    ledger.rho += rho
    ledger.releases += 1


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns
