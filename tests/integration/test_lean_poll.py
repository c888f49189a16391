"""The lean poll: heads cached under the writer lock, and no Alembic on a current schema."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import event, select

from recorder.db import make_sessions
from recorder.errors import BadPayload, StorageError
from recorder.exchange import BinanceFuturesClient
from recorder.locks import WriterLock
from recorder.models import Poll, PollGap
from recorder.service import Recorder
from recorder.service import declare_schedule as declare_run_schedule
from tests.conftest import SIM_KEY, SIM_SECRET
from tests.integration import test_outages
from tests.unit.test_parse_fast_paths import row as balance_row
from tests.integration.test_outages import (  # noqa: F401 - outage_engine is a fixture
    database_down,
    outage_engine,
    served_usdt,
    usdt_history,
)

_made: list[Recorder] = []


def make_recorder(*args, **kwargs) -> Recorder:
    """test_outages' recorder, closed after the test (its kept connection), as the CLI closes it."""
    _made.append(test_outages.make_recorder(*args, **kwargs))
    return _made[-1]


@pytest.fixture(autouse=True)
def close_recorders() -> Iterator[None]:
    """Close what make_recorder made: a psycopg connection left open warns, and warnings are errors."""
    yield
    while _made:
        _made.pop().close()


@contextmanager
def statements(engine) -> Iterator[list[str]]:
    """The first word of each statement of a poll's transaction sent on `engine` meanwhile.

    BEGIN and the PostgreSQL writer lock's liveness check (`SELECT 1` on its own connection)
    are left out: the lock is checked before every write on purpose.
    """
    sent: list[str] = []

    def record(_connection, _cursor, statement, *_args) -> None:
        if statement.strip() not in ("SELECT 1", "BEGIN", "BEGIN IMMEDIATE"):
            sent.append(statement.split(None, 1)[0].upper())

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
def lock(engine) -> Iterator[WriterLock]:
    taken = WriterLock(engine, "default")
    taken.acquire()
    yield taken
    taken.release()


def test_poll_under_the_writer_lock_reads_neither_account_nor_heads(simulator, engine, lock, tmp_path, clock):
    recorder = make_recorder(simulator, engine, tmp_path / "spool", lock=lock, clock=clock)
    recorder.poll_once()
    clock.advance(60)
    with statements(engine) as idle:
        assert recorder.poll_once().changed_count == 0
    simulator.step(SIM_KEY)
    clock.advance(60)
    with statements(engine) as busy:
        assert recorder.poll_once().changed_count >= 1
    # The poll row alone (the previous poll and the schedule are known too); a change adds its
    # balances row and moves its head.
    assert idle == ["INSERT"]
    assert busy == ["INSERT", "INSERT", "UPDATE"]
    assert usdt_history(engine) == served_usdt(simulator)


def test_gaps_stored_under_the_writer_lock_follow_every_schedule_declared(simulator, engine, lock, tmp_path, clock):
    """The gap check's previous poll and schedule are kept between polls; a declared schedule,
    even one starting later, is asked for again, so the stored gaps are the rule's."""
    recorder = make_recorder(simulator, engine, tmp_path / "spool", lock=lock, clock=clock)
    start = clock.now

    def poll_at(seconds: float) -> list[str]:
        clock.now = start + timedelta(seconds=seconds)
        with statements(engine) as sent:
            recorder.poll_once()
        return sent

    assert declare_run_schedule(recorder, 60, source="run", at=start)
    poll_at(0)
    assert poll_at(60) == ["INSERT"]  # nothing asked: the previous poll and the schedule are known
    poll_at(120)
    poll_at(320)  # 200 s under the 60 s schedule: a gap
    # A 1 s schedule starting at 400, declared at 320: the poll at 330 is still judged by the
    # 60 s one, but cannot stand for the latest poll past 400.
    assert declare_run_schedule(recorder, 1, source="run", at=start + timedelta(seconds=400))
    poll_at(330)
    assert "SELECT" in poll_at(410)  # 80 s after 330 but due by 401.5 under the new schedule: a gap
    assert poll_at(411) == ["INSERT"]
    poll_at(420)  # 9 s under the 1 s schedule: a gap
    with engine.connect() as connection:
        rows = connection.execute(
            select(PollGap.start_at, PollGap.end_at, PollGap.tolerance_ms).order_by(PollGap.end_at)
        ).all()
    assert [((s - start).total_seconds(), (e - start).total_seconds(), ms) for s, e, ms in rows] == [
        (120.0, 320.0, 90_000), (330.0, 410.0, 71_500), (411.0, 420.0, 1_500)
    ]


def test_poll_without_a_lock_reads_the_heads_every_time(simulator, engine, tmp_path, clock):
    recorder = make_recorder(simulator, engine, tmp_path / "spool", clock=clock)
    recorder.poll_once()
    clock.advance(60)
    with statements(engine) as idle:
        recorder.poll_once()
    assert idle.count("SELECT") == 3  # the account, the heads, the gap check


def test_lock_taken_again_forgets_what_another_writer_changed_meanwhile(simulator, engine, tmp_path, clock):
    first_lock = WriterLock(engine, "default")
    first_lock.acquire()
    first = make_recorder(simulator, engine, tmp_path / "spool", lock=first_lock, clock=clock)
    first.poll_once()
    first_lock.release()

    # Another recorder holds the account meanwhile and stores a new USDT state.
    simulator.step(SIM_KEY)
    clock.advance(60)
    second_lock = WriterLock(engine, "default")
    second_lock.acquire()
    second = make_recorder(simulator, engine, tmp_path / "spool", lock=second_lock, clock=clock)
    assert second.poll_once().changed_count == 1
    second_lock.release()

    first_lock.acquire()
    try:
        clock.advance(60)
        # The exchange still serves the state the other recorder stored: nothing changed.
        assert first.poll_once().changed_count == 0
    finally:
        first_lock.release()
    assert usdt_history(engine) == served_usdt(simulator)


def test_failed_writes_drop_the_cache_and_the_history_stays_exact(simulator, db_url, outage_engine, tmp_path, clock):
    lock = WriterLock(outage_engine, "default")
    lock.acquire()
    try:
        recorder = make_recorder(simulator, outage_engine, tmp_path / "spool", lock=lock, clock=clock)
        recorder.poll_once()
        with database_down(db_url):
            for _ in range(2):
                clock.advance(60)
                simulator.step(SIM_KEY)
                with pytest.raises(StorageError):
                    recorder.poll_once()
        for _ in range(2):
            clock.advance(60)
            simulator.step(SIM_KEY)
            recorder.poll_once()
        clock.advance(60)
        assert recorder.poll_once().changed_count == 0
    finally:
        lock.release()
    assert recorder.spool.pending() == []
    assert usdt_history(outage_engine) == served_usdt(simulator)
    with make_sessions(outage_engine)() as session:
        outcomes = session.scalars(select(Poll.outcome).order_by(Poll.finished_at)).all()
    assert outcomes == ["ok"] * 6


def test_a_dropped_database_connection_costs_no_poll(simulator, engine, lock, tmp_path, clock):
    """The kept connection dies between polls (server restart, firewall): the next poll still goes straight in."""
    if engine.dialect.name != "postgresql":
        pytest.skip("only a server can drop a connection")
    recorder = make_recorder(simulator, engine, tmp_path / "spool", lock=lock, clock=clock)
    recorder.poll_once()
    with engine.connect() as admin:
        # Every session of this database except the writer lock's (named after its holder) and this one.
        killed = admin.exec_driver_sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND application_name NOT LIKE 'recorder pid %%'"
        ).scalar_one()
    assert killed >= 1
    simulator.step(SIM_KEY)
    clock.advance(60)
    assert recorder.poll_once().changed_count == 1
    assert recorder.spool.pending() == []
    assert usdt_history(engine) == served_usdt(simulator)


def test_a_lost_lock_session_is_found_before_the_next_write_and_the_lock_taken_again(simulator, engine, lock, tmp_path, clock):
    """The writer lock's own session dies alone (terminated, idle timeout): the check before the
    next write finds it, takes the lock again and forgets the cache; no poll is lost."""
    if engine.dialect.name != "postgresql":
        pytest.skip("only a server can drop a session")
    recorder = make_recorder(simulator, engine, tmp_path / "spool", lock=lock, clock=clock)
    recorder.poll_once()
    taken = lock.generation
    with engine.connect() as admin:
        killed = admin.exec_driver_sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE 'recorder pid %%'"
        ).scalar_one()
    assert killed == 1
    simulator.step(SIM_KEY)
    clock.advance(60)
    with statements(engine) as sent:
        assert recorder.poll_once().changed_count == 1
    assert lock.generation == taken + 1
    # Taken again, so the heads and the gap check are read from the database, not the cache.
    assert sent.count("SELECT") >= 2
    assert usdt_history(engine) == served_usdt(simulator)


def test_starting_on_a_current_schema_never_imports_alembic(engine, db_url):
    """A service's start checks the schema without Alembic, so it never carries Alembic's memory."""
    code = (
        "import sys\n"
        "from recorder.db import make_engine\n"
        "from recorder.schema import upgrade_to_head\n"
        f"assert upgrade_to_head(make_engine({db_url!r})) is False\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('alembic', 'mako')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_an_empty_spool_folder_is_listed_again_only_after_a_poll_was_spooled(
    simulator, db_url, outage_engine, tmp_path, clock
):
    """The writer is the folder's only writer: once it found the folder empty, polls skip the listing
    until this process spools something; then the next poll lists it and replays everything."""
    lock = WriterLock(outage_engine, "default")
    lock.acquire()
    try:
        recorder = make_recorder(simulator, outage_engine, tmp_path / "spool", lock=lock, clock=clock)
        recorder.poll_once()
        # A file appearing behind the writer's back (which the writer lock rules out) shows
        # whether a poll lists the folder: a listing would set it aside as corrupt.
        stray = recorder.spool.directory / "00000000000000000000-stray.json"
        stray.write_bytes(b"{")
        clock.advance(60)
        recorder.poll_once()
        assert stray.exists()
        with database_down(db_url):
            clock.advance(60)
            simulator.step(SIM_KEY)
            with pytest.raises(StorageError):
                recorder.poll_once()
        clock.advance(60)
        recorder.poll_once()
    finally:
        lock.release()
    assert not stray.exists() and (recorder.spool.directory / "corrupt" / stray.name).exists()
    assert recorder.spool.pending() == []
    assert usdt_history(outage_engine) == served_usdt(simulator)


def test_the_same_body_again_reuses_its_records_and_any_other_body_is_validated_anew(simulator):
    client = BinanceFuturesClient(base_url=simulator.base_url, api_key=SIM_KEY, api_secret=SIM_SECRET)
    try:
        simulator.set_balances(SIM_KEY, [balance_row(updateTime=1_700_000_000_000)])
        first, second = client.fetch_balances(), client.fetch_balances()
        # The same bytes: the same validated records; the weight is each response's own.
        assert second.assets is first.assets and second.account_alias == first.account_alias == "SgsR"
        assert second.used_weight == first.used_weight + 10
        # Equal as JSON values but not the same text (1700000000000.0 is a number, not epoch ms):
        # refused as it always was, never taken for the body it equals.
        simulator.set_balances(SIM_KEY, [balance_row(updateTime=1_700_000_000_000.0)])
        with pytest.raises(BadPayload, match="'updateTime' must be epoch milliseconds"):
            client.fetch_balances()
        simulator.set_balances(SIM_KEY, [balance_row(updateTime=1_700_000_000_000)])
        third = client.fetch_balances()
        assert third.assets == first.assets and third.assets[0].balance == Decimal("12.50000000")
    finally:
        client.close()


def test_an_unchanged_row_keeps_its_record_and_a_look_alike_row_is_validated_anew(simulator):
    client = BinanceFuturesClient(base_url=simulator.base_url, api_key=SIM_KEY, api_secret=SIM_SECRET)
    bnb = {**balance_row(updateTime=1_700_000_000_000, asset="BNB"), "balance": "0.10000000"}
    try:
        simulator.set_balances(SIM_KEY, [balance_row(updateTime=1_700_000_000_000), bnb])
        first = client.fetch_balances()
        simulator.set_balances(SIM_KEY, [{**balance_row(updateTime=1_700_000_000_000), "balance": "13.00000000"}, bnb])
        second = client.fetch_balances()
        assert second.assets[1] is first.assets[1]  # BNB's row is the same: the same record
        assert second.assets[0] is not first.assets[0] and second.assets[0].balance == Decimal("13.00000000")
        # true and 1 are equal as JSON values; only the first is a boolean.
        simulator.set_balances(SIM_KEY, [balance_row(updateTime=1_700_000_000_000), {**bnb, "marginAvailable": 1}])
        with pytest.raises(BadPayload, match="asset BNB: field 'marginAvailable' must be true or false"):
            client.fetch_balances()
        simulator.set_balances(SIM_KEY, [balance_row(updateTime=1_700_000_000_000), bnb, bnb])
        with pytest.raises(BadPayload, match="asset BNB: listed twice"):
            client.fetch_balances()
    finally:
        client.close()


def test_the_service_keeps_a_small_sqlite_page_cache_and_other_writers_the_default(simulator, tmp_path):
    """A service's connections hold 512 KiB of pages, not SQLite's 2,000 KiB: at the default each
    connection's cache filled as the database grew (a first ledger sync took a service past 55 MB)."""
    from recorder.cli.recording import _recorder
    from recorder.config import load_settings
    from recorder.db import make_engine

    url = f"sqlite:///{tmp_path / 'cache.db'}"
    settings = load_settings(environ={"BINANCE_API_KEY": SIM_KEY, "BINANCE_API_SECRET": SIM_SECRET,
                                      "BINANCE_BASE_URL": simulator.base_url, "RECORDER_DATABASE_URL": url,
                                      "RECORDER_SPOOL_DIR": str(tmp_path / "spool")})
    recorder = _recorder(settings)
    try:
        with recorder.sessions.kw["bind"].connect() as connection:
            assert connection.exec_driver_sql("PRAGMA cache_size").scalar() == -512
    finally:
        recorder.client.close()
        recorder.close()
        recorder.lock.release()
        recorder.sessions.kw["bind"].dispose()
    other = make_engine(url)
    try:
        with other.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA cache_size").scalar() == -2000
    finally:
        other.dispose()
