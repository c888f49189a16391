"""The ledger sync in the fleet's plan and budget, and the accounts file's ledger_interval."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from recorder.accounts import load_accounts_file, process_settings
from recorder.errors import ConfigError
from recorder.scheduling import Demand, WeightBudget, plan_intervals
from tests.unit.test_scheduling import WallClock

INCOME = 30


def fleet(accounts: int, interval: float = 60.0, ledger: float | None = 300.0) -> list[Demand]:
    return [Demand(f"a{i}", interval, 5, ledger, INCOME) for i in range(accounts)]


def spent(plan, accounts: int) -> float:
    """The weight a minute the plan spends, polls and ledger syncs."""
    return sum(5 * 60 / plan.intervals[f"a{i}"] + INCOME * 60 / plan.ledger_intervals.get(f"a{i}", float("inf"))
               for i in range(accounts))


def test_polls_and_ledgers_that_fit_together_keep_every_interval():
    plan = plan_intervals([Demand("a", 60.0, 10, 300.0, INCOME), Demand("b", 30.0, 5, None)], 2400)
    assert not plan.stretched and not plan.ledger_stretched and plan.announcement() is None
    assert plan.asked_per_minute == 10 + 10 + 6
    assert plan.intervals == {"a": 60.0, "b": 30.0} and plan.ledger_intervals == {"a": 300.0}
    assert plan.polls_per_minute == 20


def test_400_accounts_keep_their_60s_polls_and_the_ledger_takes_what_is_left():
    plan = plan_intervals(fleet(400), 2400)
    # P = 400 x 5 = 2000, L = 400 x 30 / 5 = 2400, B = 2160: the ledger gets B - P = 160, x15.
    assert not plan.stretched and plan.ledger_stretched
    assert set(plan.intervals.values()) == {60.0}
    assert plan.ledger_stretch == pytest.approx(2400 / 160)
    assert set(plan.ledger_intervals.values()) == {4500.0}
    assert plan.polls_per_minute == 2000 and spent(plan, 400) <= 2160 + 1e-9
    assert plan.announcement() == plan.ledger_notice() == (
        "ledger syncs every 4,500 s instead of 300 s (x15.000) so 400 accounts keep their 60 s polls inside this "
        "IP's budget: polls 2000 + ledger 2400 request weight a minute asked, 2160 (90% of 2400) allowed, the "
        "ledger takes the 160 the polls leave"
    )


def test_1000_accounts_stretch_the_polls_and_keep_the_ledger_at_once_a_day():
    plan = plan_intervals(fleet(1000), 2400)
    # Once a day each is 1000 x 30 / 1440 = 20.8 a minute, less than one request: the floor keeps 30.
    floor = 30
    assert plan.stretched and plan.stretch == pytest.approx(5000 / (2160 - floor))
    assert set(plan.ledger_intervals.values()) == {86_400.0}
    assert set(plan.intervals.values()) == {math.ceil(60_000 * 5000 / (2160 - floor)) / 1000} == {140.846}
    assert spent(plan, 1000) <= 2160 + 1e-9 and plan.polls_per_minute == pytest.approx(2160 - floor)
    warning = plan.announcement()
    assert warning == plan.warning()
    assert "need 5000 request weight a minute for their polls and 6000 for their ledger syncs" in warning
    assert "each account's once a day (30 a minute)" in warning
    assert "every poll interval is stretched x2.347, the shortest to 140.846s, the fastest the budget allows" in warning


def test_the_boundary_between_giving_way_and_stretching_the_polls():
    # 10 accounts syncing their ledgers: the floor is one request's room (30 > 10 x 30 / 1440).
    room = 30
    at = plan_intervals([*fleet(10), Demand("polls", 60.0, 2160 - 50 - room, None)], 2400)
    # P = 50 + 2080 = 2130 = B - floor: the polls keep their intervals, the ledger gets exactly the floor.
    assert not at.stretched and at.ledger_stretched and at.intervals["polls"] == 60.0
    # L = 10 x 30 / 5 = 60 a minute into 30: x2.
    assert at.ledger_stretch == pytest.approx(60 / 30) and set(at.ledger_intervals.values()) == {600.0}
    past = plan_intervals([*fleet(10), Demand("polls", 60.0, 2160 - 50 - room + 1, None)], 2400)
    # One weight more: the ledgers drop to once a day and the polls stretch by P / (B - floor).
    assert past.stretched and past.stretch == pytest.approx(2131 / 2130)
    assert set(past.ledger_intervals.values()) == {86_400.0}
    assert past.intervals["a0"] == math.ceil(60_000 * 2131 / 2130) / 1000


def test_the_floor_counts_each_syncing_account_once_a_day_when_that_is_more_than_one_request():
    # 2,000 accounts: F = 2000 x 30 / 1440 = 41.7 a minute, above one request's 30.
    plan = plan_intervals(fleet(2000), 2400)
    assert plan.ledger_floor_per_minute == pytest.approx(2000 * 30 / 1440)
    assert plan.stretch == pytest.approx(10_000 / (2160 - 2000 * 30 / 1440))


def test_ledger_intervals_asked_differently_share_one_factor_none_past_a_day():
    demands = [Demand("fast", 60.0, 5, 10.0, INCOME), Demand("slow", 60.0, 5, 43_200.0, INCOME),
               Demand("polls", 60.0, 2120, None)]
    plan = plan_intervals(demands, 2400)
    # B - P = 2160 - 2130 = 30 for L = 180 + 0.04: x6 would carry "slow" past a day, so it stays at
    # the floor (0.02 a minute) and "fast" takes the rest.
    assert not plan.stretched and plan.intervals == {"fast": 60.0, "slow": 60.0, "polls": 60.0}
    assert plan.ledger_intervals["slow"] == 86_400.0
    assert plan.ledger_intervals["fast"] == math.ceil(10_000 * 180 / (30 - 30 * 60 / 86_400)) / 1000 == 60.042
    assert 2130 + 30 * 60 / plan.ledger_intervals["fast"] + 30 * 60 / 86_400 <= 2160
    assert "ledger syncs every 60.042 s instead of 10 s (x6.004)" in plan.announcement()


def test_no_ledger_is_polls_only_as_before():
    plan = plan_intervals(fleet(1000, ledger=None), 2400)
    assert plan.stretch == pytest.approx(5000 / 2160) and plan.ledger_intervals == {}
    assert plan.announcement() == (
        "1000 accounts at their intervals need 5000 request weight a minute, but this IP's budget allows 2160 "
        "(90% of 2400): every interval is stretched x2.315, the shortest to 138.889s, the fastest the budget allows"
    )
    assert not plan_intervals(fleet(400, ledger=None), 2400).stretched


def test_a_budget_the_ledger_floor_alone_fills_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot carry 1 accounts' ledger syncs even once a day"):
        plan_intervals(fleet(1), 33)  # 90% of 33 = 29.7 < one request of 30
    assert not plan_intervals(fleet(1, ledger=None), 33).stretched


def test_one_account_follows_the_same_rule():
    plan = plan_intervals(fleet(1, interval=1.0, ledger=10.0), 200)
    # P = 300, B = 180: the polls do not fit even alone; the ledger keeps one request's room a minute.
    assert plan.stretch == pytest.approx(300 / 150) and plan.intervals == {"a0": 2.0}
    assert plan.ledger_intervals == {"a0": 86_400.0}


def test_budget_leave_keeps_the_polls_share_of_the_rest_of_the_minute_free():
    clock = WallClock(1_800_000_000.0)  # on a minute's turn
    budget = WeightBudget(100, wall_clock=clock)  # ceiling 90
    # At the minute's start the polls will need all 40 of their share: the ledger may use 50.
    assert budget.reserve(30, leave=40) == 0.0
    assert budget.reserve(30, leave=40) > 0  # 60 + 40 > 90: the ledger waits
    assert [budget.reserve(10), budget.reserve(10)] == [0.0, 0.0]  # the polls still fit (50)
    clock.now += 45  # a quarter of the minute left: the polls' 10 of it stay free
    assert budget.reserve(30, leave=40) == 0.0  # 50 + 30 + 10 = 90
    assert budget.reserve(1, leave=40) > 0
    assert budget.reserve(10) == 0.0  # the polls' last 10
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
