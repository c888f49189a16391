"""One writer per account and database: a second recorder for the same account is refused.

On SQLite the lock is a file beside the database, found through the database file's real
path: `./x.db`, `/abs/x.db`, a symlink to it, another working directory or another
`--spool-dir` all find the same lock. On PostgreSQL it is an advisory lock, which the server
scopes to the database. Both are released by the operating system or PostgreSQL when the
holder dies, so a `kill -9` never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
from pathlib import Path

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from recorder.errors import ConfigError, StorageError
from recorder.pidlock import hold_pid_lock
from recorder.spool import MAX_NAME_BYTES, label_filename


class LockHeld(ConfigError):
    """Another process holds the lock now."""


def sqlite_lock_path(database: str, account: str) -> Path | None:
    """The lock file of `account` on the SQLite file `database` (None for an in-memory database).

    `<folder of the real file>/.<file name>.recorder-locks/<label>.lock`: the real path makes
    every spelling of the file meet at one lock, the label's injective encoding keeps `a/b`
    and `a_b` apart.
    """
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    if database.startswith("file:"):
        database = database[len("file:"):].split("?", 1)[0]
    real = Path(os.path.realpath(database))
    folder = f".{real.name}.recorder-locks"
    if len(folder.encode()) > MAX_NAME_BYTES:
        folder = f".~{hashlib.sha256(real.name.encode()).hexdigest()}.recorder-locks"
    return real.parent / folder / f"{label_filename(account)}.lock"


def advisory_key(account: str) -> int:
    """The PostgreSQL advisory lock key of `account`'s writer (a 64-bit hash of its label)."""
    digest = hashlib.sha256(f"recorder-writer:{account}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _holder_name() -> str:
    # PostgreSQL keeps 63 bytes of application_name.
    return f"recorder pid {os.getpid()} on {socket.gethostname()}"[:63]


class WriterLock:
    """An flock beside a SQLite database file, or a PostgreSQL advisory lock.

    The advisory lock also guards a PostgreSQL database shared by service processes on
    several machines. Its key is a 64-bit hash of the label: PostgreSQL already scopes
    advisory locks to the database, so two databases never share one.
    """

    def __init__(self, engine: Engine, account: str) -> None:
        self.engine = engine
        self.account = account
        self.path = sqlite_lock_path(engine.url.database or "", account) if engine.dialect.name == "sqlite" else None
        self._file: int | None = None
        self._connection: Connection | None = None
        # Counts the times the lock was taken: between two equal readings this process was
        # the only writer throughout, so what it cached of its own writes is still true.
        self.generation = 0
        self._advisory_key = advisory_key(account)

    def acquire(self) -> None:
        """Take the lock or raise ConfigError naming the holder (or the folder it cannot use)."""
        if self.path is not None:
            self._lock_file(self.path)
        if self.engine.dialect.name == "postgresql":
            try:
                self.ensure()
            except (ConfigError, StorageError):
                self.release()
                raise

    def _lock_file(self, path: Path) -> None:
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            # A writer needs this folder anyway: SQLite creates its -wal and -shm files there.
            raise ConfigError(
                f"cannot create the writer lock {path}: {exc.strerror or exc}; the database's folder "
                "must be writable for recording"
            ) from None
        holder = hold_pid_lock(descriptor)
        if holder is not None:
            raise LockHeld(self._refusal(f"another recorder (pid {holder})", f"lock {path}"))
        self._file = descriptor
        self.generation += 1

    def ensure(self) -> None:
        """Hold the advisory lock again after a lost connection (PostgreSQL restarted)."""
        if self.engine.dialect.name != "postgresql":
            return
        try:
            if self._connection is not None:
                if _session_alive(self._connection):
                    return
                self._drop_connection()
            connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            # The holder's session carries its pid and host, for the refusal message of the next one.
            connection.execute(text("SELECT set_config('application_name', :name, false)"), {"name": _holder_name()})
            taken = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": self._advisory_key}).scalar()
            holder = None if taken else self._advisory_holder(connection)
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot reach the database to hold the writer lock: {type(exc).__name__}") from None
        if not taken:
            connection.invalidate()
            connection.close()
            who = f"another recorder ({holder})" if holder else "another recorder"
            raise LockHeld(self._refusal(who, "advisory lock held"))
        self._connection = connection
        self.generation += 1

    def _refusal(self, who: str, where: str) -> str:
        place = "this PostgreSQL database" if self.path is None else "this database"
        return (f"{who} is already recording account {self.account!r} into {place} ({where}): "
                "stop it first, or use another --account")

    def _advisory_holder(self, connection: Connection) -> str | None:
        """`pid N on HOST` of the session holding our advisory lock, when it is a recorder."""
        key = self._advisory_key & 0xFFFFFFFFFFFFFFFF
        name = connection.execute(
            text(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND l.classid = CAST(:high AS oid) AND l.objid = CAST(:low AS oid)"
            ),
            {"high": str(key >> 32), "low": str(key & 0xFFFFFFFF)},
        ).scalar()
        prefix = "recorder "
        return name[len(prefix):] if isinstance(name, str) and name.startswith(prefix) else None

    def release(self) -> None:
        """Let go of both locks."""
        self._drop_connection()
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            os.close(self._file)
            self._file = None

    def _drop_connection(self) -> None:
        if self._connection is not None:
            # invalidate() closes the server session instead of returning it to the pool,
            # where a session-level advisory lock would live on.
            try:
                self._connection.invalidate()
                self._connection.close()
            except SQLAlchemyError:
                pass  # the server is gone, and the lock with it
            self._connection = None


def _session_alive(connection: Connection) -> bool:
    """Whether the lock's session still answers: one empty query, on libpq itself.

    Asked before every poll's write. An empty query is the cheapest round trip the server
    answers; sent through libpq (psycopg.pq, psycopg's documented wrapper) it costs a fraction
    of a statement on a psycopg cursor (cursor, adaptation, SQLAlchemy's error wrapping), which
    was a third of an idle poll's storage CPU. Any other answer or error: the session is gone.
    """
    if connection.closed or connection.invalidated:
        return False
    try:
        pgconn = connection.connection.dbapi_connection.pgconn  # type: ignore[union-attr]
        result = pgconn.exec_(b"")
    except Exception:  # noqa: BLE001 - whatever failed, the lock's session cannot be trusted
        return False
    return int(result.status) == _EMPTY_QUERY and int(pgconn.status) == _CONNECTION_OK


# libpq's PGRES_EMPTY_QUERY and CONNECTION_OK (psycopg.pq.ExecStatus, psycopg.pq.ConnStatus),
# as numbers: importing psycopg here would load it into a SQLite service.
_EMPTY_QUERY, _CONNECTION_OK = 0, 0


class LedgerLock(WriterLock):
    """The account's income-ledger sync, one at a time: held only while a sync runs.

    Apart from the writer lock, so `recorder sync-ledger` can run beside the `recorder run`
    recording the same account (whose ledger job takes this lock too): entries are stored
    insert-if-absent and each window commits whole, so only two syncs at the same moment,
    fetching the same windows twice, are worth preventing.
    """

    def __init__(self, engine: Engine, account: str) -> None:
        super().__init__(engine, account)
        if self.path is not None:
            # A folder of their own: no label's writer lock file can share a name with a ledger lock.
            self.path = self.path.parent / "ledger" / self.path.name
        digest = hashlib.sha256(f"recorder-ledger:{account}".encode()).digest()
        self._advisory_key = int.from_bytes(digest[:8], "big", signed=True)

    def _lock_file(self, path: Path) -> None:
        try:
            path.parent.parent.mkdir(mode=0o700, exist_ok=True)
        except OSError:
            pass  # super() names the folder it cannot use
        super()._lock_file(path)

    def _refusal(self, who: str, where: str) -> str:
        return f"{who} is syncing the income ledger of account {self.account!r} right now ({where})"
