"""One writer per account and database: a second recorder for the same account is refused.

Both locks are released by the operating system or PostgreSQL when the holder dies, so a
`kill -9` never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from recorder.errors import ConfigError, StorageError


class WriterLock:
    """An flock on the account's spool folder, plus a PostgreSQL advisory lock on that backend.

    The file lock guards this machine (and the spool itself); the advisory lock guards a
    PostgreSQL database shared by service processes on several machines.
    """

    def __init__(self, engine: Engine, account: str, directory: Path) -> None:
        self.engine = engine
        self.account = account
        self.path = directory / "writer.lock"
        self._file: int | None = None
        self._connection: Connection | None = None
        digest = hashlib.sha256(f"recorder-writer:{account}".encode()).digest()
        self._advisory_key = int.from_bytes(digest[:8], "big", signed=True)

    def acquire(self) -> None:
        """Take both locks or raise ConfigError naming the holder."""
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "?"
            os.close(descriptor)
            raise ConfigError(
                f"another recorder (pid {holder}) is already recording account {self.account!r} "
                "into this database: stop it first, or use another --account"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        self._file = descriptor
        if self.engine.dialect.name == "postgresql":
            try:
                self.ensure()
            except (ConfigError, StorageError):
                self.release()
                raise

    def ensure(self) -> None:
        """Hold the advisory lock again after a lost connection (PostgreSQL restarted)."""
        if self.engine.dialect.name != "postgresql":
            return
        try:
            if self._connection is not None:
                try:
                    self._connection.exec_driver_sql("SELECT 1")
                    return
                except SQLAlchemyError:
                    self._drop_connection()
            connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            taken = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": self._advisory_key}).scalar()
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot reach the database to hold the writer lock: {type(exc).__name__}") from None
        if not taken:
            connection.invalidate()
            connection.close()
            raise ConfigError(
                f"another recorder is already recording account {self.account!r} into this PostgreSQL "
                "database (advisory lock held): stop it first, or use another --account"
            )
        self._connection = connection

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
