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
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from recorder.models import AMOUNT_FIELDS
from recorder.queries.states import _account_id

BATCH_ROWS = 10_000
_batch_rows: ContextVar[int] = ContextVar("recorder_export_batch_rows", default=BATCH_ROWS)


@contextmanager
def fetching(rows: int) -> Iterator[None]:
    """Read `rows` at a time inside the block (Parquet: each batch is Arrow columns at once, and
    a smaller batch of Python rows keeps the peak memory lower; CSV is faster with larger ones)."""
    token = _batch_rows.set(rows)
    try:
        yield
    finally:
        _batch_rows.reset(token)


def batch_rows() -> int:
    """How many rows a batch holds here (see fetching)."""
    return _batch_rows.get()

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
    """Rows to write: (name, kind) per column, and the rows in batches of text tuples.

    With `csv_lines` each row is a 1-tuple holding the whole CSV line (RFC 4180 quoting
    done, no line end): the database builds it, and Python only joins the lines.
    """

    columns: tuple[tuple[str, str], ...]
    batches: Iterator[list[tuple[Any, ...]]]
    csv_lines: bool = False


def csv_field(text: str) -> str:
    """One CSV field as Python's csv module writes it (quoted only where needed)."""
    if any(character in text for character in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _csv_quoted(dialect: str, column: str) -> str:
    # Asset names are Binance's (letters and digits), but a field is quoted whenever it must be.
    if dialect == "sqlite":
        # One GLOB per row rather than four instr() calls.
        needs = f"{column} GLOB '*[,\"' || char(10) || char(13) || ']*'"
    else:
        needs = f"{column} ~ '[\",\\r\\n]'"
    return f"""CASE WHEN {needs} THEN '"' || replace({column}, '"', '""') || '"' ELSE {column} END"""


def _csv_line(dialect: str, expressions: Sequence[str]) -> str:
    if dialect == "sqlite":
        # printf builds the line in one call and prints NULL as an empty field: a quarter
        # less SQL time than a chain of || and coalesce (scripts/bench_export.py).
        return f"printf('{','.join(['%s'] * len(expressions))}', {', '.join(expressions)})"
    # NULL is an empty field; || with NULL would make the whole line NULL.
    return " || ',' || ".join(f"coalesce({expression}, '')" for expression in expressions)


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


def _balance_filter(
    dialect: str,
    params: dict[str, Any],
    assets: Sequence[str] | None,
    since: datetime | None,
    until: datetime | None,
    after_id: int | None,
    through_id: int | None,
) -> list[str]:
    """The WHERE terms on balances `b` (account, assets, time range, insert-sequence range); adds their parameters."""
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
    return where


def history_rows(
    session: Session,
    account: str,
    *,
    assets: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after_id: int | None = None,
    through_id: int | None = None,
    csv_lines: bool = False,
) -> Flat:
    """Every recorded state in [since, until) as text, oldest first, like queries.history.

    `after_id`/`through_id` bound the balances rows by their insert sequence (an
    incremental export's cursor): rows stored after the last export, whatever their time.
    `csv_lines` asks for whole CSV lines (see Flat): half the CPU time of text tuples.
    """
    dialect = session.connection().dialect.name
    account_id = _account_id(session, account)
    params: dict[str, Any] = {"account_id": account_id}
    where = _balance_filter(dialect, params, assets, since, until, after_id, through_id)
    values = [
        _bool("b.present"),
        *(_amount(dialect, f"b.{name}") for name in AMOUNT_FIELDS),
        _bool("b.margin_available"),
        _time(dialect, "b.update_time", milliseconds=True),
    ]
    if csv_lines:
        # The label is the same on every row: quoted once here, bound as a parameter.
        params["label_field"] = csv_field(account)
        line = _csv_line(dialect, [_param(dialect, "label_field"), _csv_quoted(dialect, "b.asset"),
                                   _time(dialect, "b.observed_at"), *values])
        columns = [line]
    else:
        columns = ["a.label", "b.asset", _time(dialect, "b.observed_at"), *values]
    sql = (
        f"SELECT {', '.join(columns)} FROM balances b JOIN accounts a ON a.id = b.account_id "
        f"WHERE {' AND '.join(where)} ORDER BY b.observed_at, b.asset"
    )
    return Flat(HISTORY_COLUMNS, _batches(session, sql, params), csv_lines)


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
    size = batch_rows()
    if session.connection().dialect.name == "postgresql":
        # A named cursor is a server-side cursor: PostgreSQL sends a batch at a time
        # instead of the whole result.
        cursor = connection.cursor(name="recorder_export")
        cursor.itersize = size
    else:
        cursor = connection.cursor()
    try:
        cursor.execute(sql, params)
        while batch := cursor.fetchmany(size):
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


# The `changes` CSV columns (recorder.reports.render.CHANGE_COLUMNS, same order).
CHANGE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("account", TEXT),
    ("asset", TEXT),
    ("observed_at", TIME),
    ("kind", TEXT),
    *(column for name in AMOUNT_FIELDS for column in ((name, DECIMAL), (f"previous_{name}", DECIMAL), (f"delta_{name}", DECIMAL))),
    ("margin_available", BOOL),
    ("previous_margin_available", BOOL),
    ("update_time", TIME),
    ("previous_update_time", TIME),
    ("changed", TEXT),
)
_CHANGED_NAMES = ("present", *AMOUNT_FIELDS, "margin_available", "update_time")


def change_rows(
    session: Session,
    account: str,
    *,
    assets: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after_id: int | None = None,
    through_id: int | None = None,
) -> Flat:
    """Every change event in [since, until) as text, like queries.changes, oldest first.

    Each row's previous state is the asset's latest state observed before it, found by one
    probe of the unique index (account_id, asset, observed_at), as the balance_changes view
    does; the deltas are exact Decimal differences of the stored text, computed here.
    `after_id`/`through_id` bound the rows by insert sequence, as in history_rows.
    """
    dialect = session.connection().dialect.name
    params: dict[str, Any] = {"account_id": _account_id(session, account)}
    where = _balance_filter(dialect, params, assets, since, until, after_id, through_id)

    def state(alias: str) -> list[str]:
        return [
            _bool(f"{alias}.present"),
            *(_amount(dialect, f"{alias}.{name}") for name in AMOUNT_FIELDS),
            _bool(f"{alias}.margin_available"),
            _time(dialect, f"{alias}.update_time", milliseconds=True),
        ]

    probe = (
        "SELECT b2.{what} FROM balances b2 WHERE b2.account_id = b.account_id AND b2.asset = b.asset"
        " AND b2.observed_at < b.observed_at ORDER BY b2.observed_at DESC LIMIT 1"
    )
    if dialect == "sqlite":
        previous = f"LEFT JOIN balances p ON p.id = ({probe.format(what='id')})"
    else:
        previous = f"LEFT JOIN LATERAL ({probe.format(what='*')}) p ON true"
    columns = ["a.label", "b.asset", _time(dialect, "b.observed_at"), *state("b"), *state("p")]
    sql = (
        f"SELECT {', '.join(columns)} FROM balances b JOIN accounts a ON a.id = b.account_id {previous} "
        f"WHERE {' AND '.join(where)} ORDER BY b.observed_at, b.asset"
    )
    return Flat(CHANGE_COLUMNS, map(_change_batch, _batches(session, sql, params)))


_WIDTH = 3 + len(AMOUNT_FIELDS)  # present, the amounts, margin_available, update_time


def _change_batch(batch: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    # Deltas need exact arithmetic: the default context rounds to 28 digits.
    from recorder.queries.diffs import EXACT

    subtract, rows = EXACT.subtract, []
    for row in batch:
        label, asset, observed_at = row[0], row[1], row[2]
        current, previous = row[3:3 + _WIDTH], row[3 + _WIDTH:]
        present, before = current[0] == "true", previous[0]
        if not present:
            kind = "vanished"
        elif before != "true":
            kind = "appeared"
        else:
            kind = "changed"
        both = present and before == "true"
        cells: list[Any] = [label, asset, observed_at, kind]
        for index in range(1, 1 + len(AMOUNT_FIELDS)):
            new, old = current[index], previous[index]
            delta = format(subtract(Decimal(new), Decimal(old)), "f") if both else None
            cells += (new, old, delta)
        cells += (current[-2], previous[-2], current[-1], previous[-1])
        # No previous state counts as absent (present false); a differing stored text is a change
        # even where the numbers are equal (10.0 and 10.00), as in queries.changes.
        old_state = ("false", *previous[1:]) if before is None else previous
        cells.append(",".join(name for name, a, b in zip(_CHANGED_NAMES, old_state, current) if a != b))
        rows.append(tuple(cells))
    return rows
