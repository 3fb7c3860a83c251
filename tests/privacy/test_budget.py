"""A center's own privacy budget (`max-dp-epsilon`): it holds whatever the coordinator does.

The round's DP accountant runs at the coordinator, which a curious coordinator skips. A center
with a budget counts what it releases itself (client/budget.py): it refuses releases no noise
protects, joins a dp-epsilon round within its budget, charges nothing for values asked again,
and refuses once a coordinator's extra questions have spent the budget.
"""

import fcntl
import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest

from feddel.client import handlers
from feddel.client.budget import (
    LEDGER,
    LEDGER_LOCK,
    charge_release,
    ledger_summary,
)
from feddel.client.commands.status import center_status
from feddel.client.handlers import CenterPaths
from feddel.client.state import CenterState
from feddel.common.config import CurationConfig
from feddel.common.errors import DataError, Refused, RunFailed
from feddel.common.privacy import secagg
from feddel.common.privacy.policy import PrivacyPolicy
from feddel.common.privacy.sensitivity import release_parts
from feddel.common.wire.protocol import (
    CountsRequest,
    LloydRequest,
    SeedRequest,
    centers_digest,
    roster_array,
)
from feddel.server.curation.privacy import RoundPrivacy
from feddel.simulations.federated import run_federated
from feddel.simulations.synth import generate_federation

SIZE = 32
EPSILON = 10.0
BUDGET = PrivacyPolicy(max_dp_epsilon=EPSILON)
DP = CurationConfig(image_size=SIZE, k=4, dp_epsilon=EPSILON)


@pytest.fixture(scope="module")
def dp_round(tmp_path_factory):
    """A dp-epsilon round of 6 centers, each with a budget of the round's epsilon."""
    root = tmp_path_factory.mktemp("budget")
    generate_federation(root / "data", centers=6, scale="small", seed=5, size=SIZE)
    for index, center in enumerate(sorted(p for p in (root / "data").iterdir() if p.is_dir())):
        state = root / "state" / center.name  # fixed noise secrets: the same noise every run
        state.mkdir(parents=True)
        (state / "noise.key").write_bytes(bytes([index + 1]) * 32)
    summary = run_federated(root / "data", root / "run", DP, engine="inprocess",
                            state_root=root / "state", policy=BUDGET)  # fmt: skip
    return root, summary


def _states(root):
    return sorted(p for p in (root / "state").iterdir() if p.is_dir())


def test_a_center_with_a_budget_refuses_a_round_without_dp(dp_round, tmp_path):
    """Exact counts have no finite privacy cost: a default round (no dp-epsilon) is refused
    by every center before it sends anything."""
    root, _ = dp_round
    with pytest.raises(RunFailed, match=r"would release exact counts.*max-dp-epsilon=10"):
        run_federated(root / "data", tmp_path / "run", CurationConfig(image_size=SIZE, k=4),
                      engine="inprocess", state_root=tmp_path / "state", policy=BUDGET)  # fmt: skip
    center = sorted(p for p in (root / "data").iterdir() if p.is_dir())[0]
    paths = CenterPaths(center.name, center, tmp_path / "state" / center.name, BUDGET)
    with pytest.raises(Refused, match="phase 'seed' would release exact counts"):
        handlers.seed(SeedRequest(run="run", method="feddel", seed=0, noise_sigma=0.05,
                                  k_local=8, min_count=10), paths)  # fmt: skip


def test_a_dp_round_fits_each_centers_budget_and_rerunning_it_costs_nothing(dp_round, tmp_path):
    """Every center joins the whole round (its summary names all six) and spends at most the
    round's epsilon by its own count: a center charges only values it has not sent before,
    so it may spend less than the coordinator planned (measured with these noise
    secrets: 5.2-6.8 of 10)."""
    root, summary = dp_round
    spent = {state.name: ledger_summary(state, BUDGET)["epsilon"] for state in _states(root)}
    print("each center's epsilon after one round:", spent)
    assert summary.centers == 6 and not summary.failed_centers
    assert summary.privacy["dp"]["epsilon"] <= EPSILON * (1 + 1e-9)
    assert all(0.3 * EPSILON < eps <= EPSILON * (1 + 1e-9) for eps in spent.values()), spent
    run_federated(root / "data", tmp_path / "rerun", DP, engine="inprocess",
                  state_root=root / "state", policy=BUDGET)  # fmt: skip
    again = {state.name: ledger_summary(state, BUDGET)["epsilon"] for state in _states(root)}
    assert again == spent  # the same values carry the same noise: nothing new was released
    status = center_status(_states(root)[0], privacy=BUDGET)["privacy_ledger"]
    assert status["epsilon"] == spent["center-00"] and status["max_epsilon"] == EPSILON
    assert status["releases"] > 10


def test_extra_questions_are_refused_once_the_budget_is_spent(dp_round, tmp_path):
    """A coordinator that, after the round, keeps asking one center for Lloyd statistics of
    new centers at the round's sigmas: the center answers until its ledger reaches the budget,
    then refuses, and its loss never exceeds max-dp-epsilon."""
    root, _ = dp_round
    state = _states(root)[0]
    center = root / "data" / state.name
    paths = CenterPaths(state.name, center, state, BUDGET)
    sigmas = RoundPrivacy.plan(DP).for_phase("lloyd")
    keys = [secagg.public_key(CenterState(state).secagg_key("run"))]
    keys += [secagg.public_key(secagg.generate_private_key()) for _ in range(2)]
    asked = dict(run="run", roster=roster_array(keys), noise_sigma=sigmas.noise,
                 count_sigma=sigmas.count, samples=10_000, method="feddel")  # fmt: skip
    rng = np.random.default_rng(0)
    answered = 0
    with pytest.raises(Refused, match="past its max-dp-epsilon=10"):
        for attempt in range(90_000, 92_000, 2):
            centers = rng.standard_normal((3, 192))
            centers /= np.linalg.norm(centers, axis=1, keepdims=True)
            handlers.counts(CountsRequest(**asked, attempt=attempt, centers=centers), paths)
            handlers.lloyd(LloydRequest(**asked, attempt=attempt + 1,
                                        cells=centers_digest(centers),
                                        open=np.ones(3, dtype=np.int64)), paths)  # fmt: skip
            answered += 1
    rhos = [json.loads(line)["rho"] for line in (state / LEDGER).read_text().splitlines()]
    print(f"extra Lloyd releases answered before the refusal: {answered}")
    assert ledger_summary(state, BUDGET)["epsilon"] <= EPSILON * (1 + 1e-9)
    assert answered < 1000 and math.isfinite(sum(rhos)) and min(rhos) > 0


def _charge(state, values, budget=BUDGET):
    sigmas = RoundPrivacy.plan(DP).for_phase("lloyd")
    parts = release_parts("lloyd", SIZE, reports_survivors=False)
    charge_release(state, budget, "run", "lloyd", parts, (sigmas.noise, sigmas.count), 3,
                   np.asarray(values, np.float64))  # fmt: skip


def test_the_ledger_is_an_append_only_log_read_again_when_another_process_writes_it(tmp_path):
    _charge(tmp_path, [1.0, 2.0])
    _charge(tmp_path, [1.0, 2.0])  # the same values: nothing new, nothing charged
    _charge(tmp_path, [3.0, 4.0])
    lines = (tmp_path / LEDGER).read_text().splitlines()
    assert len(lines) == 2
    one = json.loads(lines[0])["rho"]
    assert one > 0 and ledger_summary(tmp_path, BUDGET)["rho"] == pytest.approx(2 * one)
    # another process (a restarted center) appends a release: this one sees it
    (tmp_path / LEDGER).write_text(
        "\n".join([*lines, lines[1].replace('"digest": "', '"digest": "x')])
    )
    assert ledger_summary(tmp_path, BUDGET)["releases"] == 3
    assert ledger_summary(tmp_path, BUDGET)["rho"] == pytest.approx(3 * one)


def test_a_line_cut_short_by_a_crash_is_counted_and_costs_nothing_else(tmp_path):
    _charge(tmp_path, [1.0, 2.0])
    with open(tmp_path / LEDGER, "a") as ledger:
        ledger.write('{"digest": "ab", "rh')  # the crash: its release never left
    _charge(tmp_path, [5.0, 6.0])
    summary = ledger_summary(tmp_path, BUDGET)
    assert (summary["releases"], summary["damaged_lines"]) == (2, 1)


def test_an_unreadable_ledger_stops_with_one_line_naming_it(tmp_path):
    (tmp_path / LEDGER).write_text('{"digest": "ab", "rho": -1.0}\n')
    with pytest.raises(DataError, match=r"privacy ledger .*privacy-ledger.jsonl is unreadable"):
        ledger_summary(tmp_path, BUDGET)
    (tmp_path / LEDGER).write_text('{"rho": 0.5}\n')
    with pytest.raises(DataError, match=r"record 1: KeyError\('digest'\)"):
        _charge(tmp_path, [1.0])


CHARGE_IN_ANOTHER_PROCESS = """
import sys
from pathlib import Path
import numpy as np
from feddel.client.budget import charge_release
from feddel.common.errors import Refused
from feddel.common.privacy.policy import PrivacyPolicy
from feddel.common.privacy.sensitivity import release_parts
state, noise, count = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
parts = release_parts("lloyd", 32, reports_survivors=False)
print("ready", flush=True)
try:
    charge_release(state, PrivacyPolicy(max_dp_epsilon=10.0), "run", "lloyd", parts,
                   (noise, count), 3, np.arange(4.0))
except Refused:
    sys.exit(3)
"""


def test_a_charge_in_another_process_waits_for_the_ledger_and_sees_what_was_spent(tmp_path):
    """A deployed center runs each message in its own process: while one holds the ledger,
    another's check waits, then counts what the first charged (here: the whole budget)."""
    sigmas = RoundPrivacy.plan(DP).for_phase("lloyd")
    with open(tmp_path / LEDGER_LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        other = subprocess.Popen(
            [sys.executable, "-c", CHARGE_IN_ANOTHER_PROCESS, str(tmp_path),
             str(sigmas.noise), str(sigmas.count)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert other.stdout.readline().strip() == "ready"
        time.sleep(2.0)
        assert other.poll() is None  # waiting for the ledger, not charging past it
        with open(tmp_path / LEDGER, "a") as ledger:  # this process spends the budget
            ledger.write(json.dumps({"run": "r", "phase": "p", "rho": 1e6, "digest": "x"}) + "\n")
    assert other.wait(timeout=60) == 3  # Refused: it read the ledger again under the lock
    assert ledger_summary(tmp_path, BUDGET)["releases"] == 1
