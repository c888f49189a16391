"""Derived (backfilled) wallet balances for the period reports: as-of probes, spans, entry sums, buckets.

`recorder backfill` stores in `derived_balances` the wallet balance before an asset's first
observation, walked back from it through the income ledger. A row holds from its `at` on, until
the next derived row or the asset's first observed state (the anchor). These reads are apart
from every observed query on purpose: a caller asks for derived data by name and labels it so.

Within one millisecond several rows can share `at`: backfill inserts them newest entry first,
so the row with the lowest id there is the balance after the last of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, bindparam, func, select

from recorder.db_types import UtcDateTime
from recorder.models import Balance, DerivedBalance, IncomeEntry
from recorder.queries.diffs import EXACT

_DERIVED = DerivedBalance.__table__
_BALANCES = Balance.__table__
_ENTRIES = IncomeEntry.__table__
_ACCOUNT = bindparam("account_id")
_ASSET = bindparam("asset")
_AT = bindparam("at", type_=UtcDateTime())


@dataclass(frozen=True)
class DerivedSpan:
    """One asset's derived stretch: balances from `start` up to its first observation.

    `start` is the span's earliest derived balance; the span ends where the anchor, the asset's
    first observed state, takes over (`anchor_observed_at`). Entries up to the anchor's update
    time are in the anchor's balance, so they are the ones the span was walked back through.
    """

    asset: str
    start: datetime
    anchor_observed_at: datetime
    anchor_update_time: datetime
    anchor_balance: Decimal
    rows: int


@dataclass(frozen=True)
class DerivedPoint:
    """A derived balance as of some instant: `balance`, held from `at` on."""

    at: datetime
    balance: Decimal


def spans(connection: Connection, account_id: int) -> dict[str, DerivedSpan]:
    """Per asset with derived balances, its span (one aggregate over the derived rows)."""
    grouped = (
        select(_DERIVED.c.asset, _DERIVED.c.anchor_balance_id, func.min(_DERIVED.c.at).label("start"),
               func.count().label("rows"))
        .where(_DERIVED.c.account_id == _ACCOUNT)
        .group_by(_DERIVED.c.asset, _DERIVED.c.anchor_balance_id)
        .subquery()
    )
    query = (
        select(grouped.c.asset, grouped.c.start, grouped.c.rows, _BALANCES.c.observed_at, _BALANCES.c.update_time,
               _BALANCES.c.balance)
        .join(_BALANCES, _BALANCES.c.id == grouped.c.anchor_balance_id)
        .order_by(grouped.c.asset)
    )
    return {
        row.asset: DerivedSpan(row.asset, row.start, row.observed_at, row.update_time, row.balance, row.rows)
        for row in connection.execute(query, {"account_id": account_id})
    }


_BEFORE = (
    select(_DERIVED.c.at, _DERIVED.c.balance)
    .where(_DERIVED.c.account_id == _ACCOUNT, _DERIVED.c.asset == _ASSET, _DERIVED.c.at < _AT)
    .order_by(_DERIVED.c.at.desc(), _DERIVED.c.id.asc())
    .limit(1)
)
_OPENING_AT = (
    select(_DERIVED.c.at, _DERIVED.c.balance)
    .where(_DERIVED.c.account_id == _ACCOUNT, _DERIVED.c.asset == _ASSET, _DERIVED.c.at == _AT,
           _DERIVED.c.income_entry_id.is_(None))
    .limit(1)
)


def as_of(connection: Connection, account_id: int, span: DerivedSpan, at: datetime) -> DerivedPoint | None:
    """The derived balance in force at `at`, by the statement's rule (the last row strictly before it).

    The span's opening row (no entry) holds from its own instant, so the start of the span has a
    balance too. None before the span and from the first observation on (observed data rules there).
    """
    if at > span.anchor_observed_at:
        return None
    params = {"account_id": account_id, "asset": span.asset, "at": at}
    row = connection.execute(_BEFORE, params).first() or connection.execute(_OPENING_AT, params).first()
    return None if row is None else DerivedPoint(row.at, row.balance)


def sums_by_type(
    connection: Connection, account_id: int, asset: str, since: datetime, until: datetime, through: datetime
) -> dict[str, tuple[bool, Decimal]]:
    """Per income type, (known when stored, exact sum) of the entries with since <= time < until, time <= through.

    `through` is the anchor's update time: later entries were never walked into the derived span.
    Summed in Python: SQLite keeps amounts as TEXT, and its sum() would go through floats.
    """
    query = select(_ENTRIES.c.income_type, _ENTRIES.c.known_type, _ENTRIES.c.income).where(
        _ENTRIES.c.account_id == _ACCOUNT, _ENTRIES.c.asset == _ASSET,
        _ENTRIES.c.time >= bindparam("since", type_=UtcDateTime()),
        _ENTRIES.c.time < bindparam("until", type_=UtcDateTime()),
        _ENTRIES.c.time <= bindparam("through", type_=UtcDateTime()),
    )
    totals: dict[str, tuple[bool, Decimal]] = {}
    params = {"account_id": account_id, "asset": asset, "since": since, "until": until, "through": through}
    for income_type, known, amount in connection.execute(query, params):
        was_known, total = totals.get(income_type, (True, Decimal(0)))
        totals[income_type] = (was_known and bool(known), EXACT.add(total, amount))
    return dict(sorted(totals.items()))


def points(connection: Connection, account_id: int, asset: str, since: datetime, until: datetime) -> Iterator[DerivedPoint]:
    """The derived balances with `at` in [since, until), oldest first, streamed."""
    query = (
        select(_DERIVED.c.at, _DERIVED.c.balance)
        .where(_DERIVED.c.account_id == _ACCOUNT, _DERIVED.c.asset == _ASSET,
               _DERIVED.c.at >= bindparam("since", type_=UtcDateTime()),
               _DERIVED.c.at < bindparam("until", type_=UtcDateTime()))
        # Within a millisecond the last-inserted row follows the earliest entry: it comes first.
        .order_by(_DERIVED.c.at, _DERIVED.c.id.desc())
    )
    result = connection.execution_options(stream_results=True, yield_per=2000).execute(
        query, {"account_id": account_id, "asset": asset, "since": since, "until": until})
    try:
        for row in result:
            yield DerivedPoint(row.at, row.balance)
    finally:
        result.close()
