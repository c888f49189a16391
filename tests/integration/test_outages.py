"""Database outages go to the spool and arrive later in order, exactly once; one writer per account."""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from recorder.db import make_engine, make_sessions
from recorder.errors import ConfigError, ExchangeUnavailable, StorageError
from recorder.exchange import RETRY_ATTEMPTS, BinanceFuturesClient
from recorder.locks import WriterLock
from recorder.models import Balance, Poll
from recorder.schema import upgrade_to_head
from recorder.service import Recorder, utcnow
from recorder.identity import database_id
from recorder.spool import Spool
from tests.conftest import POSTGRES_ADMIN_URL, SIM_KEY, SIM_SECRET, _libpq


@pytest.fixture
def outage_engine(db_url):
    """An engine whose SQLite writes give up quickly while another connection holds the lock."""
    engine = make_engine(db_url, sqlite_busy_timeout_ms=100)
    upgrade_to_head(engine)
    yield engine
    engine.dispose()


@contextmanager
def database_down(db_url: str):
    """Make the database refuse our writes: an exclusive lock on SQLite, no connections on PostgreSQL."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        blocker = sqlite3.connect(url.database, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        return
    name = url.database
    with psycopg.connect(_libpq(POSTGRES_ADMIN_URL), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def make_recorder(simulator, engine, spool_dir: Path, lock: WriterLock | None = None, clock=None) -> Recorder:
    client = BinanceFuturesClient(
        base_url=simulator.base_url, api_key=SIM_KEY, api_secret=SIM_SECRET, sleep=lambda seconds: None
    )
    return Recorder(
        client=client,
        sessions=make_sessions(engine, write=True),
        account="default",
        clock=clock or utcnow,
        spool=Spool(spool_dir, database_id=database_id(engine), account="default"),
        lock=lock,
    )


def usdt_history(engine) -> list[str]:
    with make_sessions(engine)() as session:
        rows = session.scalars(select(Balance).where(Balance.asset == "USDT").order_by(Balance.observed_at)).all()
    return [format(row.balance, "f") + "/" + format(row.cross_un_pnl, "f") for row in rows]


def served_usdt(simulator) -> list[str]:
    states = []
    for snapshot in simulator.served:
        usdt = next(row for row in snapshot.rows if row["asset"] == "USDT")
        state = usdt["balance"] + "/" + usdt["crossUnPnl"]
        if not states or states[-1] != state:
            states.append(state)
    return states


def test_polls_during_an_outage_arrive_afterwards_in_order_once(simulator, db_url, outage_engine, tmp_path, clock):
    recorder = make_recorder(simulator, outage_engine, tmp_path / "spool", clock=clock)
    recorder.poll_once()
    with database_down(db_url):
        for _ in range(3):
            clock.advance(60)
            simulator.step(SIM_KEY)
            with pytest.raises(StorageError, match="will be stored when the database is back"):
                recorder.poll_once()
        simulator.inject("http-503", times=RETRY_ATTEMPTS)
        clock.advance(60)
        with pytest.raises(ExchangeUnavailable):
            recorder.poll_once()  # the failure itself is spooled too, so the gap stays explained
        assert len(recorder.spool.pending()) == 4
    clock.advance(60)
    simulator.step(SIM_KEY)
    recorder.poll_once()
    assert recorder.spool.pending() == []
    assert usdt_history(outage_engine) == served_usdt(simulator)
    with make_sessions(outage_engine)() as session:
        polls = session.scalars(select(Poll).order_by(Poll.finished_at)).all()
    assert [p.outcome for p in polls] == ["ok", "ok", "ok", "ok", "failed", "ok"]
    assert len({p.finished_at for p in polls}) == 6
    delayed = polls[1:5]
    # Each replayed poll was stored a minute or more late: its recorded_at says when.
    assert [p.recorded_at for p in delayed] == [clock.now] * 4
    assert [(clock.now - p.finished_at).total_seconds() for p in delayed] == [240, 180, 120, 60]
    assert (polls[0].recorded_at, polls[-1].recorded_at) == (None, None)  # stored at once
    recorder.client.close()


def test_restart_replays_the_spool_before_polling(simulator, db_url, outage_engine, tmp_path):
    first = make_recorder(simulator, outage_engine, tmp_path / "spool")
    first.poll_once()
    with database_down(db_url):
        simulator.step(SIM_KEY)
        with pytest.raises(StorageError):
            first.poll_once()
    first.client.close()
    # A new process: same spool folder, fresh client.
    second = make_recorder(simulator, outage_engine, tmp_path / "spool")
    assert second.replay_spool() == 1
    assert second.replay_spool() == 0
    simulator.step(SIM_KEY)
    second.poll_once()
    assert usdt_history(outage_engine) == served_usdt(simulator)
    second.client.close()


def test_replaying_an_entry_already_stored_stores_nothing(simulator, outage_engine, tmp_path):
    recorder = make_recorder(simulator, outage_engine, tmp_path / "spool")
    recorder.poll_once()
    with make_sessions(outage_engine)() as session:
        poll = session.scalars(select(Poll)).one()
    # A crash between the commit and the unlink leaves a stored entry in the spool.
    from recorder.spool import SpooledPoll

    fetched = recorder.client.fetch_balances()
    recorder.spool.put(
        SpooledPoll("crashed", "default", simulator.base_url, "/fapi/v2/balance", poll.started_at, poll.finished_at, fetched)
    )
    assert recorder.replay_spool() == 1
    with make_sessions(outage_engine)() as session:
        assert len(session.scalars(select(Poll)).all()) == 1
    recorder.client.close()


def test_second_writer_for_the_same_account_is_refused(engine):
    first = WriterLock(engine, "default")
    first.acquire()
    second = WriterLock(engine, "default")
    with pytest.raises(ConfigError, match=r"another recorder \(pid \d+( on .+)?\) is already recording account 'default'"):
        second.acquire()
    other = WriterLock(engine, "other")
    other.acquire()  # another account is another writer
    other.release()
    first.release()
    second.acquire()
    second.release()


def test_postgres_advisory_lock_refuses_a_writer_on_another_machine(postgres_db_url):
    """PostgreSQL only: two engines stand for two machines; the lock lives in the server."""
    here, there = make_engine(postgres_db_url), make_engine(postgres_db_url)
    first = WriterLock(here, "default")
    first.acquire()
    with pytest.raises(ConfigError, match=rf"another recorder \(pid {os.getpid()} on .+\) is already .* \(advisory lock held\)"):
        WriterLock(there, "default").acquire()
    first.release()
    again = WriterLock(there, "default")
    again.acquire()
    again.release()
    here.dispose()
    there.dispose()
