"""Reconciliation: per asset, each change of the wallet balance against the income entries in between.

Binance's identity is wallet balance = net transfers + realized PnL + net funding − commission,
so over any stretch of time the change of an asset's `balance` equals the sum of the income
entries of that asset booked in it, whatever their type. What no type explains is the residual.

The rule, per account and asset:
- Only `balance` (the wallet balance) is reconciled. `crossWalletBalance` also moves when margin
  goes into or out of an isolated position, which books no income entry.
- The states compared are the wallet states: the present states in observation order, where
  consecutive states with the same balance and the same bound are one (a state row is written
  whenever any amount changes, mostly the unrealized PnL, which is no wallet event).
- An entry belongs to the state the exchange had, not to our poll: each state's bound is its
  `update_time` (Binance's time of that asset's state), and the interval of a state B after a
  state A takes the entries with A.bound < time ≤ B.bound. An entry booked between the exchange's
  state and our poll therefore lands in the next interval, with the state change it caused.
  The bound is the running maximum of `update_time`, so intervals never overlap and every entry
  belongs to exactly one interval even if Binance ever sent an older `update_time`. A balance that
  changed while `update_time` did not move has an empty interval: its whole change is residual.
- A vanished asset (present = false: no amounts) is no observation of the balance: the interval
  runs from the last present state to the next one, and the entries in between explain the whole
  move whether the asset was really at zero meanwhile or only missing from the response.
- The first state has no interval (nothing before it to compare with). Entries after the last
  state are pending: the state that includes them has not been observed yet; they are listed
  apart (kind 'pending') and are never a residual.
- A commission paid in BNB books `asset` = BNB and moves the BNB balance; an automatic exchange or
  a coin swap books one entry per asset: per-asset matching handles both with no special case.

Flags: 'residual' when |residual| > tolerance (default 0: exact); 'unknown-type' when an entry's
type was unknown when it was stored (`known_type` false); 'ledger-gap' when the interval crosses a
stretch the ledger sync did not cover: `ledger_gaps` is the seam for it (a callable answering
"does (start, end] cross a gap?"); `ledger_coverage_gaps` builds it from the ledger sync's
`ledger_coverage` view when the database has one, and without it no interval carries that flag.

Everything streams: one pass over the states and one over the entries per asset, in index order,
holding one interval at a time. Read-only.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from sqlalchemy import Connection, String, bindparam, func, select, true, type_coerce
from sqlalchemy.orm import Session

from recorder.db_types import UtcDateTime
from recorder.errors import ConfigError
from recorder.ledger.types import ROLL_FORWARD_GROUPS
from recorder.models import Account, Balance, BalanceHead, IncomeEntry
from recorder.queries.diffs import EXACT

INTERVAL = "interval"
PENDING = "pending"
FLAG_RESIDUAL = "residual"
FLAG_UNKNOWN_TYPE = "unknown-type"
FLAG_LEDGER_GAP = "ledger-gap"
ZERO = Decimal(0)
UTC = timezone.utc

# The roll-forward's lines, in the order a statement shows them (ROLL_FORWARD_GROUPS' values).
ROLL_FORWARD_ORDER = ("transfers", "realized_pnl", "fees", "rebates", "funding", "other")

# (account_id, start, end) -> True when the ledger's coverage has a hole in (start, end].
LedgerGaps = Callable[[int, datetime, datetime], bool]

_BALANCES = Balance.__table__
_ENTRIES = IncomeEntry.__table__
_HEADS = BalanceHead.__table__
_ACCOUNTS = Account.__table__
# Rows are fetched in batches of this many, on PostgreSQL through a server-side cursor.
_BATCH = 2000


@dataclass(frozen=True)
class Interval:
    """One asset between two consecutive wallet states, or the entries pending after the last one.

    `start`/`end` are the bounds (exchange time) of the entries counted: start < time ≤ end;
    `opened_at`/`observed_at` are when we observed the states at either side. A pending row
    has no closing state: `end`, `observed_at`, `closing`, `change` and `residual` are None.
    """

    account: str
    asset: str
    kind: str
    start: datetime
    end: datetime | None
    opened_at: datetime
    observed_at: datetime | None
    opening: Decimal
    closing: Decimal | None
    # Income type -> exact sum of its entries in the interval, types sorted.
    explained: Mapping[str, Decimal]
    unknown_types: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()

    @property
    def change(self) -> Decimal | None:
        """closing - opening wallet balance, exact; None for pending entries."""
        return None if self.closing is None else EXACT.subtract(self.closing, self.opening)

    @property
    def explained_total(self) -> Decimal:
        """The sum of every entry in the interval."""
        return _sum(self.explained.values())

    @property
    def residual(self) -> Decimal | None:
        """change - explained: what no ledger entry accounts for; None for pending entries."""
        change = self.change
        return None if change is None else EXACT.subtract(change, self.explained_total)

    @property
    def flagged(self) -> bool:
        """True when any flag is raised."""
        return bool(self.flags)


@dataclass(frozen=True)
class RollForward:
    """One asset's wallet balance over a period: opening, the entries by group, expected and actual closing.

    `opening`/`closing` are the wallet states the period's intervals chain from and to (the
    last present state observed before `since` and before `until`); when the asset was first
    seen inside the period, the opening is that first state. `pending` sums the entries after
    the closing state's bound and before `until`: booked, but not in an observed state yet.
    """

    asset: str
    opening: Decimal
    opening_observed_at: datetime
    start: datetime
    closing: Decimal
    closing_observed_at: datetime
    end: datetime
    # Group (ROLL_FORWARD_ORDER) -> exact sum; every group present, 0 when empty.
    groups: Mapping[str, Decimal]
    # Income type -> exact sum, every type booked in the period.
    by_type: Mapping[str, Decimal]
    unknown_types: tuple[str, ...]
    pending: Decimal
    tolerance: Decimal = ZERO

    @property
    def expected_closing(self) -> Decimal:
        """Opening plus every entry in between."""
        return EXACT.add(self.opening, _sum(self.groups.values()))

    @property
    def residual(self) -> Decimal:
        """closing - expected closing."""
        return EXACT.subtract(self.closing, self.expected_closing)

    @property
    def flags(self) -> tuple[str, ...]:
        """'residual' beyond the tolerance, 'unknown-type' when an unknown income type was booked."""
        flags = []
        if abs(self.residual) > self.tolerance:
            flags.append(FLAG_RESIDUAL)
        if self.unknown_types:
            flags.append(FLAG_UNKNOWN_TYPE)
        return tuple(flags)


def reconcile(
    session: Session | Connection,
    accounts: Sequence[str],
    *,
    assets: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    tolerance: Decimal = ZERO,
    flagged_only: bool = False,
    ledger_gaps: LedgerGaps | None = None,
) -> Iterator[Interval]:
    """Stream every interval of each account (in the order given) and asset (sorted).

    An interval is listed when its closing state was observed in [since, until); its opening
    state may be older. Pending entries are listed when the asset has no state observed at or
    after `until`, counting those booked before `until`.
    """
    _require_aware(since=since, until=until)
    if tolerance < 0 or not tolerance.is_finite():
        raise ValueError("the tolerance is a finite amount >= 0")
    connection = session.connection() if isinstance(session, Session) else session
    for label in accounts:
        account = _account_id(connection, label)
        wanted = None if assets is None else set(assets)
        for asset in _assets(connection, account):
            if wanted is not None and asset not in wanted:
                continue
            for interval in _asset_intervals(connection, label, account, asset, since, until, tolerance, ledger_gaps):
                if interval.flagged or not flagged_only:
                    yield interval


def roll_forward(
    session: Session | Connection,
    account: str,
    asset: str,
    since: datetime,
    until: datetime,
    *,
    tolerance: Decimal = ZERO,
) -> RollForward | None:
    """The roll-forward of one asset over [since, until); None when no wallet state bounds it.

    Computed straight from the two wallet states and one grouped sum over the entries in
    between (an index range), not from the intervals, so it costs the same for a day or a year;
    it equals the sum of reconcile()'s intervals over the same period.
    """
    _require_aware(since=since, until=until)
    connection = session.connection() if isinstance(session, Session) else session
    account_id = _account_id(connection, account)
    opening = _state_before(connection, account_id, asset, since)
    if opening is None:
        opening = _first_state_from(connection, account_id, asset, since, until)
    closing = _state_before(connection, account_id, asset, until)
    if opening is None or closing is None or closing[0] < opening[0]:
        return None
    start, end = opening[2], closing[2]
    by_type: dict[str, Decimal] = {}
    unknown: set[str] = set()
    for income_type, known, amount in _sums_by_type(connection, account_id, asset, start, end):
        by_type[income_type] = EXACT.add(by_type.get(income_type, ZERO), amount)
        if not known:
            unknown.add(income_type)
    groups = dict.fromkeys(ROLL_FORWARD_ORDER, ZERO)
    for income_type, amount in by_type.items():
        # An unknown type goes to "other", where the statement names and flags it.
        group = ROLL_FORWARD_GROUPS.get(income_type, "other")
        groups[group] = EXACT.add(groups[group], amount)
    pending = ZERO
    if not _observed_from(connection, account_id, asset, until):
        pending = _sum(amount for _, _, amount in _sums_by_type(connection, account_id, asset, end, None, before=until))
    return RollForward(
        asset, opening[1], opening[0], start, closing[1], closing[0], end, groups, dict(sorted(by_type.items())),
        tuple(sorted(unknown)), pending, tolerance,
    )


@dataclass(frozen=True)
class Explanation:
    """One asset's change between two of its states, broken down by income type."""

    asset: str
    change: Decimal
    # Income type -> exact sum of its entries between the two states' bounds, types sorted.
    explained: Mapping[str, Decimal]
    unknown_types: tuple[str, ...]

    @property
    def residual(self) -> Decimal:
        """change - every entry: what the ledger does not explain."""
        return EXACT.subtract(self.change, _sum(self.explained.values()))

    @property
    def text(self) -> str:
        """`USDT -12.3 = FUNDING_FEE -2.1 + COMMISSION -0.2 + REALIZED_PNL -10; unexplained 0`."""
        terms = " + ".join(f"{income_type} {format(amount, 'f')}" for income_type, amount in self.explained.items())
        unknown = f" (unknown type: {', '.join(self.unknown_types)})" if self.unknown_types else ""
        return f"{self.asset} {format(self.change, 'f')} = {terms or 'no entry'}; unexplained {format(self.residual, 'f')}{unknown}"


def explain_diff(session: Session | Connection, account: str, diff) -> dict[str, Explanation]:
    """Per asset of a `queries.diff` result present at both ends, its balance change by income type.

    The entries counted are those between the two states' bounds (update_time), the same rule
    as reconcile(); an asset that appeared or vanished in between has no explanation.
    """
    connection = session.connection() if isinstance(session, Session) else session
    account_id = _account_id(connection, account)
    explanations = {}
    for row in diff.assets:
        if row.before is None or row.after is None or row.change is None:
            continue
        start = _bound(connection, account_id, row.asset, row.before.observed_at)
        end = _bound(connection, account_id, row.asset, row.after.observed_at)
        by_type: dict[str, Decimal] = {}
        unknown = set()
        for income_type, known, amount in _sums_by_type(connection, account_id, row.asset, start, end):
            by_type[income_type] = EXACT.add(by_type.get(income_type, ZERO), amount)
            if not known:
                unknown.add(income_type)
        explanations[row.asset] = Explanation(
            row.asset, row.change["balance"], dict(sorted(by_type.items(), key=lambda item: (-abs(item[1]), item[0]))),
            tuple(sorted(unknown)),
        )
    return explanations


def ledger_gaps_from(stretches: Mapping[int, Iterable[tuple[datetime, datetime]]]) -> LedgerGaps:
    """A LedgerGaps over the ledger's covered stretches, [covered_from, covered_until] per account id.

    An interval (start, end] is covered when one stretch holds it whole; Binance's times are
    milliseconds, so a stretch from start + 1 ms covers it too. An account the sync never ran
    for (its entries imported from files, or none yet) has no coverage to judge by: no flag.
    """
    by_account = {account: sorted(spans) for account, spans in stretches.items()}
    tick = timedelta(milliseconds=1)

    def crosses_gap(account: int, start: datetime, end: datetime) -> bool:
        spans = by_account.get(account)
        if not spans:
            return False
        return not any(covered_from <= start + tick and end <= covered_until for covered_from, covered_until in spans)

    return crosses_gap


def ledger_coverage_gaps(session: Session | Connection) -> LedgerGaps | None:
    """The ledger sync's coverage (its `ledger_coverage` view) as a LedgerGaps; None without that view.

    The view belongs to the ledger sync (another part of the code, its own migration): on a
    database without it, reconciliation flags no ledger gap.
    """
    from sqlalchemy import inspect, text

    connection = session.connection() if isinstance(session, Session) else session
    if "ledger_coverage" not in inspect(connection).get_view_names():
        return None
    query = text("SELECT account_id, covered_from, covered_until FROM ledger_coverage").columns(
        covered_from=UtcDateTime(), covered_until=UtcDateTime()
    )
    stretches: dict[int, list[tuple[datetime, datetime]]] = {}
    for account_id, covered_from, covered_until in connection.execute(query):
        stretches.setdefault(account_id, []).append((covered_from, covered_until))
    return ledger_gaps_from(stretches)


# --- the stream of one asset ---------------------------------------------------------------


@dataclass
class _Open:
    """The wallet state the next interval starts from."""

    observed_at: datetime
    balance: Decimal
    bound: datetime


def _asset_intervals(
    connection: Connection,
    label: str,
    account: int,
    asset: str,
    since: datetime | None,
    until: datetime | None,
    tolerance: Decimal,
    ledger_gaps: LedgerGaps | None,
) -> Iterator[Interval]:
    opening = None
    if since is not None:
        before = _state_before(connection, account, asset, since)
        if before is not None:
            opening = _Open(*before)
    states = _present_states(connection, account, asset, since, until)
    entries: Iterator | None = None
    pending_entry = None
    for observed_at, balance, update_time in states:
        if opening is None:
            opening = _Open(observed_at, balance, update_time)
            continue
        bound = max(update_time, opening.bound)
        if balance == opening.balance and bound == opening.bound:
            continue
        if entries is None:
            entries = _entries_after(connection, account, asset, opening.bound, until=None)
            pending_entry = next(entries, None)
        explained: dict[str, Decimal] = {}
        unknown: set[str] = set()
        while pending_entry is not None and pending_entry[0] <= bound:
            _, income_type, amount, known = pending_entry
            explained[income_type] = EXACT.add(explained.get(income_type, ZERO), amount)
            if not known:
                unknown.add(income_type)
            pending_entry = next(entries, None)
        yield _interval(label, account, asset, INTERVAL, opening, bound, observed_at, balance, explained, unknown,
                        tolerance, ledger_gaps)
        opening = _Open(observed_at, balance, bound)
    if opening is None or _observed_from(connection, account, asset, until):
        return
    if entries is None:
        entries = _entries_after(connection, account, asset, opening.bound, until=None)
        pending_entry = next(entries, None)
    explained, unknown = {}, set()
    while pending_entry is not None and (until is None or pending_entry[0] < until):
        _, income_type, amount, known = pending_entry
        explained[income_type] = EXACT.add(explained.get(income_type, ZERO), amount)
        if not known:
            unknown.add(income_type)
        pending_entry = next(entries, None)
    if explained:
        yield _interval(label, account, asset, PENDING, opening, None, None, None, explained, unknown, tolerance, None)


def _interval(
    label: str,
    account: int,
    asset: str,
    kind: str,
    opening: _Open,
    bound: datetime | None,
    observed_at: datetime | None,
    closing: Decimal | None,
    explained: dict[str, Decimal],
    unknown: set[str],
    tolerance: Decimal,
    ledger_gaps: LedgerGaps | None,
) -> Interval:
    flags = []
    if closing is not None:
        residual = EXACT.subtract(EXACT.subtract(closing, opening.balance), _sum(explained.values()))
        if abs(residual) > tolerance:
            flags.append(FLAG_RESIDUAL)
    if unknown:
        flags.append(FLAG_UNKNOWN_TYPE)
    if ledger_gaps is not None and bound is not None and ledger_gaps(account, opening.bound, bound):
        flags.append(FLAG_LEDGER_GAP)
    return Interval(
        label, asset, kind, opening.bound, bound, opening.observed_at, observed_at, opening.balance, closing,
        dict(sorted(explained.items())) if len(explained) > 1 else explained, tuple(sorted(unknown)), tuple(flags),
    )


# --- SQL ------------------------------------------------------------------------------------

_ACCOUNT = bindparam("account_id")
_ASSET = bindparam("asset")
_SINCE = bindparam("since", type_=UtcDateTime())
_UNTIL = bindparam("until", type_=UtcDateTime())
_PRESENT = _BALANCES.c.present == true()


def _account_id(connection: Connection, label: str) -> int:
    account = connection.execute(select(_ACCOUNTS.c.id).where(_ACCOUNTS.c.label == label)).scalar()
    if account is None:
        known = list(connection.execute(select(_ACCOUNTS.c.label).order_by(_ACCOUNTS.c.label)).scalars())
        raise ConfigError(f"no account {label!r} in the database; recorded accounts: {', '.join(known) or 'none'}")
    return account


def _assets(connection: Connection, account: int) -> list[str]:
    query = select(_HEADS.c.asset).where(_HEADS.c.account_id == account).order_by(_HEADS.c.asset)
    return list(connection.execute(query).scalars())


def _stream(connection: Connection, query, params: dict) -> Iterator:
    # A server-side cursor on PostgreSQL, batched fetches on SQLite: memory stays bounded.
    result = connection.execution_options(stream_results=True, yield_per=_BATCH).execute(query, params)
    try:
        yield from result
    finally:
        result.close()


def _present_states(
    connection: Connection, account: int, asset: str, since: datetime | None, until: datetime | None
) -> Iterator[tuple[datetime, Decimal, datetime]]:
    """The present states in observation order, less those identical to the one before.

    A state whose stored balance and update_time equal the previous present state's is the
    same wallet state (only the unrealized PnL or another amount moved): the database drops
    it, so Python handles one row per wallet change instead of one per poll (a year of minute
    polls: 525,600 rows down to the ~170,000 that moved the balance, 2.5x faster). The
    comparison is of the stored value (text on SQLite), so a balance written with another
    scale ('1.0', '1.00') still reaches Python, which compares it as a number.
    """
    if connection.dialect.name == "sqlite":
        return _present_states_sqlite(connection, account, asset, since, until)
    query = select(
        _BALANCES.c.observed_at,
        _BALANCES.c.balance,
        _BALANCES.c.update_time,
        func.lag(type_coerce(_BALANCES.c.balance, String())).over(order_by=_BALANCES.c.observed_at).label("previous_balance"),
        func.lag(type_coerce(_BALANCES.c.update_time, String())).over(order_by=_BALANCES.c.observed_at).label("previous_update"),
    ).where(_BALANCES.c.account_id == _ACCOUNT, _BALANCES.c.asset == _ASSET, _PRESENT)
    params = {"account_id": account, "asset": asset}
    if since is not None:
        query = query.where(_BALANCES.c.observed_at >= _SINCE)
        params["since"] = since
    if until is not None:
        query = query.where(_BALANCES.c.observed_at < _UNTIL)
        params["until"] = until
    ordered = query.subquery("ordered")
    changed = (
        select(ordered.c.observed_at, ordered.c.balance, ordered.c.update_time)
        .where(
            ordered.c.previous_balance.is_(None)
            | type_coerce(ordered.c.balance, String()).is_distinct_from(ordered.c.previous_balance)
            | type_coerce(ordered.c.update_time, String()).is_distinct_from(ordered.c.previous_update)
        )
        .order_by(ordered.c.observed_at)
    )
    return _stream(connection, changed, params)


_BEFORE = (
    select(_BALANCES.c.observed_at, _BALANCES.c.balance)
    .where(_BALANCES.c.account_id == _ACCOUNT, _BALANCES.c.asset == _ASSET, _PRESENT,
           _BALANCES.c.observed_at < bindparam("at", type_=UtcDateTime()))
    .order_by(_BALANCES.c.observed_at.desc())
    .limit(1)
)
# The bound of a state is the running maximum of update_time up to it (see the module docstring).
_BOUND = select(func.max(_BALANCES.c.update_time)).where(
    _BALANCES.c.account_id == _ACCOUNT, _BALANCES.c.asset == _ASSET, _PRESENT,
    _BALANCES.c.observed_at <= bindparam("at", type_=UtcDateTime()),
)


def _state_before(connection: Connection, account: int, asset: str, at: datetime) -> tuple[datetime, Decimal, datetime] | None:
    """The last present state observed strictly before `at`, as (observed_at, balance, bound)."""
    row = connection.execute(_BEFORE, {"account_id": account, "asset": asset, "at": at}).first()
    if row is None:
        return None
    return row.observed_at, row.balance, _bound(connection, account, asset, row.observed_at)


def _bound(connection: Connection, account: int, asset: str, observed_at: datetime) -> datetime:
    """The bound of the state observed at `observed_at`: the running maximum of update_time up to it."""
    return connection.execute(_BOUND, {"account_id": account, "asset": asset, "at": observed_at}).scalar_one()


def _first_state_from(
    connection: Connection, account: int, asset: str, since: datetime, until: datetime
) -> tuple[datetime, Decimal, datetime] | None:
    query = (
        select(_BALANCES.c.observed_at, _BALANCES.c.balance, _BALANCES.c.update_time)
        .where(_BALANCES.c.account_id == _ACCOUNT, _BALANCES.c.asset == _ASSET, _PRESENT,
               _BALANCES.c.observed_at >= _SINCE, _BALANCES.c.observed_at < _UNTIL)
        .order_by(_BALANCES.c.observed_at)
        .limit(1)
    )
    row = connection.execute(query, {"account_id": account, "asset": asset, "since": since, "until": until}).first()
    return None if row is None else (row.observed_at, row.balance, row.update_time)


def _observed_from(connection: Connection, account: int, asset: str, at: datetime | None) -> bool:
    """True when the asset has a present state observed at or after `at` (never for no `at`)."""
    if at is None:
        return False
    query = (
        select(_BALANCES.c.id)
        .where(_BALANCES.c.account_id == _ACCOUNT, _BALANCES.c.asset == _ASSET, _PRESENT, _BALANCES.c.observed_at >= _SINCE)
        .limit(1)
    )
    return connection.execute(query, {"account_id": account, "asset": asset, "since": at}).first() is not None


def _entries_after(
    connection: Connection, account: int, asset: str, after: datetime, until: datetime | None
) -> Iterator[tuple[datetime, str, Decimal, bool]]:
    if connection.dialect.name == "sqlite":
        return _entries_after_sqlite(connection, account, asset, after, until)
    query = select(_ENTRIES.c.time, _ENTRIES.c.income_type, _ENTRIES.c.income, _ENTRIES.c.known_type).where(
        _ENTRIES.c.account_id == _ACCOUNT, _ENTRIES.c.asset == _ASSET, _ENTRIES.c.time > _SINCE
    )
    params = {"account_id": account, "asset": asset, "since": after}
    if until is not None:
        query = query.where(_ENTRIES.c.time <= _UNTIL)
        params["until"] = until
    return _stream(connection, query.order_by(_ENTRIES.c.time), params)


# --- SQLite fast paths (speed only: the same rows as the queries above) ----------------------
#
# A year of minute polls is 525,600 state rows and 200,000 entries. On SQLite, SQLAlchemy's
# per-row type processing (text -> naive datetime -> aware; text -> Decimal) and the window
# query that drops repeated states cost more than the reconciliation itself. These read the
# same rows through the driver's own cursor on the session's connection (same transaction,
# same snapshot), drop repeated states in Python by the very rule of the window (the stored
# text of balance and update_time equal to the previous present state's), and convert only
# the rows kept, with the C parsers. PostgreSQL keeps the queries above (typed columns, the
# window runs server-side).

_SQLITE_STATES = (
    "SELECT observed_at, balance, update_time FROM balances"
    " WHERE account_id = ? AND asset = ? AND present = 1{range} ORDER BY observed_at"
)
_SQLITE_ENTRIES = (
    "SELECT time, income_type, income, known_type FROM income_entries"
    " WHERE account_id = ? AND asset = ? AND time > ?{until} ORDER BY time"
)


# Parsed with the offset in the text: one C call that yields timezone.utc itself (a separate
# .replace(tzinfo=...) costs five times the parse).
_UTC_SUFFIX = "+00:00"


def _sqlite_time(value: datetime) -> str:
    # What UtcDateTime binds on SQLite: naive UTC, fixed width, so text order is time order.
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _sqlite_rows(connection: Connection, sql: str, params: tuple) -> Iterator[tuple]:
    cursor = connection.connection.driver_connection.cursor()
    try:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(_BATCH):
            yield from rows
    finally:
        cursor.close()


def _present_states_sqlite(
    connection: Connection, account: int, asset: str, since: datetime | None, until: datetime | None
) -> Iterator[tuple[datetime, Decimal, datetime]]:
    clauses, params = "", [account, asset]
    if since is not None:
        clauses += " AND observed_at >= ?"
        params.append(_sqlite_time(since))
    if until is not None:
        clauses += " AND observed_at < ?"
        params.append(_sqlite_time(until))
    parse = datetime.fromisoformat
    previous_balance = previous_update = None
    for observed_at, balance, update_time in _sqlite_rows(connection, _SQLITE_STATES.format(range=clauses), tuple(params)):
        if balance == previous_balance and update_time == previous_update:
            continue
        previous_balance, previous_update = balance, update_time
        yield (parse(observed_at + _UTC_SUFFIX), Decimal(balance),
               None if update_time is None else parse(update_time + _UTC_SUFFIX))


def _entries_after_sqlite(
    connection: Connection, account: int, asset: str, after: datetime, until: datetime | None
) -> Iterator[tuple[datetime, str, Decimal, bool]]:
    params = [account, asset, _sqlite_time(after)]
    if until is not None:
        params.append(_sqlite_time(until))
    sql = _SQLITE_ENTRIES.format(until="" if until is None else " AND time <= ?")
    parse = datetime.fromisoformat
    for time, income_type, income, known in _sqlite_rows(connection, sql, tuple(params)):
        yield parse(time + _UTC_SUFFIX), income_type, Decimal(income), bool(known)


def _sums_by_type(
    connection: Connection, account: int, asset: str, after: datetime, through: datetime | None,
    *, before: datetime | None = None,
) -> Iterable[tuple[str, bool, Decimal]]:
    """Per (income type, known_type), the exact sum of the entries with after < time ≤ through (< before).

    Summed in Python: SQLite keeps amounts as TEXT, and its sum() would go through floats.
    """
    query = select(_ENTRIES.c.income_type, _ENTRIES.c.known_type, _ENTRIES.c.income).where(
        _ENTRIES.c.account_id == _ACCOUNT, _ENTRIES.c.asset == _ASSET, _ENTRIES.c.time > _SINCE
    )
    params: dict = {"account_id": account, "asset": asset, "since": after}
    if through is not None:
        query = query.where(_ENTRIES.c.time <= _UNTIL)
        params["until"] = through
    if before is not None:
        query = query.where(_ENTRIES.c.time < bindparam("before", type_=UtcDateTime()))
        params["before"] = before
    totals: dict[tuple[str, bool], Decimal] = {}
    for income_type, known, amount in _stream(connection, query, params):
        key = (income_type, bool(known))
        totals[key] = EXACT.add(totals.get(key, ZERO), amount)
    return [(income_type, known, amount) for (income_type, known), amount in totals.items()]


def _sum(values: Iterable[Decimal]) -> Decimal:
    total = ZERO
    for value in values:
        total = EXACT.add(total, value)
    return total


def _require_aware(**values: datetime | None) -> None:
    for name, value in values.items():
        if value is not None and (value.tzinfo is None or value.utcoffset() is None):
            raise ValueError(f"{name} must be an aware datetime: attach a time zone (UTC)")


# --- renderings ------------------------------------------------------------------------------

COLUMNS = ("account", "asset", "kind", "from", "to", "opened_at", "observed_at", "opening", "closing", "change",
           "explained", "residual", "flagged", "flags")
TABLE_COLUMNS = ("account", "asset", "kind", "from", "to", "change", "explained", "residual", "flagged", "flags")
# A terminal table is aligned per block of this many rows, so it streams too.
TABLE_BLOCK = 1000


def _amount_text(value: Decimal | None) -> str:
    return "" if value is None else format(value, "f")


def explained_text(explained: Mapping[str, Decimal]) -> str:
    """`COMMISSION=-0.2 FUNDING_FEE=-2.1`: one cell for a table or CSV; empty when nothing was booked."""
    return " ".join(f"{income_type}={format(amount, 'f')}" for income_type, amount in explained.items())


def interval_record(interval: Interval) -> dict:
    """The interval as one flat row (the explained breakdown in one cell)."""
    return {
        "account": interval.account, "asset": interval.asset, "kind": interval.kind,
        "from": interval.start, "to": interval.end, "opened_at": interval.opened_at, "observed_at": interval.observed_at,
        "opening": interval.opening, "closing": interval.closing, "change": interval.change,
        "explained": explained_text(interval.explained), "residual": interval.residual,
        "flagged": interval.flagged, "flags": ",".join(interval.flags),
    }


def interval_document(interval: Interval) -> dict:
    """The interval for JSON: the breakdown as an object, flags and unknown types as lists."""
    return {
        **interval_record(interval), "explained": dict(interval.explained),
        "flags": list(interval.flags), "unknown_types": list(interval.unknown_types),
    }


def _write_intervals_csv(intervals: Iterable[Interval], stream, tz) -> int:
    """The CSV rendering, byte for byte what format_time, format(.., 'f') and explained_text give.

    Cells built here rather than through the generic writer: a year is ~170,000 rows, and the
    generic per-cell type dispatch cost three times the reconciliation itself. Speed only:
    - an interval's `from`/`opened_at`/`opening` are the previous one's `to`/`observed_at`/
      `closing` (the same objects), so their text is reused, checked by identity;
    - change and residual are computed once per row, not once per property access;
    - a UTC time shown in UTC skips the zone conversion, and isoformat() without the timespec
      keyword (several times faster) when it prints the microseconds anyway (they are not 0);
    - a breakdown of one income type (most intervals) skips the generic join;
    - a row with nothing the csv module would quote (no `,` `"` CR or LF in the label, asset,
      breakdown or flags: times, amounts and the rest never hold one) is joined by hand, three
      times faster than writerow; any other row still goes through the csv writer.
    """
    from recorder.reports.render import UTC as RENDER_UTC, format_time

    utc_out = tz is RENDER_UTC

    def time_text(value: datetime) -> str:
        if utc_out and value.tzinfo is RENDER_UTC:
            return (value.isoformat() if value.microsecond else value.isoformat(timespec="microseconds"))[:-6] + "Z"
        return format_time(value, tz)

    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(COLUMNS)
    write = stream.write
    needs_quoting = re.compile('[,"\r\n]').search
    last_names: tuple = ()
    names_plain = True
    last_end = last_observed = last_closing = None
    last_end_text = last_observed_text = last_closing_text = ""
    count = 0
    subtract = EXACT.subtract
    for i in intervals:
        start, end, opened_at, observed_at, opening, closing = (
            i.start, i.end, i.opened_at, i.observed_at, i.opening, i.closing)
        start_text = last_end_text if start is last_end else time_text(start)
        opened_text = last_observed_text if opened_at is last_observed else time_text(opened_at)
        opening_text = last_closing_text if opening is last_closing else format(opening, "f")
        end_text = "" if end is None else time_text(end)
        observed_text = "" if observed_at is None else time_text(observed_at)
        explained = i.explained
        if len(explained) == 1:
            ((income_type, amount),) = explained.items()
            explained_cell = f"{income_type}={format(amount, 'f')}"
        else:
            explained_cell = explained_text(explained)
        if closing is None:
            closing_text = change_text = residual_text = ""
        else:
            closing_text = format(closing, "f")
            change = subtract(closing, opening)
            change_text = format(change, "f")
            residual_text = format(subtract(change, _sum(explained.values())), "f")
        flags = i.flags
        account, asset = i.account, i.asset
        if (account, asset) != last_names:
            last_names = (account, asset)
            names_plain = not (needs_quoting(account) or needs_quoting(asset))
        cells = (
            account, asset, i.kind, start_text, end_text, opened_text, observed_text,
            opening_text, closing_text, change_text, explained_cell, residual_text,
            "true" if flags else "false", ",".join(flags),
        )
        if (names_plain and not needs_quoting(explained_cell) and not needs_quoting(i.kind)
                and (not flags or not needs_quoting(cells[13]))):
            write(",".join(cells) + "\n")
        else:
            writer.writerow(cells)
        last_end, last_end_text = end, end_text
        last_observed, last_observed_text = observed_at, observed_text
        last_closing, last_closing_text = closing, closing_text
        count += 1
    return count


def write_intervals(intervals: Iterable[Interval], fmt: str, stream, tz=None) -> int:
    """Render intervals as they come (table, CSV or a JSON list); returns how many were written."""
    from recorder.reports.render import UTC, _jsonable, format_time, write_table

    tz = tz or UTC
    count = 0
    if fmt == "json":
        stream.write("[")
        for interval in intervals:
            stream.write(",\n  " if count else "\n  ")
            json.dump(_jsonable(interval_document(interval)), stream, ensure_ascii=False)
            count += 1
        stream.write("\n]\n" if count else "]\n")
    elif fmt == "csv":
        count = _write_intervals_csv(intervals, stream, tz)
    elif fmt == "table":
        block: list[dict] = []
        for interval in intervals:
            block.append(interval_record(interval))
            count += 1
            if len(block) == TABLE_BLOCK:
                write_table(TABLE_COLUMNS, block, stream, tz)
                block = []
        if block or not count:
            write_table(TABLE_COLUMNS, block, stream, tz)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return count
