"""Shared fixtures: a fresh database per test on SQLite and PostgreSQL, a fixed clock.

The test schema *is* the migrations (upgrade to head), never create_all. PostgreSQL gets
a throwaway database per test (CREATE DATABASE costs ~60 ms here), so tests never share
state and the CLI can be run as a subprocess against the same URL. With CI=true a missing
PostgreSQL server fails the run instead of skipping.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from recorder.db import make_engine, make_sessions
from recorder.schema import upgrade_to_head

POSTGRES_ADMIN_URL = os.environ.get(
    "RECORDER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ["sqlite", "postgresql"]


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


def _create_postgres_database(admin_url: str) -> tuple[str, str]:
    name = f"recorder_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(admin_url), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return name, admin_url.rsplit("/", 1)[0] + "/" + name


def _drop_postgres_database(admin_url: str, name: str) -> None:
    with psycopg.connect(_libpq(admin_url), autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_db_url(postgres_admin_url: str) -> Iterator[str]:
    """An empty PostgreSQL database, used by this test alone."""
    name, url = _create_postgres_database(postgres_admin_url)
    try:
        yield url
    finally:
        _drop_postgres_database(postgres_admin_url, name)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """An empty database of each backend, used by this test alone."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'recorder.db'}"
    else:
        yield request.getfixturevalue("postgres_db_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on a database migrated to head."""
    engine = make_engine(db_url)
    upgrade_to_head(engine)
    try:
        yield engine
    finally:
        engine.dispose()


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
