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

import bisect
import heapq
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import (
    Connection,
    Integer,
    String,
    and_,
    case,
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


def _in_range_clause(table=_BALANCES):
    return and_(table.c.account_id == _ACCOUNT, table.c.observed_at >= _SINCE, table.c.observed_at < _UNTIL)


def _is_sqlite(connection: Connection) -> bool:
    return connection.dialect.name == "sqlite"


def _ordered(column: ColumnElement, sqlite: bool) -> ColumnElement:
    """An amount column that orders by value on both backends."""
    return type_coerce(column, String()).collate("decimal") if sqlite else column


# SQLite's decimal collation calls Python for every comparison (~2-10 µs): over a year of
# minute rows that is seconds per asset. Binance sends amounts with 8 decimals and the store
# keeps that text, so on SQLite such an amount with the dot removed is an exact integer of
# 1e-8 (it fits in 63 bits), which SQLite computes and compares in C. period_activity tells,
# per asset, whether every amount of the period has that form; where one does not, the exact
# decimal collation is used instead.
UNIT_DIGITS = 8
# A sign, 10 integer digits, the dot and 8 decimals: below 2^63 once the dot is gone.
_MAX_UNIT_TEXT = 20


def _text(column: ColumnElement) -> ColumnElement:
    return type_coerce(column, String())


def _units(column: ColumnElement) -> ColumnElement:
    """SQLite: the amount as an exact integer of 1e-8 (valid where _fits is 1)."""
    return cast(func.replace(_text(column), ".", ""), Integer)


def _fits(column: ColumnElement) -> ColumnElement:
    """SQLite: 1 where the amount's text has exactly 8 decimals and fits 63 bits (or is NULL), else 0."""
    text = _text(column)
    dot = func.instr(text, ".")
    return case(
        (text.is_(None), 1),
        (and_(dot > 0, func.length(text) - dot == UNIT_DIGITS, func.length(text) <= _MAX_UNIT_TEXT), 1),
        else_=0,
    )


def _from_units(value: object) -> Decimal:
    return Decimal(int(value)).scaleb(-UNIT_DIGITS)


@dataclass(frozen=True)
class Activity:
    """An asset's rows in a period: how many, and whether SQLite may compare its amounts as integers."""

    changes: int
    balance_units: bool = False
    pnl_units: bool = False
    # SQLite, where balance_units: the highest and lowest balance of the period, in 1e-8.
    high_units: int | None = None
    low_units: int | None = None
    # SQLite: what the period's single scan already found, so nothing reads the rows again
    # (None: not scanned; range_extremes and largest_moves query for it).
    extremes: tuple[Extreme | None, Extreme | None] | None = None
    moves: tuple[BalanceMove, ...] | None = None
    # Asked for a chart: per amount (balance, cross_un_pnl) its buckets, as buckets() gives them.
    buckets: dict[str, list[Bucket]] | None = None


_ACTIVITY = {
    True: select(
        _BALANCES.c.asset,
        func.count(),
        func.min(_fits(_BALANCES.c.balance)),
        func.min(_fits(_BALANCES.c.cross_un_pnl)),
        # In the same scan: meaningful only where every balance fits (checked before use).
        func.max(_units(_BALANCES.c.balance)),
        func.min(_units(_BALANCES.c.balance)),
    )
    .where(_in_range_clause())
    .group_by(_BALANCES.c.asset),
    False: select(_BALANCES.c.asset, func.count()).where(_in_range_clause()).group_by(_BALANCES.c.asset),
}


def period_activity(
    connection: Connection, account: int, since: datetime, until: datetime, chart_buckets: int | None = None
) -> dict[str, Activity]:
    """Per asset with rows in [since, until): the states recorded (every change of any amount,
    vanishing included) and, on SQLite, whether its balances and unrealized PnLs compare as integers.

    On SQLite one scan also finds each asset's extremes and largest moves, and with
    `chart_buckets` its chart buckets (see Activity); PostgreSQL leaves them to their queries.
    """
    sqlite = _is_sqlite(connection)
    if sqlite:
        return _scan_period(connection, account, since, until, chart_buckets)
    params = {"account_id": account, "since": since, "until": until}
    found = {}
    for row in connection.execute(_ACTIVITY[sqlite], params):
        found[row[0]] = Activity(row[1], bool(row[2]), bool(row[3]), row[4], row[5]) if sqlite else Activity(row[1])
    return found


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
    return _in_range_clause(table)


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
    connection: Connection,
    account: int,
    asset: str,
    since: datetime,
    until: datetime,
    *,
    units: bool = False,
    bounds: tuple[int | None, int | None] | None = None,
) -> tuple[Extreme | None, Extreme | None]:
    """The highest and lowest wallet balance observed in [since, until), each with its first time.

    `units`: on SQLite, compare as integers of 1e-8 (only where period_activity allows it).
    """
    sqlite = _is_sqlite(connection)
    params = {"account_id": account, "asset": asset, "since": since, "until": until}
    if sqlite and units:
        # `bounds`: the (high, low) in 1e-8 that period_activity already found in its scan.
        high, low = bounds if bounds is not None else connection.execute(_UNIT_EXTREMES, params).one()
        if high is None:
            return None, None
        found = [connection.execute(_FIRST_AT_UNITS, {**params, "target": target}).one() for target in (high, low)]
        return Extreme(found[0][0], found[0][1]), Extreme(found[1][0], found[1][1])
    found = []
    for highest in (True, False):
        row = connection.execute(_EXTREMES[(sqlite, highest)], params).first()
        found.append(None if row is None else Extreme(row[0], row[1]))
    return found[0], found[1]


_ASSET_ROWS = and_(_in_range_clause(), _BALANCES.c.asset == bindparam("asset"), _BALANCES.c.present)
_UNIT_EXTREMES = select(func.max(_units(_BALANCES.c.balance)), func.min(_units(_BALANCES.c.balance))).where(_ASSET_ROWS)
# Walks the asset's rows in time order (the index) and stops at the first one at the target.
_FIRST_AT_UNITS = (
    select(_BALANCES.c.balance, _BALANCES.c.observed_at)
    .where(_ASSET_ROWS, _units(_BALANCES.c.balance) == bindparam("target"))
    .order_by(_BALANCES.c.observed_at)
    .limit(1)
)


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
    found: dict[str, list[AssetState | None]] = {}
    # SQLite refuses a compound SELECT of more than 500 terms: a decade of days goes in chunks.
    for offset in range(0, len(edges), EDGES_PER_QUERY):
        chunk = edges[offset:offset + EDGES_PER_QUERY]
        for asset, position, state in _states_at(connection, account, chunk):
            found.setdefault(asset, [None] * len(edges))[offset + position] = state
    return found


EDGES_PER_QUERY = 400


def _states_at(connection: Connection, account: int, edges: Sequence[datetime]) -> Iterator[tuple[str, int, AssetState | None]]:
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
    for row in connection.execute(query, {"account_id": account}):
        yield row[0], row[1], None if row[2] is None else AssetState(row[0], *row[2:])


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


def largest_moves(
    connection: Connection,
    account: int,
    since: datetime,
    until: datetime,
    activity: Mapping[str, Activity],
    limit: int = 10,
) -> list[BalanceMove]:
    """The `limit` largest wallet-balance changes observed in [since, until), by absolute size.

    Reads the period's rows only, asset by asset along the (account_id, asset, observed_at)
    index: the delta between consecutive rows is a window in SQL with a bounded top-N sort;
    each asset's first row in the period is compared here with its state in force at `since`.
    """
    sqlite = _is_sqlite(connection)
    moves: list[BalanceMove] = []
    for asset, rows in activity.items():
        if rows.changes == 0:
            continue
        if rows.moves is not None and limit <= SCAN_MOVES:
            moves.extend(rows.moves)
            continue
        if not sqlite:
            queries = [_MOVES_NUMERIC]
        elif rows.balance_units:
            queries = [_MOVES_BY_UNITS]
        else:
            queries = [_MOVES_BY_TEXT[True], _MOVES_BY_TEXT[False]]
        params = {"account_id": account, "asset": asset, "since": since, "until": until, "limit": limit}
        for query in queries:
            for observed_at, before, after in connection.execute(query, params):
                moves.append(BalanceMove(asset, observed_at, _as_decimal(before), _as_decimal(after)))
    opening = states_before(connection, account, since)
    params = {"account_id": account, "since": since, "until": until}
    for asset, observed_at, balance in connection.execute(_FIRST_IN_PERIOD, params):
        state = opening.get(asset)
        if state is not None and state.present and balance is not None and balance != state.balance:
            moves.append(BalanceMove(asset, observed_at, state.balance, balance))
    unique = {(move.asset, move.observed_at): move for move in moves}
    return sorted(unique.values(), key=lambda move: (-abs(move.delta), move.observed_at, move.asset))[:limit]


def _moves_query(delta_of, differs_of, descending: bool):
    """One asset's consecutive rows inside the period, as (observed_at, before, after), largest delta first."""
    balance = _BALANCES.c.balance
    pairs = (
        select(
            _BALANCES.c.observed_at,
            func.lag(balance).over(order_by=_BALANCES.c.observed_at).label("before"),
            balance.label("after"),
            delta_of().label("delta"),
        )
        .where(_in_range_clause(), _BALANCES.c.asset == bindparam("asset"))
        .subquery("pairs")
    )
    order = pairs.c.delta.desc() if descending else pairs.c.delta.asc()
    return (
        select(pairs.c.observed_at, pairs.c.before, pairs.c.after)
        .where(pairs.c.before.is_not(None), pairs.c.after.is_not(None), differs_of(pairs))
        .order_by(order, pairs.c.observed_at)
        .limit(bindparam("limit"))
    )


def _lagged(expression: ColumnElement) -> ColumnElement:
    return func.lag(expression).over(order_by=_BALANCES.c.observed_at)


_MOVES_NUMERIC = _moves_query(
    lambda: func.abs(_BALANCES.c.balance - _lagged(_BALANCES.c.balance)),
    lambda p: p.c.after != p.c.before,
    True,
)
_MOVES_BY_UNITS = _moves_query(
    lambda: func.abs(_units(_BALANCES.c.balance) - _lagged(_units(_BALANCES.c.balance))),
    lambda p: p.c.delta != 0,
    True,
)
# Without a sortable absolute value of a decimal text, the largest rises and the largest falls
# are found apart (each a top-N) and merged in largest_moves.
_MOVES_BY_TEXT = {
    rises: _moves_query(
        lambda: _ordered(func.decimal_sub(_BALANCES.c.balance, _lagged(_BALANCES.c.balance)), True),
        lambda p: func.decimal_cmp(p.c.after, p.c.before) != 0,
        rises,
    )
    for rises in (True, False)
}
# Per asset, one seek for its first row in the period.
_first = _BALANCES.alias("first_in_period")
_FIRST_ID = (
    select(_first.c.id)
    .where(
        _first.c.account_id == _HEADS.c.account_id,
        _first.c.asset == _HEADS.c.asset,
        _first.c.observed_at >= _SINCE,
        _first.c.observed_at < _UNTIL,
    )
    .order_by(_first.c.asset, _first.c.observed_at)
    .limit(1)
    .correlate(_HEADS)
    .scalar_subquery()
)
_FIRST_IN_PERIOD = (
    select(_BALANCES.c.asset, _BALANCES.c.observed_at, _BALANCES.c.balance)
    .select_from(_HEADS.join(_BALANCES, _BALANCES.c.id == _FIRST_ID))
    .where(_HEADS.c.account_id == _ACCOUNT)
)


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
    connection: Connection,
    account: int,
    asset: str,
    fields: Mapping[str, bool],
    since: datetime,
    until: datetime,
    count: int,
) -> tuple[timedelta, dict[str, list[Bucket]]]:
    """Amounts of one asset in `count` equal buckets of [since, until), grouped in SQL in one pass.

    `fields` maps each amount column to whether SQLite may compare it as integers of 1e-8
    (see period_activity). Per bucket and field, low and high keep every extreme of a step
    series at chart resolution; `last` (the value the bucket ended on, None for a vanished
    asset) lets the line carry on correctly through the empty buckets after it. Buckets with
    no change are left out: the line holds.
    """
    sqlite = _is_sqlite(connection)
    width = (until - since) / count
    width_seconds = max(width.total_seconds(), 1e-6)
    names = list(fields)
    bucket = _bucket_of(sqlite, width_seconds).label("bucket")
    rows = (
        select(_BALANCES.c.observed_at, bucket, *(_BALANCES.c[name].label(name) for name in names))
        .where(_in_range(), _BALANCES.c.asset == bindparam("asset"))
        .subquery("rows")
    )
    aggregates = []
    for name in names:
        by_units = sqlite and fields[name]
        amount = _units(rows.c[name]) if by_units else _ordered(rows.c[name], sqlite)
        aggregates += [func.min(amount), func.max(amount)]
    grouped = (
        select(rows.c.bucket, func.max(rows.c.observed_at).label("last_at"), *aggregates)
        .group_by(rows.c.bucket)
        .subquery("grouped")
    )
    query = (
        select(grouped, *(_BALANCES.c[name] for name in names))
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
    decoders = [_from_units if sqlite and fields[name] else _as_decimal for name in names]
    found: dict[str, list[Bucket]] = {name: [] for name in names}
    for row in connection.execute(query, params):
        index, last_at = row[0], _utc(row[1])
        for position, name in enumerate(names):
            low, high = row[2 + 2 * position], row[3 + 2 * position]
            last = row[2 + 2 * len(names) + position]
            decode = decoders[position]
            found[name].append(
                Bucket(index, None if low is None else decode(low), None if high is None else decode(high), last, last_at)
            )
    return width, found


def _utc(value: object) -> datetime:
    # max() over a UtcDateTime column loses the type on SQLite: parse its stored text.
    if isinstance(value, datetime):
        return UtcDateTime().process_result_value(value, None)  # type: ignore[arg-type]
    return UtcDateTime().process_result_value(datetime.fromisoformat(str(value)), None)  # type: ignore[arg-type]


# --- SQLite: one scan of the period ----------------------------------------------------------

# Every SQL-side way to take consecutive differences on SQLite (a lag() window, a seek per
# row) costs more per row than handing the rows over, and most rows repeat the previous
# wallet balance (they record a change of another amount). So one pass per asset along the
# (account_id, asset, observed_at) index streams the raw text of the amounts, and Python does
# the balance's work only where its text changes: the count, the highest and lowest (first
# time each), the largest moves and, for the HTML report, the chart buckets come out of that
# pass together. Amounts stay exact: each changed text becomes a Decimal; time text becomes
# a datetime only for the few rows reported.
def _scan_query(chart: bool):
    # Always four columns: the loop unpacks a fixed tuple (a starred unpack builds a list per row).
    pnl = _text(_BALANCES.c.cross_un_pnl) if chart else literal(None, String())
    columns = [_text(_BALANCES.c.observed_at), _text(_BALANCES.c.balance), _fits(_BALANCES.c.cross_un_pnl), pnl]
    return (
        select(*columns)
        .where(_in_range_clause(), _BALANCES.c.asset == bindparam("asset"))
        .order_by(_BALANCES.c.observed_at)
    )


_SCAN_ROWS = {chart: _scan_query(chart) for chart in (True, False)}
# Moves a scan keeps per asset: enough for any statement's list of largest changes.
SCAN_MOVES = 50


def _scan_period(
    connection: Connection, account: int, since: datetime, until: datetime, chart_buckets: int | None
) -> dict[str, Activity]:
    dialect = connection.dialect
    compiled = _SCAN_ROWS[chart_buckets is not None].compile(dialect=dialect)
    # The stored text form of a time (fixed width, so text order is time order).
    stored = UtcDateTime().dialect_impl(dialect).bind_processor(dialect)
    edges = None
    if chart_buckets is not None:
        width = (until - since) / chart_buckets
        edges = [stored(since + width * index) for index in range(chart_buckets + 1)]
    # The raw driver cursor: SQLAlchemy's per-row result machinery would cost more than the scan.
    cursor = connection.connection.driver_connection.cursor()
    found = {}
    try:
        for asset in account_assets(connection, account):
            values = {"account_id": account, "asset": asset, "since": stored(since), "until": stored(until)}
            bound = compiled.construct_params(values)
            rows = cursor.execute(str(compiled), [bound[name] for name in compiled.positiontup])
            activity = _scan_asset(asset, rows, edges)
            if activity.changes:
                found[asset] = activity
    finally:
        cursor.close()
    return found


def _scan_asset(asset: str, rows: Iterator[tuple], edges: list[str] | None) -> Activity:
    """One asset's rows in time order: the hot loop of a statement, so plain locals throughout."""
    changes, pnl_units, balance_units = 0, True, True
    previous_text: str | None = None
    previous: Decimal | None = None
    high = low = None
    # (-|delta|, observed_at text, before, after): sorted, this is largest first, earliest first.
    kept: list[tuple[Decimal, str, Decimal, Decimal]] = []
    # Once SCAN_MOVES are kept, a move smaller than the smallest of them cannot make the list.
    smallest_kept = Decimal(0)
    # The chart bucket being filled: its index, where the next one starts, low/high per amount,
    # and the last row's values (what the bucket ended on).
    charted: dict[str, list[Bucket]] = {"balance": [], "cross_un_pnl": []}
    index, next_edge = -1, "" if edges is not None else _AFTER_ANY_TIME
    balance_low = balance_high = pnl_low = pnl_high = last_balance = last_pnl = last_at = None

    def close_bucket() -> None:
        at = _utc(last_at)
        charted["balance"].append(Bucket(index, balance_low, balance_high, last_balance, at))
        charted["cross_un_pnl"].append(Bucket(index, pnl_low, pnl_high, last_pnl, at))

    for at, text, pnl_fits, pnl_text in rows:
        changes += 1
        if not pnl_fits:
            pnl_units = False
        if text != previous_text:
            previous_text = text
            if text is None:  # vanished: no move into or out of a missing balance
                previous = None
            else:
                value = Decimal(text)
                # _fits in Python, inline as it runs for every change: exactly 8 decimals
                # (decimal_text never writes a bare ".5") and within 63 bits in 1e-8.
                if balance_units and (len(text) > _MAX_UNIT_TEXT or text[-UNIT_DIGITS - 1:-UNIT_DIGITS] != "."):
                    balance_units = False
                # Strict comparisons: the first time a value is reached is kept.
                if high is None or value > high[0]:
                    high = (value, at)
                if low is None or value < low[0]:
                    low = (value, at)
                if previous is not None and value != previous:
                    size = abs(value - previous)
                    if size >= smallest_kept:
                        kept.append((-size, at, previous, value))
                        if len(kept) > 4 * SCAN_MOVES:
                            kept = heapq.nsmallest(SCAN_MOVES, kept)
                            smallest_kept = -kept[-1][0]
                previous = value
                if index >= 0 and at < next_edge:
                    if balance_low is None or value < balance_low:
                        balance_low = value
                    if balance_high is None or value > balance_high:
                        balance_high = value
        if at >= next_edge:  # a later chart bucket starts (never without edges)
            if index >= 0:
                close_bucket()
            index = min(bisect.bisect_right(edges, at) - 1, len(edges) - 2)
            next_edge = edges[index + 1] if index + 2 < len(edges) else _AFTER_ANY_TIME
            balance_low = balance_high = previous
            pnl_low = pnl_high = None
        if edges is not None:
            pnl = None if pnl_text is None else Decimal(pnl_text)
            if pnl is not None:
                if pnl_low is None or pnl < pnl_low:
                    pnl_low = pnl
                if pnl_high is None or pnl > pnl_high:
                    pnl_high = pnl
            last_at, last_balance, last_pnl = at, previous, pnl
    if index >= 0:
        close_bucket()
    moves = tuple(BalanceMove(asset, _utc(at), before, after) for _, at, before, after in heapq.nsmallest(SCAN_MOVES, kept))
    extremes = (None, None) if high is None else (Extreme(high[0], _utc(high[1])), Extreme(low[0], _utc(low[1])))
    bounds = (None, None)
    if balance_units and high is not None:
        bounds = (int(high[0].scaleb(UNIT_DIGITS)), int(low[0].scaleb(UNIT_DIGITS)))
    return Activity(changes, balance_units, pnl_units, *bounds, extremes=extremes, moves=moves,
                    buckets=None if edges is None else charted)


# Sorts after every stored time text (they are ASCII).
_AFTER_ANY_TIME = "\uffff"
