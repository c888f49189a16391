"""LedgerSync against the simulator's GET /fapi/v1/income on SQLite and PostgreSQL.

The archive must hold every entry the exchange serves exactly once, whatever happens between
(an interrupted sync, 5xx, 429, a malformed page, a timeout), with the coverage telling the truth.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text

from recorder.errors import BadPayload, ExchangeUnavailable, RateLimited
from recorder.exchange import BinanceFuturesClient
from recorder.ledger.sync import OVERLAP, LedgerSync, from_ms, to_ms
from recorder.models import IncomeEntry, LedgerSync as LedgerSyncRow
from recorder.queries.ledger import LedgerListing, coverage
from tests.conftest import SIM_KEY, SIM_SECRET

BIG = 2**53 + 1


def make_client(simulator, **kwargs) -> BinanceFuturesClient:
    return BinanceFuturesClient(base_url=simulator.base_url, api_key=SIM_KEY, api_secret=SIM_SECRET, **kwargs)


def make_sync(simulator, sessions, client=None, **kwargs) -> LedgerSync:
    return LedgerSync(client=client or make_client(simulator), sessions=sessions, account="default", **kwargs)


def archived(sessions) -> list[tuple]:
    """Every stored entry as the exchange would send it (key and fields), in key order."""
    with sessions() as session:
        rows = session.execute(select(IncomeEntry).order_by(IncomeEntry.income_type, IncomeEntry.tran_id,
                                                            IncomeEntry.asset)).scalars().all()
        return [(r.income_type, r.tran_id, r.asset, r.income, to_ms(r.time), r.symbol, r.info, r.trade_id)
                for r in rows]


def served(simulator) -> list[tuple]:
    rows = simulator.income_entries(SIM_KEY)
    return sorted((r["incomeType"], r["tranId"], r["asset"], Decimal(r["income"]), r["time"], r["symbol"],
                   r["info"], r["tradeId"]) for r in rows)


def sync_rows(sessions) -> list[LedgerSyncRow]:
    with sessions() as session:
        return session.execute(select(LedgerSyncRow).order_by(LedgerSyncRow.id)).scalars().all()


def trade(simulator, steps: int = 80) -> None:
    for _ in range(steps):
        simulator.step()


def test_ledger_sync_archives_every_served_entry_exactly_once(simulator, sessions):
    trade(simulator)
    sync = make_sync(simulator, sessions)
    first = sync.sync_once()
    assert first.windows == 13 and not first.paused  # 90 days in 7-day windows
    assert archived(sessions) == served(simulator) and len(served(simulator)) > 20
    assert first.entries_new == len(served(simulator))
    trade(simulator, 40)
    second = sync.sync_once()
    # The resumed sync starts OVERLAP before the newest covered time: one window, nothing stored twice.
    assert second.windows == 1 and second.entries_new == len(served(simulator)) - first.entries_new
    assert archived(sessions) == served(simulator)
    rows = sync_rows(sessions)
    assert rows[-1].window_start == first.covered_until - OVERLAP
    assert all(r.outcome == "ok" and r.pages >= 1 and r.used_weight for r in rows)
    assert sum(r.entries_new for r in rows) == len(served(simulator))
    with sessions() as session:
        (stretch,) = coverage(session, "default").stretches
    assert stretch.covered_until == second.covered_until and stretch.windows == 14


def test_ledger_sync_tran_id_beyond_2_53_round_trips_exactly(simulator, sessions):
    now = simulator.server_time_ms()
    planted = [{"symbol": "ETHUSDT", "incomeType": "FUNDING_FEE", "income": "-0.00000001", "asset": "USDT",
                "info": "", "time": now - 1000, "tranId": tran_id, "tradeId": ""}
               for tran_id in (BIG, BIG + 1, 2**63 - 1)]
    simulator.add_income(SIM_KEY, planted)
    make_sync(simulator, sessions).sync_once()
    with sessions() as session:
        stored = session.execute(select(IncomeEntry.tran_id).order_by(IncomeEntry.tran_id)).scalars().all()
        # And in SQL, on both backends: an exact integer comparison finds the row.
        found = session.execute(text("SELECT count(*) FROM income_entries WHERE tran_id = :t"), {"t": BIG + 1}).scalar()
    assert stored == [BIG, BIG + 1, 2**63 - 1] and found == 1


def test_ledger_sync_stores_and_flags_an_unknown_income_type(simulator, sessions, caplog):
    now = simulator.server_time_ms()
    simulator.add_income(SIM_KEY, [
        {"symbol": "", "incomeType": "TRADFI_DIVIDEND", "income": "0.00000000", "asset": "USDT", "info": "x",
         "time": now - 10, "tranId": 7, "tradeId": ""},
        {"symbol": "", "incomeType": "TRADFI_DIVIDEND", "income": "2.5", "asset": "USDT", "info": "y",
         "time": now - 5, "tranId": 8, "tradeId": ""},
        {"symbol": "", "incomeType": "SPECIAL_FUNDING_FEE", "income": "-1.25", "asset": "USDT", "info": "",
         "time": now - 5, "tranId": 8, "tradeId": ""},
    ])
    with caplog.at_level(logging.WARNING, logger="recorder.ledger.sync"):
        make_sync(simulator, sessions).sync_once()
    with sessions() as session:
        rows = session.execute(select(IncomeEntry.income_type, IncomeEntry.income, IncomeEntry.known_type)
                               .order_by(IncomeEntry.income_type, IncomeEntry.tran_id)).all()
    # A zero amount of an unknown type is kept too: stored, never dropped.
    assert rows == [("SPECIAL_FUNDING_FEE", Decimal("-1.25"), True), ("TRADFI_DIVIDEND", Decimal(0), False),
                    ("TRADFI_DIVIDEND", Decimal("2.5"), False)]
    warnings = [r.getMessage() for r in caplog.records if "TRADFI_DIVIDEND" in r.getMessage()]
    assert len(warnings) == 1 and "unknown" in warnings[0]


def test_ledger_sync_pages_through_a_millisecond_holding_more_than_a_page(simulator, sessions):
    now = simulator.server_time_ms()
    crowded = now - 60_000
    rows = [{"symbol": "BTCUSDT", "incomeType": "COMMISSION", "income": "-0.1", "asset": "USDT", "info": "",
             "time": crowded, "tranId": 10_000 + i, "tradeId": str(i)} for i in range(250)]
    rows += [{"symbol": "BTCUSDT", "incomeType": "REALIZED_PNL", "income": "1", "asset": "USDT", "info": "",
              "time": crowded - 1 - i // 90, "tranId": 20_000 + i, "tradeId": ""} for i in range(180)]
    rows += [{"symbol": "", "incomeType": "TRANSFER", "income": "5", "asset": "USDT", "info": "",
              "time": crowded + 1, "tranId": 30_000, "tradeId": ""}]
    simulator.add_income(SIM_KEY, rows)
    result = make_sync(simulator, sessions, page_limit=100).sync_once()
    assert archived(sessions) == served(simulator) and len(served(simulator)) == 431
    income_requests = [r for r in simulator.requests_log if r.path == "/fapi/v1/income"]
    assert result.requests == len(income_requests) and all(r.status == 200 for r in income_requests)


def test_a_busy_week_is_stored_a_page_at_a_time(simulator, sessions):
    """A window ends before its first full page's last millisecond: a sync holds one page in
    memory, not a week of a busy account's entries, and the windows still cover one stretch."""
    now = simulator.server_time_ms()
    # 350 entries an hour ago, two to a millisecond, and one entry alone a minute ago.
    rows = [{"symbol": "BTCUSDT", "incomeType": "COMMISSION", "income": "-0.01", "asset": "USDT", "info": "",
             "time": now - 3_600_000 + i // 2, "tranId": 50_000 + i, "tradeId": str(i)} for i in range(350)]
    rows.append({"symbol": "", "incomeType": "TRANSFER", "income": "7", "asset": "USDT", "info": "",
                 "time": now - 60_000, "tranId": 60_000, "tradeId": ""})
    simulator.add_income(SIM_KEY, rows)
    result = make_sync(simulator, sessions, page_limit=100, since=datetime.now(timezone.utc) - timedelta(days=1)).sync_once()
    assert archived(sessions) == served(simulator) and result.entries_new == 351
    windows = sync_rows(sessions)
    assert all(w.outcome == "ok" for w in windows) and len(windows) == result.windows == 4
    # Each page's last millisecond (two entries) is read again by the next window, never lost.
    assert [w.entries_fetched for w in windows] == [98, 98, 98, 63]
    assert all(later.window_start == earlier.window_end for earlier, later in zip(windows, windows[1:]))
    assert windows[0].window_end == from_ms(now - 3_600_000 + 48)  # the first page's last millisecond is left out


def test_simulator_keeps_three_months_and_the_sync_never_asks_older(simulator, sessions):
    now = simulator.server_time_ms()
    day = 86_400_000
    simulator.add_income(SIM_KEY, [
        {"symbol": "", "incomeType": "TRANSFER", "income": str(n), "asset": "USDT", "info": "", "time": now - age,
         "tranId": n, "tradeId": ""}
        for n, age in ((1, 91 * day), (2, 90 * day + 60_000), (3, 89 * day))
    ])
    client = make_client(simulator)
    assert [e.tran_id for e in client.fetch_income(now - 100 * day, now).entries] == [3]
    assert len(simulator.income_entries(SIM_KEY, include_expired=True)) == 3
    make_sync(simulator, sessions, client=client, since=datetime(2020, 1, 1, tzinfo=timezone.utc)).sync_once()
    assert [row[1] for row in archived(sessions)] == [3]
    first = sync_rows(sessions)[0]
    assert first.window_start >= datetime.now(timezone.utc) - timedelta(days=90, minutes=1)


# Every class of failure once (the parser's own tests cover each malformed field).
@pytest.mark.parametrize(
    ("fault", "error", "kwargs"),
    [
        ("http-503-html", ExchangeUnavailable, {}),
        ("rate-429", RateLimited, {"retry_after": 5}),
        ("malformed-json", BadPayload, {}),
        ("wrong-type", BadPayload, {}),
        ("reset", ExchangeUnavailable, {}),
        ("stall", ExchangeUnavailable, {"seconds": 30}),
    ],
)
def test_ledger_sync_failure_is_recorded_and_the_next_sync_completes_without_duplicates(
    fault, error, kwargs, simulator, sessions
):
    trade(simulator)
    # Two windows succeed, the third fails: its entries must not be half stored or counted as covered.
    # A short deadline only where the fault is a stall; 3 s leaves a busy machine room for the others.
    first_client = make_client(simulator, timeout=3.0 if fault == "stall" else 10.0)
    sync = make_sync(simulator, sessions, client=first_client)
    calls = {"n": 0}

    def budget(cost: int) -> float:
        calls["n"] += 1
        if calls["n"] == 3:
            simulator.inject(fault, endpoint="income", **kwargs)
        return 0.0

    sync.weight_budget = budget
    with pytest.raises(error):
        sync.sync_once()
    rows = sync_rows(sessions)
    assert [r.outcome for r in rows] == ["ok", "ok", "failed"]
    failed = rows[-1]
    assert failed.error_class == error.__name__ and failed.entries_new == 0 and failed.error_message
    assert "\n" not in failed.error_message and SIM_SECRET not in failed.error_message
    if error is RateLimited:
        assert failed.http_status in (418, 429) and failed.error_code == -1003
    with sessions() as session:
        assert coverage(session, "default").stretches[-1].covered_until == rows[1].window_end
    # The next sync (a new process: a 429's Retry-After binds the client that received it) completes.
    make_sync(simulator, sessions).sync_once()
    assert archived(sessions) == served(simulator)
    with sessions() as session:
        (stretch,) = coverage(session, "default").stretches


class Interrupted(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way catches it."""


def test_ledger_sync_interrupted_between_windows_resumes_without_duplicates(simulator, sessions):
    trade(simulator)
    now = simulator.server_time_ms()
    # Entries spread over the whole 90 days, so every window has some.
    simulator.add_income(SIM_KEY, [
        {"symbol": "", "incomeType": "FUNDING_FEE", "income": "-0.5", "asset": "USDT", "info": "",
         "time": now - day * 86_400_000 - 3_600_000, "tranId": 2**60 + day, "tradeId": ""} for day in range(89)
    ])
    calls = {"n": 0}

    def dying_budget(cost: int) -> float:
        calls["n"] += 1
        if calls["n"] == 6:
            raise Interrupted
        return 0.0

    with pytest.raises(Interrupted):
        make_sync(simulator, sessions, weight_budget=dying_budget).sync_once()
    rows = sync_rows(sessions)
    assert [r.outcome for r in rows] == ["ok"] * 5  # the interrupted window left nothing
    stored_before = len(archived(sessions))
    assert 0 < stored_before < len(served(simulator))
    result = make_sync(simulator, sessions).sync_once()
    assert archived(sessions) == served(simulator)
    assert result.entries_new == len(served(simulator)) - stored_before
    with sessions() as session:
        (stretch,) = coverage(session, "default").stretches


def test_ledger_coverage_shows_a_gap_when_the_recorder_was_off_longer_than_binance_keeps(simulator, sessions):
    real_now = datetime.now(timezone.utc)
    make_sync(simulator, sessions).sync_once()
    later = make_sync(simulator, sessions, clock=lambda: real_now + timedelta(days=100))
    later.sync_once()
    with sessions() as session:
        covered = coverage(session, "default")
        view = session.execute(text("SELECT gap_from, gap_until FROM ledger_gaps")).all()
        stretches = session.execute(text("SELECT count(*) FROM ledger_coverage")).scalar()
    ((gap_from, gap_until),) = covered.gaps
    assert gap_until - gap_from > timedelta(days=9)
    assert gap_until >= real_now + timedelta(days=10) - timedelta(minutes=1)
    assert len(view) == 1 and stretches == 2


def test_ledger_sync_weight_never_over_budget(sessions):
    """A small weight limit forces pauses; no income request ever takes the IP past 90 % of it."""
    from recorder.simulator import ExchangeSimulator

    shift = {"s": 0.0}

    def wall_clock() -> float:
        return time.time() + shift["s"]

    with ExchangeSimulator(weight_limit=200) as simulator:
        simulator.add_account(api_key=SIM_KEY, api_secret=SIM_SECRET)
        trade(simulator, 30)

        def sleep(seconds: float) -> None:
            # Both clocks jump together, as real time would: the exchange's minute turns.
            shift["s"] += seconds
            simulator.clock_offset_ms += round(seconds * 1000)

        client = make_client(simulator, weight_limit=200, wall_clock=wall_clock)
        sync = make_sync(simulator, sessions, client=client, sleep=sleep)
        result = sync.sync_once()
        log = simulator.requests_log
    assert not result.paused and result.windows == 13
    assert shift["s"] > 0  # it had to wait: 13 pages of 30 do not fit in 180 a minute
    assert all(r.status == 200 for r in log) and simulator.bans_issued == 0
    assert max(r.used_weight for r in log) <= 180
    assert archived(sessions) == served(simulator)


def test_ledger_sync_paused_by_the_budget_records_no_partial_window_and_continues(simulator, sessions):
    trade(simulator)
    budget = {"left": 4}

    def weight_budget(cost: int) -> float:
        budget["left"] -= 1
        return 0.0 if budget["left"] >= 0 else 40.0

    first = make_sync(simulator, sessions, weight_budget=weight_budget, max_pause=0).sync_once()
    assert first.paused and first.windows == 4
    assert [r.outcome for r in sync_rows(sessions)] == ["ok"] * 4
    make_sync(simulator, sessions).sync_once()
    assert archived(sessions) == served(simulator)


def test_ledger_listing_running_balance_meets_the_observed_balance(simulator, sessions):
    from recorder.service import Recorder

    recorder = Recorder(client=make_client(simulator), sessions=sessions, account="default")
    recorder.poll_once()
    trade(simulator, 120)
    recorder.poll_once()
    LedgerSync(client=recorder.client, sessions=sessions, account="default").sync_once()
    wallet = {row["asset"]: Decimal(row["balance"]) for row in simulator.get_balances(SIM_KEY)}
    with sessions() as session:
        listing = LedgerListing(session, "default", since=None, until=None)
        last = {line.asset: line.running_balance for line in listing}
        anchors = dict(listing.anchors)
        only_fees = list(LedgerListing(session, "default", since=None, until=None, types=["commission"]))
    assert last["USDT"] == wallet["USDT"] and anchors["USDT"].kind == "observed"
    assert only_fees and {line.income_type for line in only_fees} == {"COMMISSION"}
    usdt_fees = [line for line in only_fees if line.asset == "USDT"]
    assert usdt_fees[-1].running_balance == sum(line.income for line in usdt_fees)


def test_ledger_archive_counts_match_on_the_key(simulator, sessions):
    """Binance's sample gives a TRANSFER and a COMMISSION one tranId: both are kept, keyed by type."""
    now = simulator.server_time_ms()
    simulator.add_income(SIM_KEY, [
        {"symbol": "", "incomeType": "TRANSFER", "income": "10", "asset": "USDT", "info": "TRANSFER",
         "time": now - 20, "tranId": 9689322392, "tradeId": ""},
        {"symbol": "BTCUSDT", "incomeType": "COMMISSION", "income": "-0.01", "asset": "USDT", "info": "COMMISSION",
         "time": now - 10, "tranId": 9689322392, "tradeId": "2059192"},
        {"symbol": "", "incomeType": "AUTO_EXCHANGE", "income": "-3", "asset": "BNB", "info": "",
         "time": now - 5, "tranId": 55, "tradeId": ""},
        {"symbol": "", "incomeType": "AUTO_EXCHANGE", "income": "3", "asset": "USDT", "info": "",
         "time": now - 5, "tranId": 55, "tradeId": ""},
    ])
    make_sync(simulator, sessions).sync_once()
    make_sync(simulator, sessions).sync_once()
    with sessions() as session:
        assert session.execute(select(func.count()).select_from(IncomeEntry)).scalar() == 4


def income_requests(simulator) -> int:
    return sum(1 for record in simulator.requests_log if record.path == "/fapi/v1/income")


def spread_over_90_days(simulator) -> None:
    """Entries on every day of the 90 Binance keeps, so every window has some."""
    now = simulator.server_time_ms()
    simulator.add_income(SIM_KEY, [
        {"symbol": "", "incomeType": "FUNDING_FEE", "income": "-0.5", "asset": "USDT", "info": "",
         "time": now - day * 86_400_000 - 3_600_000, "tranId": 2**60 + day, "tradeId": ""} for day in range(89)
    ])


@contextmanager
def held_while(condition):
    """A hold (LeaseBook.holding's shape) that holds the account while `condition()` is true."""
    yield condition()


def test_ledger_sync_stops_before_the_next_request_once_the_account_is_handed_over(simulator, sessions, caplog):
    trade(simulator)
    spread_over_90_days(simulator)

    def windows_committed() -> int:
        with sessions() as session:
            return session.scalar(select(func.count()).select_from(LedgerSyncRow)) or 0

    # The lease goes as soon as the first window is committed.
    sync = make_sync(simulator, sessions, hold=lambda: held_while(lambda: windows_committed() < 1))
    with caplog.at_level(logging.INFO, logger="recorder.ledger.sync"):
        result = sync.sync_once()
    assert result.stopped and not result.paused and result.windows == 1 and result.requests == 1
    assert income_requests(simulator) == 1  # no page asked for after the handover
    (row,) = sync_rows(sessions)
    assert row.outcome == "ok"  # no failed row: nothing failed
    first_window = [entry for entry in served(simulator) if entry[4] <= to_ms(row.window_end)]
    assert archived(sessions) == first_window and result.entries_new == len(first_window) > 0
    lines = [r for r in caplog.records if r.name == "recorder.ledger.sync"]
    assert [(r.levelno, r.getMessage().split(" windows=")[0]) for r in lines] == [
        (logging.INFO, "ledger sync stopped account=default")
    ]
    assert "handed to another recorder" in lines[0].getMessage() and " windows=1 " in lines[0].getMessage()
    # The next holder's sync goes on from the covered window and archives the rest once.
    make_sync(simulator, sessions).sync_once()
    assert archived(sessions) == served(simulator)


def test_ledger_sync_handed_over_between_a_page_and_its_write_stores_nothing_of_it(simulator, sessions, caplog):
    trade(simulator)
    spread_over_90_days(simulator)
    # The lease goes while the second window's page is on its way: fetched, never written.
    sync = make_sync(simulator, sessions, hold=lambda: held_while(lambda: income_requests(simulator) < 2))
    with caplog.at_level(logging.INFO, logger="recorder.ledger.sync"):
        result = sync.sync_once()
    assert result.stopped and result.windows == 1 and income_requests(simulator) == 2
    assert result.requests == 1  # the window written; the second one's page was read and dropped
    assert [r.outcome for r in sync_rows(sessions)] == ["ok"]
    (window_end,) = [r.window_end for r in sync_rows(sessions)]
    stored = archived(sessions)
    assert stored == [entry for entry in served(simulator) if entry[4] <= to_ms(window_end)] and stored
    assert sum("ledger sync stopped account=default" in r.getMessage() for r in caplog.records) == 1


def test_ledger_sync_of_an_account_never_held_writes_nothing(simulator, sessions):
    trade(simulator)
    result = make_sync(simulator, sessions, hold=lambda: held_while(lambda: False)).sync_once()
    assert result.stopped and result.windows == 0 and result.covered_until is None
    assert income_requests(simulator) == 0
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(IncomeEntry)) == 0
    assert sync_rows(sessions) == []
