"""Closing the pooled database connections a test left open, when the test ends.

A connection a test keeps past its end (a Recorder's kept connection or a WriterLock's
session never closed, an engine never disposed) is otherwise closed by the garbage collector
whenever it next runs a full collection, in some later test: psycopg warns there of an
unclosed connection, and warnings are errors, so an unrelated test fails at random (seen once
in CI, in a signing test that touches no database). Closing them as each test ends keeps the
failure out of the others. The autouse fixture that calls this ends after the test's own
fixtures, so what the `engine` fixture disposed is closed already.
"""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.pool import Pool, _ConnectionRecord

# Every pooled DBAPI connection opened and not closed yet, by its pool record.
_open: dict[int, _ConnectionRecord] = {}


@event.listens_for(Pool, "connect")
def _remember(_dbapi_connection: object, record: _ConnectionRecord) -> None:
    _open[id(record)] = record


@event.listens_for(Pool, "close")
def _forget(_dbapi_connection: object, record: _ConnectionRecord) -> None:
    _open.pop(id(record), None)


def close_pooled_connections_left_open() -> int:
    """Close every pooled connection still open; how many there were.

    Invalidating a pool record closes its DBAPI connection at once, checked out or not; a
    later garbage collection of the pool or of the checked-out connection then finds nothing
    to close, and a record used again reconnects.
    """
    closed = 0
    for key in list(_open):
        record = _open.pop(key, None)
        if record is not None and record.dbapi_connection is not None:
            record.invalidate()
            closed += 1
    return closed
