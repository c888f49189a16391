"""The suite's own guard: connections a test leaves open are closed when it ends (tests/connections.py)."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import text

from recorder.db import make_engine
from tests.connections import close_pooled_connections_left_open


def test_connections_left_checked_out_or_in_an_undisposed_pool_are_closed(db_url: str) -> None:
    close_pooled_connections_left_open()
    kept_out = make_engine(db_url).connect()
    kept_out.execute(text("SELECT 1"))
    pooled = make_engine(db_url)
    with pooled.connect() as connection:
        connection.execute(text("SELECT 1"))
        checked_in = connection.connection.dbapi_connection
    checked_out = kept_out.connection.dbapi_connection

    assert close_pooled_connections_left_open() == 2

    for dbapi_connection in (checked_out, checked_in):
        if isinstance(dbapi_connection, sqlite3.Connection):
            with pytest.raises(sqlite3.ProgrammingError, match="closed"):
                dbapi_connection.execute("SELECT 1")
        else:
            assert dbapi_connection.closed
    # A pool whose connection was closed under it opens a new one when asked.
    with pooled.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar() == 1
    pooled.dispose()
