"""A center's say over the rounds it takes part in: its [policy] (client/site.py), applied to
every message of a round before any handler runs, and the center's audit log.

A deployed SuperNode's node config names the center's center.toml (`center-config`, set by
`feddel-center join`); the file is read at each message, so a policy change applies to the
next round without a restart. A round whose method, budget or operator the policy does not
allow is refused with `Refused`: the reply carries one line saying why, which the coordinator
reports. The first phase of every accepted round and every refusal are written to
<state>/audit.jsonl (who ran what, when). A simulated center has no center.toml and no policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import Context

from feddel.client.site import load_center_site
from feddel.common.curation.methods import METHODS
from feddel.common.deployment.audit import AuditLog
from feddel.common.errors import Refused

CENTER_CONFIG_KEY = "center-config"  # node config: the center.toml `join` was started with
FIRST_PHASE = "inventory"  # every round starts with it: one "accepted" audit line per round


def retention(run: dict[str, Any]) -> float:
    """The share of the pool a round would select here, the number max-budget caps: `full`
    keeps everything whatever budget it names, and a round that names none counts as 1."""
    budget = float(run.get("budget", 1.0))
    method = METHODS.get(str(run.get("method", "")))
    return budget if method is None else method.budget_for(budget)


def admit(context: Context, state: Path, phase: str) -> None:
    """Raise Refused when this center's policy does not allow the round; audit the decision."""
    site_file = str(context.node_config.get(CENTER_CONFIG_KEY, "")).strip()
    if not site_file:
        return
    run: dict[str, Any] = dict(context.run_config)
    operator = str(run.get("operator", ""))
    method, budget = str(run.get("method", "")), retention(run)
    reason = load_center_site(site_file).policy.refusal(method, budget, operator)
    if reason is None and phase != FIRST_PHASE:
        return
    AuditLog.in_folder(state).append(
        "round",
        actor=operator or "(no operator)",
        outcome="refused" if reason else "accepted",
        run=run.get("run-name"),
        run_id=context.run_id,
        method=method,
        budget=budget,
        phase=phase,
        **({"reason": reason} if reason else {}),
    )
    if reason is not None:
        raise Refused(f"refused this round: {reason}")
