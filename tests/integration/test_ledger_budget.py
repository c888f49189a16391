"""The ledger sync inside run's WeightBudget: each page reserved there, settled from the weight header."""

from __future__ import annotations

from recorder.scheduling import WeightBudget
from tests.integration.test_ledger_sync import archived, make_sync, served, trade
from tests.unit.test_scheduling import WallClock


def test_every_page_reserves_from_the_shared_budget_and_settles_from_the_header(simulator, sessions):
    trade(simulator)
    budget = WeightBudget(2400)
    asked: list[int] = []

    def reserve(cost: int) -> float:
        asked.append(cost)
        return budget.reserve(cost, leave=100)

    sync = make_sync(simulator, sessions, weight_budget=reserve, settle_weight=budget.settle, max_pause=0)
    result = sync.sync_once()
    assert not result.paused and result.requests == 13 and asked == [30] * 13
    assert archived(sessions) == served(simulator)
    # Nothing left reserved: every page was settled, and the budget knows the IP's total from the header.
    assert budget._unreported == 0 and budget._reported == sync.client.last_used_weight > 0


def test_a_sync_leaves_the_polls_share_and_goes_on_next_time(simulator, sessions):
    trade(simulator)
    clock = WallClock(1_800_000_000.0)  # a minute's turn: the polls still need all their share of it
    budget = WeightBudget(200, wall_clock=clock)  # ceiling 180
    leave = 100  # the polls' share of a minute: 80 left for the ledger, two pages

    sync = make_sync(simulator, sessions, weight_budget=lambda cost: budget.reserve(cost, leave=leave),
                     settle_weight=budget.settle, max_pause=0)
    first = sync.sync_once()
    assert first.paused and first.requests == 2 and first.windows == 2
    # The polls still find their share free this minute.
    assert [budget.reserve(10) for _ in range(leave // 10)] == [0.0] * (leave // 10)
    clock.now += 60  # the next minute
    while sync.sync_once().paused:
        clock.now += 60
    assert archived(sessions) == served(simulator)
