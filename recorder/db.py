"""Engines and sessions; on SQLite, the pragmas and decimal SQL functions of our connections."""

from __future__ import annotations

import decimal
import os
import pathlib
import sqlite3
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from recorder.db_types import decimal_text

# Enough digits that no sum of Binance amounts (8 decimals, < 10^20) is ever rounded.
_EXACT = decimal.Context(prec=200, traps=[InvalidOperation, decimal.Overflow])
SQLITE_BUSY_TIMEOUT_MS = 10_000


def make_engine(url: str, *, sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout, foreign keys and the decimal functions."""
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, **kwargs)
        event.listen(
            engine,
            "connect",
            lambda connection, record: _configure_sqlite_connection(connection, sqlite_busy_timeout_ms),
        )
        event.listen(engine, "begin", _begin_sqlite_transaction)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def database_error_line(exc: BaseException) -> str:
    """The first line of the driver's message: SQLAlchemy's own text adds the SQL and a URL."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def make_sessions(engine: Engine, *, write: bool = False) -> sessionmaker[Session]:
    """A session factory; `write=True` takes SQLite's write lock at BEGIN.

    A deferred transaction that reads and then writes can fail with "database is locked"
    without waiting for the busy timeout when another writer got in between; BEGIN
    IMMEDIATE waits for the lock up front instead.
    """
    bind = engine.execution_options(sqlite_begin_immediate=True) if write else engine
    return sessionmaker(bind=bind, expire_on_commit=False)


def _configure_sqlite_connection(dbapi_connection: sqlite3.Connection, busy_timeout_ms: int) -> None:
    # pysqlite's own implicit BEGIN handling defeats SAVEPOINT and BEGIN IMMEDIATE;
    # SQLAlchemy emits BEGIN itself in _begin_sqlite_transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL: a user's sqlite3 session reading the file never blocks the recorder's writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    # FULL: a committed poll survives power loss too, at one more fsync per commit.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()
    register_decimal_functions(dbapi_connection)


def _begin_sqlite_transaction(connection: Any) -> None:
    if connection.get_execution_options().get("sqlite_begin_immediate"):
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        connection.exec_driver_sql("BEGIN")


# --- SQLite decimal functions ------------------------------------------------------------
# The same names and results as the decimal extension that the sqlite3 shell ships, so
# views and documented queries work both in `sqlite3 recorder.db` and on our connections.


def _parse(text: Any) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        return Decimal(0)
    return value if value.is_finite() else Decimal(0)


def _decimal(text: Any) -> str | None:
    value = _parse(text)
    return None if value is None else decimal_text(value)


def _binary(operation: str):
    def apply(left: Any, right: Any) -> str | None:
        a, b = _parse(left), _parse(right)
        if a is None or b is None:
            return None
        return decimal_text(getattr(_EXACT, operation)(a, b))

    return apply


def _cmp(left: Any, right: Any) -> int | None:
    a, b = _parse(left), _parse(right)
    if a is None or b is None:
        return None
    return (a > b) - (a < b)


def _collate(left: str, right: str) -> int:
    return _cmp(left, right) or 0


class _DecimalSum:
    def __init__(self) -> None:
        self.total: Decimal | None = None

    def step(self, value: Any) -> None:
        parsed = _parse(value)
        if parsed is not None:
            self.total = parsed if self.total is None else _EXACT.add(self.total, parsed)

    def finalize(self) -> str | None:
        return None if self.total is None else decimal_text(self.total)


def register_decimal_functions(connection: sqlite3.Connection) -> None:
    """Register decimal(), decimal_add/sub/mul/cmp(), decimal_sum() and COLLATE decimal."""
    connection.create_function("decimal", 1, _decimal, deterministic=True)
    connection.create_function("decimal_add", 2, _binary("add"), deterministic=True)
    connection.create_function("decimal_sub", 2, _binary("subtract"), deterministic=True)
    connection.create_function("decimal_mul", 2, _binary("multiply"), deterministic=True)
    connection.create_function("decimal_cmp", 2, _cmp, deterministic=True)
    connection.create_aggregate("decimal_sum", 1, _DecimalSum)
    connection.create_collation("decimal", _collate)


def connect_sqlite(database: str | os.PathLike[str], *, read_only: bool = True) -> sqlite3.Connection:
    """A plain sqlite3 connection to a recorder database, with the decimal functions its views use.

    For pandas and scripts: `pd.read_sql("SELECT * FROM latest_balances", connect_sqlite("recorder.db"))`.
    Takes a file path or a sqlite:/// URL; read-only unless asked, so a script can never
    write into the recorder's history. A missing file is an error, never a new empty database.
    """
    path = make_url(database).database if str(database).startswith("sqlite:") else os.fspath(database)
    if not path or path == ":memory:" or not os.path.exists(path):
        raise FileNotFoundError(f"no recorder database at {path!r}")
    mode = "ro" if read_only else "rw"
    connection = sqlite3.connect(f"{pathlib.Path(path).resolve().as_uri()}?mode={mode}", uri=True)
    # The recorder may be committing a poll: wait for its lock instead of failing at once.
    connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    register_decimal_functions(connection)
    return connection
