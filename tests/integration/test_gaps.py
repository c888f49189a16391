"""Gaps are a fact of the database: the writer stores its schedule and the gaps, readers only read them.

Both backends. Times are set by hand (FixedClock, or explicit finished_at), so every
expectation below is computed from the schedule rule: the successful poll after one at t is
due by t + 1.5 x the interval in force at t (see recorder.coverage).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select, text

from recorder import queries
from recorder.coverage import declare_schedule
from recorder.db import make_engine, make_sessions
from recorder.errors import ExchangeUnavailable, StorageError
from recorder.exchange import RETRY_ATTEMPTS, BinanceFuturesClient
from recorder.locks import WriterLock
from recorder.models import PollGap, PollSchedule
from recorder.records import AssetBalance, FetchedBalances
from recorder.schema import head_revision, upgrade_to_head
from recorder.service import Recorder
from recorder.service import declare_schedule as declare_run_schedule
from recorder.store import ensure_account, record_failure, record_poll
from tests.conftest import SIM_KEY, SIM_SECRET, FixedClock
from tests.integration.test_migration_0003 import insert, migrate
from tests.integration.test_outages import database_down, make_recorder, outage_engine  # noqa: F401 - a fixture

LOCAL = "http://127.0.0.1:9"
T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
ONE = Decimal("1.00000000")
USDT = AssetBalance("USDT", ONE, ONE, ONE, ONE, ONE, True, T0)
DOWN = ExchangeUnavailable("HTTP 503", http_status=503)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def record(sessions, seconds: float, outcome=USDT, label: str = "default") -> None:
    """One poll finishing at T0 + seconds: ok (USDT unchanged) or failed with `outcome`."""
    when = at(seconds)
    with sessions.begin() as session:
        account = ensure_account(session, label, LOCAL, when)
        if isinstance(outcome, Exception):
            record_failure(session, account, outcome, endpoint="v2", started_at=when, finished_at=when)
        else:
            fetched = FetchedBalances("SgsR", (outcome,), "/fapi/v2/balance", 5)
            record_poll(session, account, fetched, started_at=when, finished_at=when)


def declare(sessions, seconds: float, interval: float, label: str = "default") -> bool:
    with sessions.begin() as session:
        account = ensure_account(session, label, LOCAL, at(seconds))
        return declare_schedule(session.connection(), account.id, interval, source="run", at=at(seconds))


def spans(found) -> list[tuple[float, float, bool, dict]]:
    """Gaps as (start, end) in seconds after T0, ongoing, failures."""
    return [((g.start - T0).total_seconds(), (g.end - T0).total_seconds(), g.open_end, dict(g.failures)) for g in found]


def stored_gaps(sessions) -> list[tuple[float, float, int]]:
    with sessions() as session:
        rows = session.execute(select(PollGap.start_at, PollGap.end_at, PollGap.tolerance_ms).order_by(PollGap.end_at))
        return [((s - T0).total_seconds(), (e - T0).total_seconds(), ms) for s, e, ms in rows]


def test_a_single_failed_poll_at_the_default_interval_is_a_gap(sessions, simulator, clock: FixedClock):
    """The real service path, one poll a minute: ok, failed, ok is one gap of 120 s holding one failure."""
    clock.now = T0
    client = BinanceFuturesClient(base_url=simulator.base_url, api_key=SIM_KEY, api_secret=SIM_SECRET, sleep=lambda s: None)
    recorder = Recorder(client=client, sessions=sessions, account="default", clock=clock)
    recorder.poll_once()
    clock.advance(60)
    simulator.inject("http-503", times=RETRY_ATTEMPTS)
    with pytest.raises(ExchangeUnavailable):
        recorder.poll_once()
    clock.advance(60)
    recorder.poll_once()
    with sessions() as session:
        found = queries.gaps(session, "default")
        inside = queries.as_of(session, "default", at(91))
        edge = queries.as_of(session, "default", at(90))
    assert spans(found) == [(0.0, 120.0, False, {"ExchangeUnavailable": 1})]
    assert stored_gaps(sessions) == [(0.0, 120.0, 90_000)]
    # No schedule was declared: the default 60 s interval, so the next poll was due after 90 s.
    assert (edge.freshness.status, inside.freshness.status) == ("ok", "gap")


def test_gaps_and_staleness_follow_the_schedule_the_writer_stored(sessions):
    declare(sessions, 0, 5)
    for seconds in (0, 5, 10, 20, 25):  # 10 -> 20: one missed poll at a 5 s interval
        record(sessions, seconds)
    with sessions() as session:
        found = queries.gaps(session, "default")
        fresh = queries.as_of(session, "default", at(17.5))
        stale = queries.as_of(session, "default", at(17.6))
        cut_short = queries.series(session, "default", "USDT", "balance", at(0), at(30), every="minute")
        silent = queries.series(session, "default", "USDT", "balance", at(0), at(120), every="minute")
    assert spans(found) == [(10.0, 20.0, False, {})]
    assert found[0].tolerance == timedelta(seconds=7.5)
    assert (fresh.freshness.status, stale.freshness.status) == ("ok", "gap")
    assert stale.freshness.tolerance == timedelta(seconds=7.5)
    # 30 s is 5 s after the last poll: fresh. 60 s and 120 s are 35 s and 95 s after it:
    # past the stored 7.5 s (the old reader-side 120 s would have called both fresh).
    assert [(p.status, p.value) for p in cut_short] == [("ok", ONE)]
    assert [(p.status, p.value) for p in silent] == [("gap", None), ("gap", None)]


def test_an_open_gap_at_until_and_silence_before_the_first_poll_use_the_schedule(sessions):
    declare(sessions, 0, 10)
    record(sessions, 0)
    record(sessions, 10)
    with sessions() as session:
        within = queries.gaps(session, "default", since=at(-10), until=at(25))
        past = queries.gaps(session, "default", since=at(-16), until=at(26))
    # Before the first schedule the default (90 s) applies: 10 s of silence before it is no gap.
    assert spans(within) == []
    assert spans(past) == [(10.0, 26.0, True, {})]


def test_tolerance_overrides_the_schedule_both_ways(sessions):
    declare(sessions, 0, 5)
    for seconds in (0, 5, 10, 20, 25, 30, 42, 47):
        record(sessions, seconds, DOWN if seconds == 25 else USDT)
    with sessions() as session:
        default = queries.gaps(session, "default")
        wider = queries.gaps(session, "default", tolerance=timedelta(seconds=11))  # filters the stored gaps
        narrower = queries.gaps(session, "default", tolerance=timedelta(seconds=4.5))  # scans the polls
        stale = queries.as_of(session, "default", at(36), tolerance=timedelta(seconds=4))
        fresh = queries.as_of(session, "default", at(36), tolerance=timedelta(seconds=7))
    assert spans(default) == [(10.0, 20.0, False, {}), (20.0, 30.0, False, {"ExchangeUnavailable": 1}), (30.0, 42.0, False, {})]
    assert spans(wider) == [(30.0, 42.0, False, {})]
    assert spans(narrower) == [
        (0.0, 5.0, False, {}),
        (5.0, 10.0, False, {}),
        (10.0, 20.0, False, {}),
        (20.0, 30.0, False, {"ExchangeUnavailable": 1}),
        (30.0, 42.0, False, {}),
        (42.0, 47.0, False, {}),
    ]
    assert (stale.freshness.status, fresh.freshness.status) == ("gap", "ok")


def test_an_interval_change_between_runs_judges_each_stretch_by_its_own_schedule(sessions):
    declare(sessions, 0, 60)
    record(sessions, 0)
    record(sessions, 60)
    # Restarted at 100 s polling every second; its first success comes only at 110 s: the
    # new run promised a poll by 101.5 s, so 60 -> 110 is a gap although it is under 90 s.
    assert declare(sessions, 100, 1)
    assert not declare(sessions, 100.5, 1)  # the same schedule again: no new row
    for seconds in (110, 111, 112, 114, 115):
        record(sessions, seconds)
    declare(sessions, 200, 60)
    record(sessions, 200)  # 115 -> 200 under the 1 s schedule: a gap
    record(sessions, 260)
    record(sessions, 340)  # 80 s under the 60 s schedule: within 90 s, no gap
    with sessions() as session:
        found = queries.gaps(session, "default")
        schedules = session.execute(select(PollSchedule.interval_ms, PollSchedule.tolerance_ms, PollSchedule.source)).all()
    assert spans(found) == [(60.0, 110.0, False, {}), (112.0, 114.0, False, {}), (115.0, 200.0, False, {})]
    assert [tuple(row) for row in schedules] == [(60_000, 90_000, "run"), (1_000, 1_500, "run"), (60_000, 90_000, "run")]
    assert stored_gaps(sessions) == [(60.0, 110.0, 41_500), (112.0, 114.0, 1_500), (115.0, 200.0, 1_500)]


def test_a_poll_arriving_out_of_order_splits_or_fills_the_gap_it_lands_in(sessions):
    for seconds in (0, 60, 300):
        record(sessions, seconds)
    record(sessions, 180)  # a late arrival inside the 60 -> 300 gap splits it
    record(sessions, 0, label="other")
    record(sessions, 120, label="other")
    record(sessions, 60, label="other")  # fills the other account's gap entirely
    with sessions() as session:
        found = queries.gaps(session, "default")
        other = queries.gaps(session, "other")
    assert spans(found) == [(60.0, 180.0, False, {}), (180.0, 300.0, False, {})]
    assert spans(other) == []
    assert stored_gaps(sessions) == [(60.0, 180.0, 90_000), (180.0, 300.0, 90_000)]


def test_a_replayed_poll_stores_no_second_gap(sessions):
    record(sessions, 0)
    record(sessions, 200)
    record(sessions, 200)  # the same poll again (a spool replay): stored once
    assert stored_gaps(sessions) == [(0.0, 200.0, 90_000)]


def test_gaps_in_a_range_keep_their_true_ends_and_count_only_their_failures(sessions):
    for seconds, outcome in [(0, USDT), (60, USDT), (100, DOWN), (140, DOWN), (180, USDT), (240, USDT), (300, DOWN), (400, USDT)]:
        record(sessions, seconds, outcome)
    with sessions() as session:
        found = queries.gaps(session, "default", since=at(150), until=at(350))
    assert spans(found) == [
        (60.0, 180.0, False, {"ExchangeUnavailable": 2}),
        (240.0, 400.0, False, {"ExchangeUnavailable": 1}),
    ]


def test_migration_0005_infers_each_accounts_schedule_and_backfills_its_gaps(db_url):
    engine = make_engine(db_url)
    try:
        migrate(engine, "upgrade", "0004")
        with engine.begin() as connection:
            insert(connection, "accounts", [
                {"id": 1, "label": "minute", "environment": "local", "created_at": at(0)},
                {"id": 2, "label": "fast", "environment": "local", "created_at": at(0)},
                {"id": 3, "label": "once", "environment": "local", "created_at": at(0)},
                {"id": 4, "label": "never", "environment": "local", "created_at": at(0)},
            ])
            minute = [(1, s, "ok") for s in (0, 60, 120, 240, 300, 361)] + [(1, 180, "failed")]
            fast = [(2, s, "ok") for s in (5, 10, 15, 20, 35, 40)]
            once = [(3, 7, "ok")]
            insert(connection, "polls", [
                {"account_id": a, "finished_at": at(s), "started_at": at(s), "outcome": o, "endpoint": "v2"}
                for a, s, o in minute + fast + once
            ])
        migrate(engine, "upgrade", "head")
        sessions = make_sessions(engine)
        with sessions() as session:
            schedules = session.execute(text(
                "SELECT account_id, interval_ms, tolerance_ms, source FROM poll_schedules ORDER BY account_id"
            )).all()
            firsts = session.execute(select(PollSchedule.account_id, PollSchedule.started_at).order_by(PollSchedule.account_id)).all()
            version = session.execute(text("SELECT version_num FROM alembic_version")).scalar()
            minute_gaps = queries.gaps(session, "minute")
            fast_gaps = queries.gaps(session, "fast")
        assert [tuple(row) for row in schedules] == [
            (1, 60_000, 90_000, "inferred"), (2, 5_000, 7_500, "inferred"), (3, 60_000, 90_000, "inferred"),
        ]
        assert [(a, (s - T0).total_seconds()) for a, s in firsts] == [(1, 0.0), (2, 5.0), (3, 7.0)]
        assert version == head_revision()
        # The failed poll at 180 s carries no error_class here: it counts as 'unknown'.
        assert spans(minute_gaps) == [(120.0, 240.0, False, {"unknown": 1})]
        assert [(g.start, g.end) for g in fast_gaps] == [(at(20), at(35))]
        # New polls go on from the backfilled state: 361 -> 500 is a gap under the inferred minute.
        write = make_sessions(engine, write=True)
        record(write, 500, label="minute")
        with write() as session:
            after = queries.gaps(session, "minute")
        assert [(g.start, g.end) for g in after] == [(at(120), at(240)), (at(361), at(500))]
        migrate(engine, "downgrade", "0004")
        with engine.connect() as connection:
            names = set(connection.dialect.get_table_names(connection))
        assert not {"poll_schedules", "poll_gaps"} & names
    finally:
        engine.dispose()


@pytest.mark.parametrize("writer_lock", [False, True], ids=["library", "service"])
def test_a_database_outage_bridged_by_the_spool_is_no_gap_but_a_failed_poll_inside_it_is(
    simulator, db_url, outage_engine, tmp_path, clock: FixedClock, writer_lock: bool
):
    """Polls spooled while the database was down were taken on time: stored late, they leave no gap.

    With the writer lock (as `recorder run` polls), the head cache's latest poll and schedule
    are dropped with the failed writes and the replay is judged from the database again.
    """
    clock.now = T0
    lock = WriterLock(outage_engine, "default") if writer_lock else None
    if lock is not None:
        lock.acquire()
    recorder = make_recorder(simulator, outage_engine, tmp_path / "spool", lock=lock, clock=clock)
    assert declare_run_schedule(recorder, 60, source="run", at=T0)
    recorder.poll_once()
    with database_down(db_url):
        # The database refuses the schedule too; the caller (run()) tries again on the next tick.
        assert not declare_run_schedule(recorder, 30, source="run", at=T0)
        for _ in range(3):
            clock.advance(60)
            with pytest.raises(StorageError):
                recorder.poll_once()
        simulator.inject("http-503", times=RETRY_ATTEMPTS)
        clock.advance(60)
        with pytest.raises(ExchangeUnavailable):
            recorder.poll_once()
    clock.advance(60)
    recorder.poll_once()  # replays the four spooled polls first, in order
    sessions = make_sessions(outage_engine)
    with sessions() as session:
        found = queries.gaps(session, "default")
    assert spans(found) == [(180.0, 300.0, False, {"ExchangeUnavailable": 1})]
    assert stored_gaps(sessions) == [(180.0, 300.0, 90_000)]
    clock.advance(200)
    recorder.poll_once()  # late again: a gap judged by the schedule the replay left in force
    assert stored_gaps(sessions) == [(180.0, 300.0, 90_000), (300.0, 500.0, 90_000)]
    recorder.close()
    recorder.client.close()
    if lock is not None:
        lock.release()


def test_the_documented_failures_per_gap_sql_runs_on_both_backends(sessions):
    """The README's poll_gaps example, as pasted, counts the failures inside each stored gap."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    (block,) = [part.split("```", 1)[0] for part in readme.split("```sql\n")[1:] if "FROM poll_gaps g" in part]
    for seconds, outcome in [(0, USDT), (60, DOWN), (100, DOWN), (120, USDT), (180, USDT), (400, USDT)]:
        record(sessions, seconds, outcome)
    with sessions() as session:
        rows = session.execute(text(block.strip().rstrip(";"))).all()
    assert [(row.failures,) for row in rows] == [(2,), (0,)]


def test_a_tolerance_override_judges_a_gap_crossing_since_by_the_schedule_it_started_under(sessions):
    """An hourly schedule at the last poll before `since`, a 5 s one from just before `since`."""
    declare(sessions, 0, 3600)
    record(sessions, 0)
    declare(sessions, 1000, 5)
    # Due by min(0 + 5400, 1000 + 7.5) s: the poll at 1005 s is in time, so nothing is stored.
    record(sessions, 1005)
    record(sessions, 1010)
    with sessions() as session:
        stored = queries.gaps(session, "default", since=at(1002))
        # Every stored tolerance from 1002 s on is 7.5 s, but the stretch crossing 1002 s was
        # judged under the hourly one: a 60 s override must scan, and finds it.
        overridden = queries.gaps(session, "default", since=at(1002), tolerance=timedelta(seconds=60))
    assert spans(stored) == []
    assert spans(overridden) == [(0.0, 1005.0, False, {})]
