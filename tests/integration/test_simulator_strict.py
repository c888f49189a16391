"""The simulator's demanding mode (recorder/simulator/strict.py) over real HTTP: its quirks, and the invariant it keeps."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import pytest

from recorder.errors import ExchangeUnavailable
from recorder.exchange import BinanceFuturesClient
from recorder.ledger.sync import to_ms
from recorder.simulator import ExchangeSimulator
from recorder.simulator.strict import UNKNOWN_INCOME_TYPE
from tests.conftest import SIM_KEY, SIM_SECRET

DAY_MS = 86_400_000


def demanding(seed: int = 7) -> ExchangeSimulator:
    exchange = ExchangeSimulator(demanding=True, seed=seed)
    exchange.add_account(api_key=SIM_KEY, api_secret=SIM_SECRET)
    return exchange


def client(exchange: ExchangeSimulator) -> BinanceFuturesClient:
    return BinanceFuturesClient(base_url=exchange.base_url, api_key=SIM_KEY, api_secret=SIM_SECRET)


def trade_past(exchange: ExchangeSimulator, steps: int = 400, **kwargs) -> int:
    start = exchange.server_time_ms() - 10 * DAY_MS
    exchange.run_past(SIM_KEY, start, steps, 10 * DAY_MS // steps, **kwargs)
    return start


def test_a_seed_replays_the_same_ledger_and_history():
    first, second = demanding(), demanding()
    start = first.server_time_ms() - DAY_MS
    for exchange in (first, second):
        exchange.run_past(SIM_KEY, start, 200, 60_000)
    ledger = first.income_entries(SIM_KEY)
    assert ledger == second.income_entries(SIM_KEY) and len(ledger) > 100
    assert first.wallet_history(SIM_KEY) == second.wallet_history(SIM_KEY)
    other = demanding(8)  # another seed: another market
    other.run_past(SIM_KEY, start, 200, 60_000)
    assert other.income_entries(SIM_KEY) != ledger


def test_every_true_state_holds_exactly_the_entries_up_to_its_time_with_fills_stamped_before_it():
    exchange = demanding()
    trade_past(exchange, withhold_at_step=200)
    entries = exchange.income_entries(SIM_KEY) + exchange.withheld_income(SIM_KEY)
    history = exchange.wallet_history(SIM_KEY)
    lagged = 0
    for asset in ("USDT", "BNB"):
        states = [(when, Decimal(balance)) for when, name, balance in history if name == asset]
        opening = states[0][1]
        for (before, _), (when, balance) in zip(states, states[1:]):
            assert balance == opening + sum((Decimal(e["income"]) for e in entries
                                             if e["asset"] == asset and e["time"] <= when), Decimal(0))
            lagged += sum(1 for e in entries if e["asset"] == asset and before < e["time"] < when)
    assert lagged > 50  # fills stamped before the update that carries them
    kinds = Counter((e["incomeType"], e["asset"]) for e in entries)
    for kind in (("AUTO_EXCHANGE", "USDT"), ("AUTO_EXCHANGE", "BNB"), ("INSURANCE_CLEAR", "USDT"),
                 (UNKNOWN_INCOME_TYPE, "USDT"), ("COMMISSION", "BNB")):
        assert kinds[kind] > 0, kind
    legs = Counter(e["tranId"] for e in entries if e["incomeType"] == "AUTO_EXCHANGE")
    assert set(legs.values()) == {2}
    assert max(Counter(e["time"] for e in entries).values()) >= 3


def test_served_then_moved_and_the_snapshot_tells_the_true_history():
    with demanding() as exchange:
        exchange.auto_move = True
        http = client(exchange)
        try:
            served = {}
            for _ in range(40):
                fetched = http.fetch_balances()
                served_at = exchange.served[-1].served_at_ms
                state = {a.asset: a for a in fetched.assets}["USDT"]
                served[served_at] = state
            entries = exchange.income_entries(SIM_KEY)
            # Entries stamped after the served state but before the moment it was served: not in it.
            assert any(to_ms(state.update_time) < e["time"] <= served_at
                       for served_at, state in served.items() for e in entries if e["asset"] == "USDT")
        finally:
            http.close()


def test_a_burst_pages_by_page_and_a_server_without_page_repeats_page_one():
    with demanding() as exchange:
        burst = exchange.book_burst(SIM_KEY, 1_100)
        http = client(exchange)
        try:
            first = http.fetch_income(burst, burst, 1000).entries
            second = http.fetch_income(burst, burst, 1000, page=2).entries
            assert len(first) == 1000 and len(second) == 100
            assert not {e.key for e in first} & {e.key for e in second}
            exchange.income_pages = False
            assert [e.key for e in http.fetch_income(burst, burst, 1000, page=2).entries] == [e.key for e in first]
        finally:
            http.close()
        usdt = next(row for row in exchange.get_balances(SIM_KEY) if row["asset"] == "USDT")
        assert usdt["updateTime"] == burst


def test_inject_after_answers_the_first_requests_normally():
    with demanding() as exchange:
        exchange.inject("http-503", endpoint="income", after=2)
        http = client(exchange)
        try:
            now = exchange.server_time_ms()
            for _ in range(2):
                assert http.fetch_income(now - DAY_MS, now, 10).entries == ()
            with pytest.raises(ExchangeUnavailable):
                http.fetch_income(now - DAY_MS, now, 10)
            assert http.fetch_income(now - DAY_MS, now, 10).entries == ()
        finally:
            http.close()
        with pytest.raises(ValueError):
            exchange.inject("http-503", endpoint="income", after=-1)
