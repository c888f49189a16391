"""Shared fixtures: a fresh database per test on SQLite and PostgreSQL, a fixed clock.

The test schema *is* the migrations (upgrade to head), never create_all. Each test gets its
own database, so tests never share state and the CLI can be run as a subprocess against the
same URL. `db_url` is empty; `engine` (and `sessions`) get a copy of a database this test
process migrated once (SQLite: a file copy; PostgreSQL: CREATE DATABASE ... TEMPLATE), which
is what running every migration per test produced, in a fraction of the time. Tests of the
migrations themselves take `db_url` and run them. With CI=true a missing PostgreSQL server
fails the run instead of skipping.

Under pytest-xdist every worker is its own process with its own templates; database names
are random, ports come from the OS and files live under tmp_path, so workers never meet.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session, sessionmaker

from recorder.db import make_engine, make_sessions
from recorder.models import DatabaseIdentity
from recorder.schema import upgrade_to_head
from tests.connections import close_pooled_connections_left_open

POSTGRES_ADMIN_URL = os.environ.get(
    "RECORDER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ["sqlite", "postgresql"]
# Set on a test whose db_url is a copy of the migrated template (so `engine` renews its identity).
TEMPLATE_COPY = pytest.StashKey[bool]()


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _postgres_available() -> str | None:
    try:
        with psycopg.connect(_libpq(POSTGRES_ADMIN_URL), connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The server's admin URL; skips (or fails under CI=true) when the server is down."""
    problem = _postgres_available()
    if problem:
        message = f"PostgreSQL at {POSTGRES_ADMIN_URL} is not reachable: {problem}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_ADMIN_URL


def _create_postgres_database(admin_url: str, template: str | None = None) -> tuple[str, str]:
    # The worker's name keeps a leftover database traceable to the run that left it.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"recorder_test_{worker}_{uuid.uuid4().hex[:12]}"
    copy_of = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(_libpq(admin_url), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"{copy_of}')
    return name, admin_url.rsplit("/", 1)[0] + "/" + name


def _drop_postgres_database(admin_url: str, name: str) -> None:
    with psycopg.connect(_libpq(admin_url), autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _migrate(url: str) -> None:
    engine = make_engine(url)
    try:
        upgrade_to_head(engine)
    finally:
        engine.dispose()


class PostgresDatabases:
    """Fresh databases made ahead of need, used ones dropped behind the tests' backs.

    On PostgreSQL 15 each CREATE DATABASE writes its template's pages to the WAL and syncs
    them, and each DROP DATABASE forces a checkpoint of the whole server: a second or more
    apiece on a busy machine, which no test needs to wait for. A database is still made for
    one test alone and dropped after it; only the waiting moves to background threads. Drops
    run several at a time because concurrent checkpoint requests share one checkpoint.
    """

    READY_AHEAD = 2

    def __init__(self, admin_url: str) -> None:
        self._admin_url = admin_url
        self._creating = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-database-create")
        self._dropping = ThreadPoolExecutor(max_workers=4, thread_name_prefix="test-database-drop")
        self._ready: dict[str | None, deque[Future[tuple[str, str]]]] = {}
        self._drops: list[Future[None]] = []

    def take(self, template: str | None = None) -> tuple[str, str]:
        """(name, url) of a database no test has seen: empty, or a copy of `template`."""
        ready = self._ready.setdefault(template, deque())
        while len(ready) <= self.READY_AHEAD:
            ready.append(self._creating.submit(_create_postgres_database, self._admin_url, template))
        return ready.popleft().result()

    def drop(self, name: str) -> None:
        """Drop the database (after any connection left to it is ended), in the background."""
        self._drops.append(self._dropping.submit(_drop_postgres_database, self._admin_url, name))

    def drop_now(self, name: str) -> None:
        """Drop the database before returning (a template: no copy of it may be under way)."""
        for ready in self._ready.values():
            for made in ready:
                self.drop(made.result()[0])
            ready.clear()
        self._creating.shutdown(wait=True)
        _drop_postgres_database(self._admin_url, name)

    def close(self) -> None:
        """Drop every database made ahead and wait for every drop; raise the first failure."""
        for ready in self._ready.values():
            for made in ready:
                self.drop(made.result()[0])
        self._creating.shutdown(wait=True)
        self._dropping.shutdown(wait=True)
        for dropped in self._drops:
            dropped.result()


@pytest.fixture(scope="session")
def postgres_databases(postgres_admin_url: str) -> Iterator[PostgresDatabases]:
    """This test process's maker and dropper of PostgreSQL test databases."""
    databases = PostgresDatabases(postgres_admin_url)
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture(scope="session")
def postgres_template(postgres_admin_url: str, postgres_databases: PostgresDatabases) -> Iterator[str]:
    """A PostgreSQL database migrated to head once per test process, copied by `engine`."""
    name, url = _create_postgres_database(postgres_admin_url)
    try:
        _migrate(url)
        yield name
    finally:
        postgres_databases.drop_now(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per test process, copied by `engine`."""
    path = tmp_path_factory.mktemp("template") / "recorder.db"
    _migrate(f"sqlite:///{path}")
    # Fold the write-ahead log into the file, so copying the file alone copies everything.
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    return path


@pytest.fixture
def postgres_db_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """An empty PostgreSQL database, used by this test alone."""
    name, url = postgres_databases.take()
    try:
        yield url
    finally:
        postgres_databases.drop(name)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """An empty database of each backend, used by this test alone (migrated when the test takes `engine`)."""
    migrated = "engine" in request.fixturenames
    request.node.stash[TEMPLATE_COPY] = migrated
    if request.param == "sqlite":
        path = tmp_path / "recorder.db"
        if migrated:
            shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
    elif migrated:
        databases = request.getfixturevalue("postgres_databases")
        name, url = databases.take(template=request.getfixturevalue("postgres_template"))
        try:
            yield url
        finally:
            databases.drop(name)
    else:
        yield request.getfixturevalue("postgres_db_url")


@pytest.fixture
def engine(request: pytest.FixtureRequest, db_url: str) -> Iterator[Engine]:
    """An engine on a database migrated to head, with its own random identity."""
    engine = make_engine(db_url)
    # A no-op on the template's copy (one SELECT); migrates when db_url came empty (a test
    # that asked for `engine` through getfixturevalue).
    upgrade_to_head(engine)
    if request.node.stash.get(TEMPLATE_COPY, False):
        # Migration 0004 draws one id per database: a copy must not share the template's.
        with engine.begin() as connection:
            connection.execute(
                update(DatabaseIdentity).values(database_id=str(uuid.uuid4()), created_at=datetime.now(timezone.utc))
            )
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(autouse=True)
def close_connections_left_open() -> Iterator[None]:
    """Close the database connections the test left open, when it ends (tests/connections.py)."""
    yield
    close_pooled_connections_left_open()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    """A write session factory on the migrated database."""
    return make_sessions(engine, write=True)


class FixedClock:
    """A clock the test moves by hand; always aware UTC."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FixedClock:
    """A fixed clock at 2026-01-01T00:00:00Z."""
    return FixedClock()


SIM_KEY = "test-api-key-0123456789"
SIM_SECRET = "test-api-secret-do-not-leak-4b1d"


@pytest.fixture
def simulator() -> Iterator["ExchangeSimulator"]:
    """A started strict exchange simulator with one account (key SIM_KEY, secret SIM_SECRET)."""
    from recorder.simulator import ExchangeSimulator

    with ExchangeSimulator() as exchange:
        exchange.add_account(api_key=SIM_KEY, api_secret=SIM_SECRET, account_alias="SgsR")
        yield exchange


def recorder_env(simulator, database_url: str, spool: Path | str, **extra: str) -> dict[str, str]:
    """This process's environment without BINANCE_*/RECORDER_*, pointed at the simulator and a database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BINANCE_", "RECORDER_"))}
    env.update(
        BINANCE_API_KEY=SIM_KEY,
        BINANCE_API_SECRET=SIM_SECRET,
        BINANCE_BASE_URL=simulator.base_url,
        RECORDER_DATABASE_URL=database_url,
        RECORDER_SPOOL_DIR=str(spool),
        **extra,
    )
    return env


@pytest.fixture
def cli_env(simulator, db_url: str, tmp_path) -> dict[str, str]:
    """Environment for running the `recorder` CLI against the simulator and this test's database."""
    return recorder_env(simulator, db_url, tmp_path / "spool")
