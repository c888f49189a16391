"""Datasette plugin: the decimal SQL functions recorder's views need, on Datasette's connections.

The views compare amounts with `COLLATE decimal` and compute deltas with `decimal_sub()`,
which only the sqlite3 shell and recorder's own connections have; without them Datasette
shows "no such collation sequence: decimal" for every view. Installed beside recorder,
Datasette finds this module through the `datasette` entry point in pyproject.toml.
Datasette is not a dependency of recorder: only this module imports it.
"""

from __future__ import annotations

import sqlite3

from datasette import hookimpl

from recorder.db import register_decimal_functions


@hookimpl
def prepare_connection(conn: sqlite3.Connection) -> None:
    """Register decimal(), decimal_add/sub/mul/cmp(), decimal_sum() and COLLATE decimal."""
    register_decimal_functions(conn)
