"""The weight budget, the interval plan and the poll slots."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from recorder.scheduling import Demand, Slot, Wakeup, WeightBudget, plan_intervals, spread_slots


class WallClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_plan_keeps_400_v3_accounts_at_60s_under_the_budget():
    plan = plan_intervals([Demand(f"a{i}", 60.0, 5) for i in range(400)], 2400)
    assert not plan.stretched
    assert plan.asked_per_minute == 2000 and plan.allowed_per_minute == 2160
    assert set(plan.intervals.values()) == {60.0}


def test_plan_stretches_1000_accounts_to_the_fastest_interval_the_budget_allows():
    plan = plan_intervals([Demand(f"a{i}", 60.0, 5) for i in range(1000)], 2400)
    assert plan.stretched
    # 1000 polls x 5 weight in 2160 weight a minute: one poll per account every 138.889 s.
    assert set(plan.intervals.values()) == {138.889}
    assert sum(5 * 60 / interval for interval in plan.intervals.values()) <= 2160
    assert "need 5000 request weight a minute" in plan.warning()
    assert "the shortest to 138.889s" in plan.warning()


def test_plan_stretches_mixed_intervals_by_one_factor():
    plan = plan_intervals([Demand("fast", 1.0, 10), Demand("slow", 60.0, 5)], 100)
    assert plan.stretch == pytest.approx(605 / 90)
    assert plan.intervals == {"fast": 6.723, "slow": 403.334}


def test_budget_reserves_up_to_the_headroom_then_waits_for_the_next_minute():
    clock = WallClock(1_800_000_030.0)  # 30 s into a minute
    budget = WeightBudget(100, wall_clock=clock)
    assert [budget.reserve(10) for _ in range(9)] == [0.0] * 9  # 90 = 90% of 100
    wait = budget.reserve(10)
    assert 30 < wait < 31
    clock.now += wait
    assert budget.reserve(10) == 0.0  # a new minute starts at zero


def test_budget_counts_the_ips_total_from_the_header():
    clock = WallClock(1_800_000_000.0)
    budget = WeightBudget(100, wall_clock=clock)
    assert budget.reserve(5) == 0.0
    budget.settle(5, 80)  # other processes on this IP used 75 this minute
    assert [budget.reserve(5), budget.reserve(5)] == [0.0, 0.0]  # 80 + 5 + 5 = 90
    assert budget.reserve(5) > 0
    budget.settle(5, None)
    assert budget.reserve(5) == 0.0


def test_budget_hold_stops_every_request_until_retry_after():
    clock = WallClock(1_800_000_000.0)
    budget = WeightBudget(2400, wall_clock=clock)
    budget.hold(12.5)
    assert budget.reserve(1) == 12.5
    clock.now += 12.5
    assert budget.reserve(1) == 0.0


def test_slots_are_spread_evenly_and_anchored_on_the_epoch():
    slots = spread_slots([60.0] * 4)
    assert [slot.phase for slot in slots] == [0.0, 15.0, 30.0, 45.0]
    assert slots[1].next_after(1_800_000_000.0) == 1_800_000_015.0
    assert slots[1].next_after(1_800_000_015.0) == 1_800_000_075.0
    assert slots[1].tick(1_800_000_015.0) == slots[1].tick(1_800_000_074.9) == slots[1].tick(1_800_000_075.0) - 1


def test_slot_of_one_account_started_now():
    slot = Slot(phase=100.5, interval=2.0)
    assert slot.next_after(100.5) == 102.5 and slot.tick(100.5) == 0 and slot.tick(102.4) == 0


def test_wakeup_returns_on_signal_from_another_thread_without_a_timer():
    wakeup = Wakeup()
    wakeup.install()
    try:
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()
        while wakeup.stop_reason is None:
            wakeup.wait(3600)  # only the signal can end this wait
        assert wakeup.stop_reason == "received SIGTERM"
    finally:
        wakeup.close()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_wakeup_nudge_from_a_worker_ends_the_wait():
    wakeup = Wakeup()
    try:
        threading.Timer(0.05, wakeup.stop, ("done",)).start()
        wakeup.wait(3600)
        assert wakeup.stop_reason == "done"
    finally:
        wakeup.close()
