"""Engines and sessions; on SQLite, the pragmas and decimal SQL functions of our connections."""

from __future__ import annotations

import decimal
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, Result, make_url

from recorder.db_types import decimal_text
from recorder.errors import StorageError
from recorder.prepared import run_driver_sql

if TYPE_CHECKING:
    import sqlite3

    from sqlalchemy.orm import Session, sessionmaker

# Enough digits that no sum of Binance amounts (8 decimals, < 10^20) is ever rounded.
_EXACT = decimal.Context(prec=200, traps=[InvalidOperation, decimal.Overflow])
SQLITE_BUSY_TIMEOUT_MS = 10_000
# The page cache of a long-running service's connections. Its writes touch the right edge of a
# few B-trees (a poll, a page of ledger entries), and the OS caches the file anyway; at SQLite's
# default 2,000 KiB each connection's cache filled as the database grew, 2 MB of a service's RSS.
SERVICE_SQLITE_CACHE_KIB = 512


def make_engine(url: str, *, sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS, sqlite_cache_kib: int | None = None,
                **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout, foreign keys and the decimal functions,
    and with `sqlite_cache_kib` a page cache of that size per connection (SQLite's default: 2,000 KiB)."""
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, **kwargs)
        event.listen(
            engine,
            "connect",
            lambda connection, record: _configure_sqlite_connection(connection, sqlite_busy_timeout_ms,
                                                                    sqlite_cache_kib),
        )
        event.listen(engine, "begin", _begin_sqlite_transaction)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


@dataclass
class ReadEngine:
    """A read-only engine; call `close()` when done, after `verify_unchanged()` if it read unlocked."""

    engine: Engine
    unlocked_file: Path | None = None
    fingerprint: tuple[int, ...] | None = None
    # Holds SQLite's SHARED lock on the file while it is read without SQLite's own locks.
    lock_fd: int | None = None

    def verify_unchanged(self) -> None:
        """Raise StorageError if the file read without locks was written meanwhile."""
        if self.unlocked_file is not None and _fingerprint(self.unlocked_file) != self.fingerprint:
            raise StorageError("the database was written while it was being read: run the command again")

    def close(self) -> None:
        """Dispose of the engine and let go of the file lock."""
        self.engine.dispose()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def sqlite_file_path(url: str | URL) -> Path | None:
    """The file a SQLite URL names (plain path or `file:` URI), or None for memory / not SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    database = parsed.database
    if str(parsed.query.get("uri", "")).lower() in ("true", "1") and database.startswith("file:"):
        location = database[len("file:"):]
        if location.startswith("//"):
            # file://host/path: SQLite accepts only an empty host or localhost.
            location = "/" + location[2:].partition("/")[2]
        location = unquote(location)
        return None if location in ("", ":memory:") else Path(location)
    return Path(database)


def make_read_engine(url: str) -> ReadEngine:
    """An engine that cannot write: SQLite opened `mode=ro`, PostgreSQL read-only transactions.

    SQLite gets no WAL or synchronous pragma (those write) and creates no file: not the
    database, not a -wal or -shm beside it. A WAL database is read one of two ways:
    - its -wal exists (a recorder has it open, or one crashed): through the -wal and a
      read-only -shm (`readonly_shm=1`), which leaves both files untouched and still sees
      every committed poll;
    - no -wal: then no connection has it open and every committed page is in the file, so
      it is read `immutable=1`, without SQLite's locks (taking them would create -wal and
      -shm). Instead this process holds SQLite's SHARED lock on the file itself, so a
      writer that starts meanwhile and closes cannot checkpoint into it (it leaves its
      -wal for later). A checkpoint while the writer is still open (after ~1,000 pages of
      writes) needs no such lock; that change is caught by comparing the file's size,
      mtime and inode before and after (ReadEngine.verify_unchanged), and the reader asks
      to run the command again.
    """
    path = sqlite_file_path(url)
    if path is None:
        parsed = make_url(url)
        if parsed.get_backend_name() == "postgresql":
            return ReadEngine(_read_only_postgres_engine(parsed))
        return ReadEngine(make_engine(url))
    query = dict(make_url(url).query)
    query.update(uri="true", mode="ro")
    unlocked, fingerprint, lock_fd = None, None, None
    if str(query.get("immutable", "")).lower() not in ("1", "true"):
        lock_fd, wal = _open_and_share_lock(path)
        # Fingerprint and -wal check after the lock: a writer closing from now on cannot
        # checkpoint into the file (it needs an exclusive lock for that), only add a -wal.
        fingerprint = _fingerprint(path) if lock_fd is not None else None
        if wal and not Path(f"{path}-wal").exists():
            query["immutable"] = "1"
            unlocked = path
        else:
            if lock_fd is not None:
                os.close(lock_fd)
            lock_fd, fingerprint = None, None
            if wal and Path(f"{path}-shm").exists():
                query["readonly_shm"] = "1"
    location = "file:" + quote(os.path.abspath(path))
    engine = create_engine(make_url(url).set(database=location, query=query))
    event.listen(engine, "connect", lambda connection, record: _configure_read_only_sqlite(connection))
    event.listen(engine, "begin", _begin_sqlite_transaction)
    return ReadEngine(engine, unlocked, fingerprint, lock_fd)


def _read_only_postgres_engine(url: URL) -> Engine:
    # Belt and braces beside a read-only role: every transaction of this engine is READ ONLY.
    options = " ".join(filter(None, [str(url.query.get("options", "")), "-c default_transaction_read_only=on"]))
    return create_engine(url.update_query_dict({"options": options}), pool_pre_ping=True)


# SQLite's unix locking protocol (os_unix.c): a SHARED lock is a read lock on these bytes.
_SQLITE_SHARED_FIRST = 0x40000000 + 2
_SQLITE_SHARED_SIZE = 510


def _open_and_share_lock(path: Path) -> tuple[int | None, bool]:
    """Open the file, take SQLite's SHARED lock on it, and say whether it is in WAL mode.

    The lock is what any SQLite reader holds: writers go on, but the last connection to
    close cannot take the exclusive lock it needs to checkpoint into the file and delete the
    -wal, so it leaves them for later. Returns (None, False) for a file that is not WAL.
    The descriptor must stay open while the lock is needed: POSIX drops a process's
    locks on a file when any of its descriptors for that file is closed.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None, False
    # Header bytes 18 and 19 (file format write/read version) are 2 in WAL mode.
    header = os.pread(fd, 20, 0)
    if not (len(header) == 20 and header[18] == 2 and header[19] == 2):
        os.close(fd)
        return None, False
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, _SQLITE_SHARED_SIZE, _SQLITE_SHARED_FIRST)
            return fd, True
        except OSError:
            # A closing writer holds the exclusive lock for its final checkpoint: a moment.
            if time.monotonic() > deadline:
                os.close(fd)
                raise StorageError("the database is locked by a writer: try again") from None
            time.sleep(0.01)


def _fingerprint(path: Path) -> tuple[int, ...]:
    stat = path.stat()
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _configure_read_only_sqlite(dbapi_connection: sqlite3.Connection) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # Connection-local settings only: none of these writes to the file.
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()
    register_decimal_functions(dbapi_connection)


def database_error_line(exc: BaseException) -> str:
    """The first line of the driver's message: SQLAlchemy's own text adds the SQL and a URL."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def make_sessions(engine: Engine, *, write: bool = False) -> sessionmaker[Session]:
    """An ORM session factory, for the read side; `write=True` takes SQLite's write lock at BEGIN.

    The write path uses write_sessions() instead, which needs no ORM. A deferred transaction
    that reads and then writes can fail with "database is locked" without waiting for the busy
    timeout when another writer got in between; BEGIN IMMEDIATE waits for the lock up front.
    """
    # Imported here: the service never calls this, and sqlalchemy.orm costs it ~6 MB for life.
    from sqlalchemy.orm import sessionmaker

    return sessionmaker(bind=_writer_bind(engine) if write else engine, expire_on_commit=False)


def write_sessions(engine: Engine) -> WriteSessions:
    """The write path's transactions (BEGIN IMMEDIATE on SQLite) on Core connections, without the ORM."""
    return WriteSessions(_writer_bind(engine))


def _writer_bind(engine: Engine) -> Engine:
    return engine.execution_options(sqlite_begin_immediate=True)


class CoreSession:
    """A Core connection inside a transaction, answering the Session calls the write path makes."""

    __slots__ = ("_connection",)

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def connection(self) -> Connection:
        return self._connection

    def execute(self, statement: Any, parameters: Any = None) -> Result[Any]:
        return self._connection.execute(statement, parameters)

    def scalar(self, statement: Any, parameters: Any = None) -> Any:
        return self._connection.scalar(statement, parameters)


class WriteSessions:
    """What the write path (the poll, its schedule, the ledger sync) needs of a sessionmaker.

    `begin()` is one transaction on a Core connection; `kw["bind"]` is the engine, as on a
    sessionmaker, so code written against either keeps working.
    """

    def __init__(self, bind: Engine) -> None:
        self.bind = bind
        self.kw = {"bind": bind}

    @contextmanager
    def begin(self) -> Iterator[CoreSession]:
        with self.bind.begin() as connection:
            yield CoreSession(connection)


def _configure_sqlite_connection(dbapi_connection: sqlite3.Connection, busy_timeout_ms: int,
                                 cache_kib: int | None = None) -> None:
    # pysqlite's own implicit BEGIN handling defeats SAVEPOINT and BEGIN IMMEDIATE;
    # SQLAlchemy emits BEGIN itself in _begin_sqlite_transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # The timeout first: switching a new file to WAL needs the write lock, which a second
    # recorder started at the same moment must wait for rather than fail on.
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    # WAL: a user's sqlite3 session reading the file never blocks the recorder's writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # FULL: a committed poll survives power loss too, at one more fsync per commit.
    cursor.execute("PRAGMA synchronous=FULL")
    if cache_kib is not None:
        cursor.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
    cursor.close()
    register_decimal_functions(dbapi_connection)


def _begin_sqlite_transaction(connection: Any) -> None:
    # On the driver's cursor (recorder.prepared): exec_driver_sql's execution context cost as
    # much CPU as one of the poll's statements.
    run_driver_sql(connection, "BEGIN IMMEDIATE" if connection.get_execution_options().get("sqlite_begin_immediate") else "BEGIN")


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
    import sqlite3  # here: a PostgreSQL service never loads SQLite's driver

    connection = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode={mode}", uri=True)
    # The recorder may be committing a poll: wait for its lock instead of failing at once.
    connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    register_decimal_functions(connection)
    return connection
