"""The SQL behind a period statement and its chart: as-of probes, range aggregates, day edges, buckets.

Every function takes a Connection and an account id, and reads only the rows of the period
(or one index seek per asset and instant), so a statement costs in proportion to its period,
not to the history, and nothing larger than one row per asset, day or chart bucket reaches
Python. Periods are half-open, [since, until): a state observed exactly at `since` belongs to
the period, so "the state in force at t" is always the last one observed strictly before t.
Consecutive periods then chain: one's closing is the next one's opening.

On SQLite amounts are TEXT, so ordering and min/max go through `COLLATE decimal` (registered
on every recorder connection, see recorder.db); PostgreSQL's NUMERIC orders natively.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import (
    Connection,
    Integer,
    String,
    and_,
    bindparam,
    cast,
    extract,
    func,
    literal,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.sql.elements import ColumnElement

from recorder.coverage import due_at, schedules_over
from recorder.db_types import UtcDateTime
from recorder.models import POLL_FAILED, POLL_OK, Account, Balance, BalanceHead, Poll
from recorder.queries.states import AssetState

_BALANCES = Balance.__table__
_HEADS = BalanceHead.__table__
_POLLS = Poll.__table__
_ACCOUNTS = Account.__table__
_STATE = (
    _BALANCES.c.asset,
    _BALANCES.c.observed_at,
    _BALANCES.c.present,
    _BALANCES.c.balance,
    _BALANCES.c.cross_wallet_balance,
    _BALANCES.c.cross_un_pnl,
    _BALANCES.c.available_balance,
    _BALANCES.c.max_withdraw_amount,
    _BALANCES.c.margin_available,
    _BALANCES.c.update_time,
)
_ACCOUNT = bindparam("account_id")
_SINCE = bindparam("since", type_=UtcDateTime())
_UNTIL = bindparam("until", type_=UtcDateTime())
_AT = bindparam("at", type_=UtcDateTime())


def _is_sqlite(connection: Connection) -> bool:
    return connection.dialect.name == "sqlite"


def _ordered(column: ColumnElement, sqlite: bool) -> ColumnElement:
    """An amount column that orders by value on both backends."""
    return type_coerce(column, String()).collate("decimal") if sqlite else column


def account_id(connection: Connection, label: str) -> int | None:
    """The account's id, None when the database has no such account."""
    return connection.execute(select(_ACCOUNTS.c.id).where(_ACCOUNTS.c.label == label)).scalar()


def account_assets(connection: Connection, account: int) -> list[str]:
    """Every asset the account ever had, sorted."""
    query = select(_HEADS.c.asset).where(_HEADS.c.account_id == account).order_by(_HEADS.c.asset)
    return list(connection.execute(query).scalars())


# --- as-of ---------------------------------------------------------------------------------

# Per asset the account ever had, the id of its last state strictly before :at: one seek on
# (account_id, asset, observed_at) each. Ordering by asset too (a constant here) keeps
# PostgreSQL's planner on that key instead of walking (account_id, observed_at) backwards.
_older = _BALANCES.alias("older")
_LAST_BEFORE_ID = (
    select(_older.c.id)
    .where(_older.c.account_id == _HEADS.c.account_id, _older.c.asset == _HEADS.c.asset, _older.c.observed_at < _AT)
    .order_by(_older.c.asset.desc(), _older.c.observed_at.desc())
    .limit(1)
    .correlate(_HEADS)
    .scalar_subquery()
)
_STATES_BEFORE = (
    select(_HEADS.c.asset.label("head_asset"), *_STATE[1:])
    .select_from(_HEADS.outerjoin(_BALANCES, _BALANCES.c.id == _LAST_BEFORE_ID))
    .where(_HEADS.c.account_id == _ACCOUNT)
    .order_by(_HEADS.c.asset)
)


def states_before(connection: Connection, account: int, at: datetime) -> dict[str, AssetState | None]:
    """Per asset the account ever had, its last state observed strictly before `at` (None: none yet)."""
    states: dict[str, AssetState | None] = {}
    for row in connection.execute(_STATES_BEFORE, {"account_id": account, "at": at}):
        states[row[0]] = None if row[1] is None else AssetState(row[0], *row[1:])
    return states


_LAST_OK_BEFORE = (
    select(_POLLS.c.finished_at)
    .where(_POLLS.c.account_id == _ACCOUNT, _POLLS.c.outcome == POLL_OK, _POLLS.c.finished_at < _AT)
    .order_by(_POLLS.c.finished_at.desc())
    .limit(1)
)


def last_ok_poll_before(connection: Connection, account: int, at: datetime) -> datetime | None:
    """The last successful poll strictly before `at`."""
    return connection.execute(_LAST_OK_BEFORE, {"account_id": account, "at": at}).scalar()


_FIRST_OK = (
    select(_POLLS.c.finished_at)
    .where(_POLLS.c.account_id == _ACCOUNT, _POLLS.c.outcome == POLL_OK)
    .order_by(_POLLS.c.finished_at)
    .limit(1)
)


def first_ok_poll(connection: Connection, account: int) -> datetime | None:
    """The account's first successful poll, None when there is none."""
    return connection.execute(_FIRST_OK, {"account_id": account}).scalar()


def due_after(connection: Connection, account: int, last_ok: datetime, at: datetime) -> datetime:
    """When the successful poll after `last_ok` was due, by the schedules the writer stored."""
    return due_at(last_ok, schedules_over(connection, account, last_ok, at))


# --- range aggregates ------------------------------------------------------------------------


def _in_range(table=_BALANCES):
    return and_(table.c.account_id == _ACCOUNT, table.c.observed_at >= _SINCE, table.c.observed_at < _UNTIL)


_CHANGE_COUNTS = (
    select(_BALANCES.c.asset, func.count())
    .where(_in_range())
    .group_by(_BALANCES.c.asset)
)


def change_counts(connection: Connection, account: int, since: datetime, until: datetime) -> dict[str, int]:
    """Per asset, the states recorded in [since, until): every change of any amount, vanishing included."""
    params = {"account_id": account, "since": since, "until": until}
    return {asset: count for asset, count in connection.execute(_CHANGE_COUNTS, params)}


@dataclass(frozen=True)
class Extreme:
    """A wallet balance reached in the period and when it was first observed there."""

    value: Decimal
    at: datetime


def _extreme_query(sqlite: bool, highest: bool):
    ordered = _ordered(_BALANCES.c.balance, sqlite)
    return (
        select(_BALANCES.c.balance, _BALANCES.c.observed_at)
        .where(_in_range(), _BALANCES.c.asset == bindparam("asset"), _BALANCES.c.present)
        # A bounded top-1 sort over the period's rows: earliest first among equal values.
        .order_by(ordered.desc() if highest else ordered.asc(), _BALANCES.c.observed_at)
        .limit(1)
    )


_EXTREMES = {(sqlite, highest): _extreme_query(sqlite, highest) for sqlite in (True, False) for highest in (True, False)}


def range_extremes(
    connection: Connection, account: int, asset: str, since: datetime, until: datetime
) -> tuple[Extreme | None, Extreme | None]:
    """The highest and lowest wallet balance observed in [since, until), each with its first time."""
    sqlite = _is_sqlite(connection)
    params = {"account_id": account, "asset": asset, "since": since, "until": until}
    found = []
    for highest in (True, False):
        row = connection.execute(_EXTREMES[(sqlite, highest)], params).first()
        found.append(None if row is None else Extreme(row[0], row[1]))
    return found[0], found[1]


@dataclass(frozen=True)
class PollCounts:
    """The polls that finished in a period: successes, failures, and failures by error class."""

    ok: int
    failed: int
    failures: dict[str, int]
    # Per error class, the message of its latest failure in the period (as the exchange or
    # the database put it: untrusted text, escape it wherever it is shown).
    last_messages: dict[str, str | None] = field(default_factory=dict)

    @property
    def success_rate(self) -> float | None:
        """Share of successful polls (0..1); None when no poll finished in the period."""
        total = self.ok + self.failed
        return None if total == 0 else self.ok / total


_POLL_COUNTS = (
    select(_POLLS.c.outcome, _POLLS.c.error_class, func.count())
    .where(_POLLS.c.account_id == _ACCOUNT, _POLLS.c.finished_at >= _SINCE, _POLLS.c.finished_at < _UNTIL)
    .group_by(_POLLS.c.outcome, _POLLS.c.error_class)
)


def poll_counts(connection: Connection, account: int, since: datetime, until: datetime) -> PollCounts:
    """Polls that finished in [since, until), counted by outcome and error class in SQL."""
    ok, failed, failures = 0, 0, Counter()
    for outcome, error_class, count in connection.execute(
        _POLL_COUNTS, {"account_id": account, "since": since, "until": until}
    ):
        if outcome == POLL_FAILED:
            failed += count
            failures[error_class or "unknown"] += count
        else:
            ok += count
    messages = {}
    for name in sorted(failures):
        params = {"account_id": account, "since": since, "until": until, "error_class": None if name == "unknown" else name}
        messages[name] = connection.execute(_LAST_MESSAGE[name == "unknown"], params).scalar()
    return PollCounts(ok, failed, dict(sorted(failures.items())), messages)


def _last_message_query(unknown: bool):
    error_class = _POLLS.c.error_class.is_(None) if unknown else _POLLS.c.error_class == bindparam("error_class")
    return (
        select(_POLLS.c.error_message)
        .where(
            _POLLS.c.account_id == _ACCOUNT,
            _POLLS.c.finished_at >= _SINCE,
            _POLLS.c.finished_at < _UNTIL,
            _POLLS.c.outcome == POLL_FAILED,
            error_class,
        )
        .order_by(_POLLS.c.finished_at.desc())
        .limit(1)
    )


_LAST_MESSAGE = {unknown: _last_message_query(unknown) for unknown in (True, False)}


# --- day edges ------------------------------------------------------------------------------


def balances_at_edges(
    connection: Connection, account: int, edges: Sequence[datetime]
) -> dict[str, list[AssetState | None]]:
    """Per asset, the state in force at each edge (last observed strictly before it), in one query.

    One index seek per asset and edge: a year of days is ~370 seeks an asset, whatever the
    number of polls in it.
    """
    if not edges:
        return {}
    edge_rows = union_all(
        *(select(literal(index, Integer).label("position"), literal(edge, UtcDateTime()).label("edge")) for index, edge in enumerate(edges))
    ).subquery("edges")
    older = _BALANCES.alias("edge_older")
    last_id = (
        select(older.c.id)
        .where(older.c.account_id == _HEADS.c.account_id, older.c.asset == _HEADS.c.asset, older.c.observed_at < edge_rows.c.edge)
        .order_by(older.c.asset.desc(), older.c.observed_at.desc())
        .limit(1)
        .correlate(_HEADS, edge_rows)
        .scalar_subquery()
    )
    query = (
        select(_HEADS.c.asset.label("head_asset"), edge_rows.c.position, *_STATE[1:])
        .select_from(_HEADS.join(edge_rows, literal(True)).outerjoin(_BALANCES, _BALANCES.c.id == last_id))
        .where(_HEADS.c.account_id == _ACCOUNT)
        .order_by(_HEADS.c.asset, edge_rows.c.position)
    )
    found: dict[str, list[AssetState | None]] = {}
    for row in connection.execute(query, {"account_id": account}):
        states = found.setdefault(row[0], [None] * len(edges))
        states[row[1]] = None if row[2] is None else AssetState(row[0], *row[2:])
    return found


# --- largest changes ------------------------------------------------------------------------


@dataclass(frozen=True)
class BalanceMove:
    """One change of an asset's wallet balance: from the previous state to this one."""

    asset: str
    observed_at: datetime
    before: Decimal
    after: Decimal

    @property
    def delta(self) -> Decimal:
        """after - before, exact."""
        return self.after - self.before


def largest_moves(connection: Connection, account: int, since: datetime, until: datetime, limit: int = 10) -> list[BalanceMove]:
    """The `limit` largest wallet-balance changes observed in [since, until), by absolute size.

    The delta is computed in SQL over the period's rows only; the largest rises and the
    largest falls are each a bounded top-N sort there, and merged by size here.
    """
    sqlite = _is_sqlite(connection)
    # The state just before the period starts gives the first change in it its "before".
    previous = func.lag(_BALANCES.c.balance).over(partition_by=_BALANCES.c.asset, order_by=_BALANCES.c.observed_at)
    widened = (
        select(
            _BALANCES.c.asset,
            _BALANCES.c.observed_at,
            _BALANCES.c.balance.label("after"),
            previous.label("before"),
        )
        .where(
            _BALANCES.c.account_id == _ACCOUNT,
            _BALANCES.c.observed_at >= bindparam("widened_since", type_=UtcDateTime()),
            _BALANCES.c.observed_at < _UNTIL,
        )
        .subquery("moves")
    )
    if sqlite:
        delta = _ordered(func.decimal_sub(widened.c.after, widened.c.before), sqlite)
        differs = func.decimal_cmp(widened.c.after, widened.c.before) != 0
    else:
        delta = widened.c.after - widened.c.before
        differs = widened.c.after != widened.c.before
    base = select(widened.c.asset, widened.c.observed_at, widened.c.before, widened.c.after).where(
        widened.c.observed_at >= _SINCE, widened.c.before.is_not(None), widened.c.after.is_not(None), differs
    )
    start = _earliest_previous(connection, account, since)
    params = {"account_id": account, "since": since, "until": until, "widened_since": start}
    moves = []
    for direction in (delta.desc(), delta.asc()):
        for asset, observed_at, before, after in connection.execute(base.order_by(direction).limit(limit), params):
            before, after = _as_decimal(before), _as_decimal(after)
            moves.append(BalanceMove(asset, observed_at, before, after))
    unique = {(move.asset, move.observed_at): move for move in moves}
    return sorted(unique.values(), key=lambda move: (-abs(move.delta), move.observed_at, move.asset))[:limit]


def _earliest_previous(connection: Connection, account: int, since: datetime) -> datetime:
    """The oldest 'last state before `since`' over every asset: where the lag window must start."""
    states = states_before(connection, account, since)
    times = [state.observed_at for state in states.values() if state is not None]
    return min(times) if times else since


def _as_decimal(value: object) -> Decimal:
    # The window's lag() loses the column type on SQLite, so the text comes back raw.
    return value if isinstance(value, Decimal) else Decimal(str(value))


# --- chart buckets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    """One time bucket of one amount: its lowest and highest value and the value it ended on."""

    index: int
    low: Decimal | None
    high: Decimal | None
    last: Decimal | None
    last_at: datetime


def _bucket_of(sqlite: bool, width_seconds: float) -> ColumnElement:
    # Seconds since the period's start, for chart placement only (never an amount): SQLite's
    # julianday keeps milliseconds, ample for buckets of a second or more.
    if sqlite:
        seconds = (func.julianday(_BALANCES.c.observed_at) - func.julianday(_SINCE)) * 86400.0
        return cast(seconds / width_seconds, Integer)
    seconds = extract("epoch", _BALANCES.c.observed_at - _SINCE)
    return cast(func.floor(seconds / width_seconds), Integer)


def buckets(
    connection: Connection, account: int, asset: str, field: str, since: datetime, until: datetime, count: int
) -> tuple[timedelta, list[Bucket]]:
    """The amount `field` of one asset in `count` equal buckets of [since, until), grouped in SQL.

    Low and high keep every extreme of a step series at chart resolution; `last` (the value
    the bucket ended on, None for a vanished asset) lets the line carry on correctly through
    the empty buckets after it. Buckets with no change are left out: the line holds.
    """
    sqlite = _is_sqlite(connection)
    width = (until - since) / count
    width_seconds = max(width.total_seconds(), 1e-6)
    column = _BALANCES.c[field]
    bucket = _bucket_of(sqlite, width_seconds).label("bucket")
    rows = (
        select(_BALANCES.c.observed_at, _BALANCES.c.present, column.label("amount"), bucket)
        .where(_in_range(), _BALANCES.c.asset == bindparam("asset"))
        .subquery("rows")
    )
    amount = _ordered(rows.c.amount, sqlite)
    grouped = (
        select(
            rows.c.bucket,
            func.min(amount).label("low"),
            func.max(amount).label("high"),
            func.max(rows.c.observed_at).label("last_at"),
        )
        .group_by(rows.c.bucket)
        .subquery("grouped")
    )
    query = (
        select(grouped.c.bucket, grouped.c.low, grouped.c.high, grouped.c.last_at, _BALANCES.c[field])
        .join_from(
            grouped,
            _BALANCES,
            and_(
                _BALANCES.c.account_id == _ACCOUNT,
                _BALANCES.c.asset == bindparam("asset"),
                _BALANCES.c.observed_at == grouped.c.last_at,
            ),
        )
        .order_by(grouped.c.bucket)
    )
    params = {"account_id": account, "asset": asset, "since": since, "until": until}
    found = []
    for index, low, high, last_at, last in connection.execute(query, params):
        found.append(
            Bucket(
                index,
                None if low is None else _as_decimal(low),
                None if high is None else _as_decimal(high),
                last,
                _utc(last_at),
            )
        )
    return width, found


def _utc(value: object) -> datetime:
    # max() over a UtcDateTime column loses the type on SQLite: parse its stored text.
    if isinstance(value, datetime):
        return UtcDateTime().process_result_value(value, None)  # type: ignore[arg-type]
    return UtcDateTime().process_result_value(datetime.fromisoformat(str(value)), None)  # type: ignore[arg-type]
