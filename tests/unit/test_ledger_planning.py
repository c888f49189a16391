"""The ledger sync in the fleet's plan and budget, and the accounts file's ledger_interval."""

from __future__ import annotations

from pathlib import Path

import pytest

from recorder.accounts import load_accounts_file, process_settings
from recorder.errors import ConfigError
from recorder.scheduling import Demand, WeightBudget, plan_intervals
from tests.unit.test_scheduling import WallClock

INCOME = 30


def test_plan_counts_the_ledger_and_stretches_400_accounts_that_fit_without_it():
    polls_only = plan_intervals([Demand(f"a{i}", 60.0, 5) for i in range(400)], 2400)
    assert not polls_only.stretched
    plan = plan_intervals([Demand(f"a{i}", 60.0, 5, 300.0, INCOME) for i in range(400)], 2400)
    # 400 x 5 a minute of polls + 400 x 30 every 5 minutes of ledger = 2000 + 2400 > 2160.
    assert plan.asked_per_minute == 4400 and plan.stretched
    assert plan.stretch == pytest.approx(4400 / 2160)
    assert set(plan.intervals.values()) == {122.223} and set(plan.ledger_intervals.values()) == {611.112}
    spent = sum(5 * 60 / plan.intervals[f"a{i}"] + INCOME * 60 / plan.ledger_intervals[f"a{i}"] for i in range(400))
    assert spent <= 2160
    assert plan.polls_per_minute == pytest.approx(2000 / plan.stretch)
    assert "need 4400 request weight a minute (polls and ledger syncs)" in plan.warning()
    assert "and the ledger syncs' likewise" in plan.warning()


def test_plan_keeps_intervals_that_fit_with_their_ledger():
    plan = plan_intervals([Demand("a", 60.0, 10, 300.0, INCOME), Demand("b", 30.0, 5, None)], 2400)
    assert not plan.stretched and plan.asked_per_minute == 10 + 10 + 6
    assert plan.intervals == {"a": 60.0, "b": 30.0} and plan.ledger_intervals == {"a": 300.0}
    assert plan.polls_per_minute == 20


def test_budget_leave_keeps_the_polls_share_of_the_minute_free():
    clock = WallClock(1_800_000_000.0)
    budget = WeightBudget(100, wall_clock=clock)  # ceiling 90
    assert budget.reserve(30, leave=20) == 0.0
    assert budget.reserve(30, leave=20) == 0.0  # 60 + 20 left = 80 <= 90
    assert budget.reserve(30, leave=20) > 0  # 90 + 20 > 90: the ledger waits
    assert [budget.reserve(10, leave=0), budget.reserve(10)] == [0.0, 0.0]  # the polls still fit
    budget.settle(30, 95)
    assert budget.reserve(5) > 0


ACCOUNTS = """\
[defaults]
ledger_interval = 600

[[accounts]]
label = "a"
api_key_env = "K"
api_secret_env = "S"

[[accounts]]
label = "b"
api_key_env = "K"
api_secret_env = "S"
ledger_interval = 60

[[accounts]]
label = "c"
api_key_env = "K"
api_secret_env = "S"
"""
ENVIRON = {"K": "key", "S": "secret"}


def intervals(path: str, environ: dict[str, str], overrides: dict) -> dict[str, float]:
    accounts = load_accounts_file(path)
    process = process_settings(accounts, environ, overrides)
    return {entry.label: entry.settings(environ, process).ledger_interval for entry in accounts.accounts}


def test_ledger_interval_per_account_wins_over_defaults_and_the_command_line(tmp_path: Path):
    path = tmp_path / "accounts.toml"
    path.write_text(ACCOUNTS)
    assert intervals(str(path), ENVIRON, {}) == {"a": 600.0, "b": 60.0, "c": 600.0}
    # Without [defaults]: --ledger-interval, else RECORDER_LEDGER_INTERVAL, else 300, for every account.
    path.write_text(ACCOUNTS.replace("[defaults]\nledger_interval = 600\n", ""))
    assert intervals(str(path), ENVIRON, {}) == {"a": 300.0, "b": 60.0, "c": 300.0}
    environ = {**ENVIRON, "RECORDER_LEDGER_INTERVAL": "120"}
    assert intervals(str(path), environ, {}) == {"a": 120.0, "b": 60.0, "c": 120.0}
    assert intervals(str(path), environ, {"ledger_interval": 45.0}) == {"a": 45.0, "b": 60.0, "c": 45.0}


@pytest.mark.parametrize(("value", "problem"), [
    ("5", "line 13: accounts[1].ledger_interval: must be at least 10 s"),
    ('"soon"', "line 13: accounts[1].ledger_interval must be a number"),
])
def test_a_bad_ledger_interval_names_its_line(tmp_path: Path, value: str, problem: str):
    path = tmp_path / "accounts.toml"
    path.write_text(ACCOUNTS.replace("ledger_interval = 60\n", f"ledger_interval = {value}\n"))
    with pytest.raises(ConfigError) as caught:
        load_accounts_file(str(path))
    assert problem in str(caught.value) and "\n" not in str(caught.value)
