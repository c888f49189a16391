"""Backfill: derived balances from the income ledger, stored apart, checked against the daily snapshot."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from recorder import queries
from recorder.exchange import BinanceFuturesClient, fetch_futures_snapshots
from recorder.ledger.backfill import AGREE, DISAGREE, LedgerCoverage, backfill, check_snapshots, derived_timeline
from recorder.models import Balance, DerivedBalance, IncomeEntry
from recorder.store import ensure_account, record_poll
from tests.conftest import SIM_KEY, SIM_SECRET

DAY_MS = 86_400_000
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
OPENING = Decimal("1000.00000000")


def at_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def ledger_history(now_ms: int, count: int = 60) -> list[dict]:
    """Entries over the last ~3 weeks, oldest first; trades book REALIZED_PNL and COMMISSION in one millisecond."""
    rng = random.Random(7)
    entries, time_ms, tran = [], now_ms - 21 * DAY_MS, 5_000_000_000_000_000_000
    while len(entries) < count:
        time_ms += rng.randint(60_000, 8 * 3_600_000)
        kind = rng.choice(["TRADE", "FUNDING_FEE", "TRANSFER"])
        amount = Decimal(rng.randint(-50_000_000_000, 50_000_000_000)).scaleb(-8)
        tran += 1
        if kind == "TRADE":
            entries.append({"time": time_ms, "type": "REALIZED_PNL", "income": amount, "tran": tran})
            fee = -Decimal(rng.randint(1, 99_999_999)).scaleb(-8)
            entries.append({"time": time_ms, "type": "COMMISSION", "income": fee, "tran": tran})
        else:
            entries.append({"time": time_ms, "type": kind, "income": amount, "tran": tran})
    assert time_ms < now_ms - 60_000
    return entries


def states_after(entries: list[dict]) -> list[tuple[int, Decimal]]:
    balance, states = OPENING, []
    for entry in entries:
        balance += entry["income"]
        states.append((entry["time"], balance))
    return states


@pytest.fixture
def recorded(simulator, sessions):
    """The simulator had a 3-week USDT history; the recorder polled once now and archived the ledger."""
    now_ms = simulator.server_time_ms()
    entries = ledger_history(now_ms)
    states = states_after(entries)
    simulator.set_wallet_history(SIM_KEY, [(now_ms - 22 * DAY_MS, "USDT", str(OPENING))]
                                 + [(t, "USDT", str(b)) for t, b in states])
    final = format(states[-1][1], "f")
    simulator.set_balances(SIM_KEY, [{"asset": "USDT", "balance": final, "crossWalletBalance": final,
                                      "crossUnPnl": "0.00000000", "availableBalance": final,
                                      "maxWithdrawAmount": final, "marginAvailable": True,
                                      "updateTime": states[-1][0]}])
    client = BinanceFuturesClient(base_url=simulator.base_url, api_key=SIM_KEY, api_secret=SIM_SECRET)
    fetched = client.fetch_balances()
    polled_at = datetime.now(timezone.utc)
    with sessions.begin() as session:
        account = ensure_account(session, "main", simulator.base_url, polled_at)
        record_poll(session, account, fetched, started_at=polled_at, finished_at=polled_at)
        session.add_all(
            IncomeEntry(account_id=account.id, time=at_ms(e["time"]), income_type=e["type"], tran_id=e["tran"],
                        asset="USDT", income=e["income"], symbol="BTCUSDT", info="", trade_id="",
                        known_type=True, source="api", recorded_at=polled_at)
            for e in entries
        )
    yield {"client": client, "entries": entries, "states": states, "now": polled_at}
    client.close()


def run_backfill(sessions, now, **kwargs):
    with sessions.begin() as session:
        return backfill(session, "main", since=now - timedelta(days=90), derived_at=now, **kwargs)


def test_backfill_timeline_equals_the_simulators_balances(recorded, sessions):
    result = run_backfill(sessions, recorded["now"])
    (usdt,) = result.assets
    with sessions() as session:
        timeline = derived_timeline(session, "main", "USDT")
    assert timeline == [(at_ms(t), balance) for t, balance in recorded["states"]]
    assert usdt.opening == OPENING
    assert usdt.entries == usdt.rows == len(recorded["entries"])
    # No coverage log on this branch: the archive's first entry is where the walk has to stop.
    assert usdt.start == at_ms(recorded["entries"][0]["time"])
    assert "the archived income entries start at" in usdt.stopped


def test_backfill_rerun_replaces_derived_rows_and_never_touches_observed(recorded, sessions):
    with sessions() as session:
        observed_before = session.execute(select(Balance.id, Balance.balance)).all()
    run_backfill(sessions, recorded["now"])
    with sessions() as session:
        first = session.execute(select(DerivedBalance.at, DerivedBalance.balance).order_by(DerivedBalance.id)).all()
    run_backfill(sessions, recorded["now"] + timedelta(minutes=1))
    with sessions() as session:
        second = session.execute(select(DerivedBalance.at, DerivedBalance.balance).order_by(DerivedBalance.id)).all()
        assert session.execute(select(Balance.id, Balance.balance)).all() == observed_before
    assert second == first and len(first) == len(recorded["entries"])


def test_derived_rows_never_appear_in_observed_queries(recorded, sessions):
    run_backfill(sessions, recorded["now"])
    first_entry = at_ms(recorded["entries"][0]["time"])
    with sessions() as session:
        history = queries.history(session, "main")
        before = queries.as_of(session, "main", first_entry + timedelta(days=1))
        assert session.scalar(select(func.count()).select_from(DerivedBalance)) == len(recorded["entries"])
    assert [state.balance for state in history] == [recorded["states"][-1][1]]
    assert [(p.asset, p.state, p.status) for p in before.positions] == [("USDT", None, "before_first_poll")]


def test_backfill_stops_at_a_hole_in_the_archive(recorded, sessions):
    entries = recorded["entries"]
    hole = (at_ms(entries[10]["time"]) - timedelta(hours=1), at_ms(entries[20]["time"]) + timedelta(milliseconds=1))
    (usdt,) = run_backfill(sessions, recorded["now"], coverage=LedgerCoverage(complete_from=EPOCH, holes=(hole,))).assets
    later = [e for e in entries if at_ms(e["time"]) >= hole[1]]
    assert usdt.start == hole[1] and usdt.entries == len(later)
    assert usdt.opening == recorded["states"][-1][1] - sum(e["income"] for e in later)
    assert "gap" in usdt.stopped
    with sessions() as session:
        assert derived_timeline(session, "main", "USDT")[0] == (hole[1], usdt.opening)


def test_backfill_with_a_complete_archive_opens_at_the_asked_start(recorded, sessions):
    (usdt,) = run_backfill(sessions, recorded["now"], coverage=LedgerCoverage(complete_from=EPOCH)).assets
    assert usdt.stopped is None and usdt.opening == OPENING
    assert usdt.start == recorded["now"] - timedelta(days=90) and usdt.rows == len(recorded["entries"]) + 1


def test_snapshot_check_agrees_then_catches_a_disagreement(recorded, sessions, simulator):
    run_backfill(sessions, recorded["now"])
    now = recorded["now"]
    snapshots = fetch_futures_snapshots(recorded["client"], start=now - timedelta(days=29), end=now)
    with sessions() as session:
        checked = check_snapshots(session, "main", snapshots)
    agreeing = [c for c in checked if c.status == AGREE]
    assert len(agreeing) >= 14 and not [c for c in checked if c.status == DISAGREE]
    # The exchange's books say 1 USDT more from a moment in the middle of the span until the next entry.
    entries, states = recorded["entries"], recorded["states"]
    bump_at = entries[30]["time"] + 1
    wrong = [(t, "USDT", str(b)) for t, b in [(entries[0]["time"] - DAY_MS, OPENING), *states]]
    wrong.append((bump_at, "USDT", str(states[30][1] + 1)))
    simulator.set_wallet_history(SIM_KEY, wrong)
    snapshots = fetch_futures_snapshots(recorded["client"], start=now - timedelta(days=29), end=now)
    with sessions() as session:
        checked = check_snapshots(session, "main", snapshots)
    disagreeing = [c for c in checked if c.status == DISAGREE]
    next_entry = next(e["time"] for e in entries if e["time"] > bump_at)
    expected_days = {c.day for c in checked if bump_at <= (c.at - EPOCH) // timedelta(milliseconds=1) < next_entry}
    assert {c.day for c in disagreeing} == expected_days
    assert all(c.difference == Decimal(-1) and c.snapshot == c.derived + 1 for c in disagreeing)
