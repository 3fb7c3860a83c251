"""A center's own privacy ledger: the zCDP cost of every release it makes, across runs.

The round's DP accountant runs at the coordinator (server/curation/privacy.py), which a
curious coordinator could simply skip. A center with `max-dp-epsilon` in its policy keeps its
own account instead: before it masks a secure sum it charges rho = sum Delta^2 / (2 sigma^2)
over the sum's parts (common/privacy/sensitivity.py, with the sigmas the whole sum carries when
every member adds its share: the distributed-DP assumption, which a roster padded with the
coordinator's own keys would break), and refuses the release once the total would exceed
its budget.
Identical values carry identical noise (common/privacy/noise.py), so asking for them again
reveals nothing new and costs nothing: only new values are charged. The ledger lives in the
center's state folder (`privacy-ledger.json`); deleting it resets the budget, which is the
hospital's decision, never the coordinator's.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from pathlib import Path

import numpy as np

from feddel.common.errors import DataError, Refused
from feddel.common.io import write_json
from feddel.common.privacy.accountant import gaussian_rho, rho_epsilon
from feddel.common.privacy.policy import PrivacyPolicy
from feddel.common.privacy.sensitivity import Part, release_sigmas

LEDGER = "privacy-ledger.json"
_lock = threading.Lock()  # in-process simulations run several centers' handlers in threads


def ledger_epsilon(state: Path, delta: float) -> float:
    """The (epsilon, delta) privacy loss of everything in a center's ledger."""
    return rho_epsilon(_read(state / LEDGER)["rho"], delta)


def ledger_summary(state: Path, policy: PrivacyPolicy) -> dict:
    """What `feddel-center status` reports of the ledger: releases charged, rho, epsilon at the
    policy's delta, and the budget (None: the center keeps no budget)."""
    ledger = _read(state / LEDGER)
    return {
        "releases": len(ledger["releases"]), "rho": ledger["rho"],
        "epsilon": rho_epsilon(ledger["rho"], policy.dp_delta), "delta": policy.dp_delta,
        "max_epsilon": policy.max_dp_epsilon if policy.has_budget else None,
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
    with _lock:
        ledger = _read(path)
        if digest in ledger["seen"]:
            return  # the same values again: the same noise, nothing new revealed
        total = ledger["rho"] + rho
        epsilon = rho_epsilon(total, policy.dp_delta)
        if epsilon > policy.max_dp_epsilon * (1.0 + 1e-9):
            raise Refused(
                f"phase '{phase}' of run '{run}' would take this center's privacy loss to "
                f"epsilon={epsilon:.3g} (delta={policy.dp_delta:g}), past its max-dp-epsilon="
                f"{policy.max_dp_epsilon:g}; its budget is spent ({LEDGER} in its state folder "
                "lists every release) (center.toml [privacy])"
            )
        ledger["rho"] = total
        ledger["seen"].append(digest)
        ledger["releases"].append({"time": time.time(), "run": run, "phase": phase, "rho": rho})
        write_json(path, ledger)


def _read(path: Path) -> dict:
    if not path.is_file():
        return {"rho": 0.0, "seen": [], "releases": []}
    try:
        ledger = json.loads(path.read_text())
        return {key: kind(ledger[key]) for key, kind in (("rho", float), ("seen", list),
                                                         ("releases", list))}  # fmt: skip
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(
            f"privacy ledger {path} is unreadable ({error}); restore it from a backup (deleting "
            "it resets this center's privacy budget, which only the hospital may decide)"
        ) from error
