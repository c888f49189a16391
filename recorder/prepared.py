"""Statements compiled once and run straight on the driver's cursor: the poll's hot path.

SQLAlchemy's execution of a compiled, cached statement still costs about 0.14 ms of CPU on
SQLite (execution context, parameter and result set-up) against 0.03 ms for the driver's own
execute: more than the poll's SQL itself, twice per idle poll, a minute for years. A Prepared
statement keeps what SQLAlchemy compiled (the SQL text, the bind and result processors of our
column types, the literal values such as LIMIT 1) and runs it on the connection's DBAPI cursor.
What SQLAlchemy's execution guarantees is kept: the same SQL and parameter values (checked by
tests/integration/test_prepared.py against SQLAlchemy's own), driver errors raised as the same
SQLAlchemy exceptions with the connection invalidated on a disconnect, and the
before/after_cursor_execute events for whoever listens. A statement that needs SQLAlchemy's
rendering at execution time (expanding or literal-execute parameters) goes through
Connection.execute instead.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement


class Prepared:
    """One statement, compiled once per dialect (for INSERT/UPDATE: for the given parameter names)."""

    def __init__(self, statement: ClauseElement, keys: Sequence[str] | None = None) -> None:
        self.statement = statement
        self.keys = list(keys) if keys is not None else None
        # Per dialect object (one per engine): what compiles depends on the server's version too.
        self._compiled: weakref.WeakKeyDictionary[Dialect, _Compiled | None] = weakref.WeakKeyDictionary()

    def execute(self, connection: Connection, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run with `values`; the rows it returns (RETURNING or SELECT), processed, else []."""
        compiled = self._for(connection.dialect)
        if compiled is None:
            result = connection.execute(self.statement, dict(values))
            return [tuple(row) for row in result] if result.returns_rows else []
        return compiled.execute(connection, values)

    def executemany(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
        """Run once per row of `rows`, in one driver call; how many rows the driver counts as changed.

        One row is a plain execute, as SQLAlchemy sends it: psycopg's executemany sets up a
        pipeline, about 25 us of CPU more than one execute (a busy poll moves one head).
        The count is the sum over the rows (sqlite3 and psycopg both sum it), so an
        insert-if-absent counts what it inserted without RETURNING a row per insert.
        """
        compiled = self._for(connection.dialect)
        if compiled is None:
            return connection.execute(self.statement, [dict(row) for row in rows]).rowcount
        if len(rows) == 1:
            return compiled.run(connection, rows[0])[1]
        return compiled.executemany(connection, rows)

    def _for(self, dialect: Dialect) -> _Compiled | None:
        try:
            return self._compiled[dialect]
        except KeyError:
            compiled = self._compiled[dialect] = _Compiled.of(self.statement, dialect, self.keys)
            return compiled


class _Compiled:
    """What one dialect's compilation of a statement leaves to do per execution."""

    def __init__(self, sql: str, names: list[str], positional: bool, defaults: dict[str, Any],
                 bind_processors: dict[str, Any], result_processors: list[Any] | None) -> None:
        self.sql = sql
        self.names = names
        self.positional = positional
        self.defaults = defaults
        self.bind_processors = bind_processors
        self.result_processors = result_processors

    @classmethod
    def of(cls, statement: ClauseElement, dialect: Dialect, keys: list[str] | None) -> _Compiled | None:
        compiled = statement.compile(dialect=dialect, column_keys=keys)
        sql = compiled.string
        if "POSTCOMPILE" in sql or compiled.literal_execute_params or compiled.post_compile_params:
            return None  # rendered per execution by SQLAlchemy
        positional = bool(compiled.positional)
        # bind_names: each parameter object to its name in the SQL (a literal such as LIMIT 1 included).
        names = list(compiled.positiontup or ()) if positional else list(dict.fromkeys(compiled.bind_names.values()))
        defaults = {name: bind.value for bind, name in compiled.bind_names.items() if not bind.required}
        processors = {name: processor for name, processor in compiled._bind_processors.items() if processor is not None}
        result_processors = None
        if compiled._result_columns:
            result_processors = [
                column.type._cached_result_processor(dialect, None) for column in compiled._result_columns
            ]
        return cls(sql, names, positional, defaults, processors, result_processors)

    def parameters(self, values: Mapping[str, Any]) -> Any:
        merged = {**self.defaults, **values} if self.defaults else values
        processors = self.bind_processors
        if self.positional:
            return tuple(
                processors[name](merged[name]) if name in processors else merged[name] for name in self.names
            )
        return {name: processors[name](merged[name]) if name in processors else merged[name] for name in self.names}

    def execute(self, connection: Connection, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        return self.run(connection, values)[0]

    def run(self, connection: Connection, values: Mapping[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
        """The processed rows the statement returned, and the driver's count of rows it changed."""
        parameters = self.parameters(values)
        cursor = None
        try:
            cursor = _cursor(connection)
            _before(connection, cursor, self.sql, parameters, False)
            cursor.execute(self.sql, parameters)
            rows = cursor.fetchall() if cursor.description is not None else []
            rowcount = cursor.rowcount
            _after(connection, cursor, self.sql, parameters, False)
        except connection.dialect.loaded_dbapi.Error as exc:
            connection._handle_dbapi_exception(exc, self.sql, parameters, cursor, None)
        finally:
            _close(cursor)
        return self._processed(rows), rowcount

    def _processed(self, rows: list[Any]) -> list[tuple[Any, ...]]:
        processors = self.result_processors
        if not rows or processors is None or not any(processors):
            return [tuple(row) for row in rows]
        return [
            tuple(processor(value) if processor is not None else value for processor, value in zip(processors, row))
            for row in rows
        ]

    def executemany(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
        parameters = [self.parameters(values) for values in rows]
        cursor = None
        try:
            cursor = _cursor(connection)
            _before(connection, cursor, self.sql, parameters, True)
            cursor.executemany(self.sql, parameters)
            rowcount = cursor.rowcount
            _after(connection, cursor, self.sql, parameters, True)
        except connection.dialect.loaded_dbapi.Error as exc:
            connection._handle_dbapi_exception(exc, self.sql, parameters, cursor, None)
        finally:
            _close(cursor)
        return rowcount


def run_driver_sql(connection: Connection, sql: str) -> None:
    """Run a parameterless statement (BEGIN IMMEDIATE) on the driver's cursor, as Prepared does."""
    cursor = None
    try:
        cursor = _cursor(connection)
        _before(connection, cursor, sql, (), False)
        cursor.execute(sql)
        _after(connection, cursor, sql, (), False)
    except connection.dialect.loaded_dbapi.Error as exc:
        connection._handle_dbapi_exception(exc, sql, (), cursor, None)
    finally:
        _close(cursor)


def _cursor(connection: Connection) -> Any:
    # Connection.connection checks the connection is open and usable (it raises SQLAlchemy's
    # own errors for a closed or invalidated one), as Connection.execute does first.
    return connection.connection.cursor()


def _close(cursor: Any) -> None:
    # A cursor of a connection that just broke may refuse to close; the connection is dropped anyway.
    if cursor is not None:
        try:
            cursor.close()
        except Exception:  # noqa: BLE001 - the statement's own error is the one that matters
            pass


def _before(connection: Connection, cursor: Any, sql: str, parameters: Any, many: bool) -> None:
    # The flags SQLAlchemy's own execution checks first: asking the dispatcher alone cost more.
    # They are set by any listener (on SQLite, the begin event that emits BEGIN IMMEDIATE is
    # always there), so the event's own listeners are asked next: calling an event that has
    # none still walks its listener lists.
    if connection._has_events or connection.engine._has_events:
        listeners = connection.dispatch.before_cursor_execute
        if listeners:
            listeners(connection, cursor, sql, parameters, None, many)


def _after(connection: Connection, cursor: Any, sql: str, parameters: Any, many: bool) -> None:
    if connection._has_events or connection.engine._has_events:
        listeners = connection.dispatch.after_cursor_execute
        if listeners:
            listeners(connection, cursor, sql, parameters, None, many)
