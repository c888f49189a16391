"""Flat rows straight from the database, for exports: history and the poll log as text tuples.

The hot path of an export. Each row is a tuple of what the file will hold, built by the
database itself: amounts as the exact plain-notation text the column stores (SQLite keeps
them as that text; PostgreSQL's NUMERIC::text never uses an exponent), times as ISO-8601
UTC text with a `Z`, booleans as 'true'/'false'. No Decimal, datetime or ORM object is made
per row: that is what made `history --format csv` 15x slower than the sqlite3 shell.

Rows come in batches (lists of tuples) from a plain cursor on SQLite and a server-side
(named) cursor on PostgreSQL, so memory stays constant whatever the size of the range.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.orm import Session

from recorder.models import AMOUNT_FIELDS
from recorder.queries.states import _account_id

BATCH_ROWS = 10_000

# Column kinds tell a writer how to type a text cell: JSON booleans, Parquet decimal128.
TEXT, DECIMAL, TIME, BOOL, INT = "text", "decimal", "time", "bool", "int"

HISTORY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("account", TEXT),
    ("asset", TEXT),
    ("observed_at", TIME),
    ("present", BOOL),
    *((name, DECIMAL) for name in AMOUNT_FIELDS),
    ("margin_available", BOOL),
    ("update_time", TIME),
)
POLL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("account", TEXT),
    ("started_at", TIME),
    ("finished_at", TIME),
    ("outcome", TEXT),
    ("endpoint", TEXT),
    ("asset_count", INT),
    ("changed_count", INT),
    ("used_weight", INT),
    ("error_class", TEXT),
    ("error_message", TEXT),
    ("http_status", INT),
    ("error_code", INT),
    ("recorded_at", TIME),
)


@dataclass(frozen=True)
class Flat:
    """Rows to write: (name, kind) per column, and the rows in batches of text tuples."""

    columns: tuple[tuple[str, str], ...]
    batches: Iterator[list[tuple[Any, ...]]]


def _time(dialect: str, column: str, *, milliseconds: bool = False) -> str:
    if dialect == "sqlite":
        # Stored as 'YYYY-MM-DD HH:MM:SS.ffffff' UTC text (recorder.db_types.UtcDateTime).
        if milliseconds:
            return f"substr({column}, 1, 10) || 'T' || substr({column}, 12, 12) || 'Z'"
        return f"replace({column}, ' ', 'T') || 'Z'"
    fraction = "MS" if milliseconds else "US"
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.{fraction}"Z"')"""


def _bool(column: str) -> str:
    return f"CASE WHEN {column} THEN 'true' WHEN NOT {column} THEN 'false' END"


def _amount(dialect: str, column: str) -> str:
    return column if dialect == "sqlite" else f"{column}::text"


def _param(dialect: str, name: str) -> str:
    return f":{name}" if dialect == "sqlite" else f"%({name})s"


def _bound(dialect: str, value: datetime) -> Any:
    # SQLite compares the stored UTC text; PostgreSQL takes the aware datetime.
    if dialect == "sqlite":
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def history_rows(
    session: Session,
    account: str,
    *,
    assets: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after_id: int | None = None,
    through_id: int | None = None,
) -> Flat:
    """Every recorded state in [since, until) as text, oldest first, like queries.history.

    `after_id`/`through_id` bound the balances rows by their insert sequence (an
    incremental export's cursor): rows stored after the last export, whatever their time.
    """
    dialect = session.connection().dialect.name
    account_id = _account_id(session, account)
    params: dict[str, Any] = {"account_id": account_id}
    where = [f"b.account_id = {_param(dialect, 'account_id')}"]
    if assets:
        names = []
        for index, asset in enumerate(assets):
            params[f"asset{index}"] = asset
            names.append(_param(dialect, f"asset{index}"))
        where.append(f"b.asset IN ({', '.join(names)})")
    for name, value, operator in (("since", since, ">="), ("until", until, "<")):
        if value is not None:
            params[name] = _bound(dialect, value)
            where.append(f"b.observed_at {operator} {_param(dialect, name)}")
    for name, value, operator in (("after_id", after_id, ">"), ("through_id", through_id, "<=")):
        if value is not None:
            params[name] = value
            where.append(f"b.id {operator} {_param(dialect, name)}")
    columns = [
        "a.label",
        "b.asset",
        _time(dialect, "b.observed_at"),
        _bool("b.present"),
        *(_amount(dialect, f"b.{name}") for name in AMOUNT_FIELDS),
        _bool("b.margin_available"),
        _time(dialect, "b.update_time", milliseconds=True),
    ]
    sql = (
        f"SELECT {', '.join(columns)} FROM balances b JOIN accounts a ON a.id = b.account_id "
        f"WHERE {' AND '.join(where)} ORDER BY b.observed_at, b.asset"
    )
    return Flat(HISTORY_COLUMNS, _batches(session, sql, params))


def poll_rows(
    session: Session, account: str, *, since: datetime | None = None, until: datetime | None = None
) -> Flat:
    """Every poll attempt whose finished_at is in [since, until), oldest first, as text."""
    dialect = session.connection().dialect.name
    params: dict[str, Any] = {"account_id": _account_id(session, account)}
    where = [f"p.account_id = {_param(dialect, 'account_id')}"]
    for name, value, operator in (("since", since, ">="), ("until", until, "<")):
        if value is not None:
            params[name] = _bound(dialect, value)
            where.append(f"p.finished_at {operator} {_param(dialect, name)}")
    columns = [
        "a.label",
        _time(dialect, "p.started_at"),
        _time(dialect, "p.finished_at"),
        "p.outcome",
        "p.endpoint",
        "p.asset_count",
        "p.changed_count",
        "p.used_weight",
        "p.error_class",
        "p.error_message",
        "p.http_status",
        "p.error_code",
        _time(dialect, "p.recorded_at"),
    ]
    sql = (
        f"SELECT {', '.join(columns)} FROM polls p JOIN accounts a ON a.id = p.account_id "
        f"WHERE {' AND '.join(where)} ORDER BY p.finished_at"
    )
    return Flat(POLL_COLUMNS, _batches(session, sql, params))


def last_balance_id(session: Session, account: str) -> int:
    """The newest balances row id of the account (0 for none): an incremental export's upper bound."""
    dialect = session.connection().dialect.name
    cursor = _driver(session).cursor()
    try:
        cursor.execute(
            f"SELECT max(id) FROM balances WHERE account_id = {_param(dialect, 'account_id')}",
            {"account_id": _account_id(session, account)},
        )
        return cursor.fetchone()[0] or 0
    finally:
        cursor.close()


def _driver(session: Session) -> Any:
    # The DBAPI connection under the session's own transaction: the rows are read in the
    # same snapshot as everything else the command read.
    return session.connection().connection.driver_connection


def _batches(session: Session, sql: str, params: dict[str, Any]) -> Iterator[list[tuple[Any, ...]]]:
    connection = _driver(session)
    if session.connection().dialect.name == "postgresql":
        # A named cursor is a server-side cursor: PostgreSQL sends BATCH_ROWS at a time
        # instead of the whole result.
        cursor = connection.cursor(name="recorder_export")
        cursor.itersize = BATCH_ROWS
    else:
        cursor = connection.cursor()
    try:
        cursor.execute(sql, params)
        while batch := cursor.fetchmany(BATCH_ROWS):
            yield batch
    except BaseException as exc:
        if not isinstance(exc, (Exception, GeneratorExit)):
            # Ctrl-C or SIGTERM inside the driver's wait leaves the connection mid-command:
            # discard it, or closing the session would try a ROLLBACK on it and hide the signal.
            session.connection().invalidate()
        raise
    finally:
        # psycopg refuses to close a cursor of a discarded connection; sqlite3 has no such flags.
        if not getattr(cursor, "closed", False) and not getattr(connection, "closed", False):
            cursor.close()
