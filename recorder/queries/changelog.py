"""The change log: every recorded change of an asset (Change), with its previous state and delta."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from operator import attrgetter
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from recorder.models import STATE_FIELDS
from recorder.queries.diffs import _delta
from recorder.queries.snapshots import _snapshot
from recorder.queries.states import _BALANCES, STREAM_ROWS, AssetState, _account_id, iter_history

_FIELDS = ("present", *STATE_FIELDS)
# One attrgetter call per record: `changes` runs this on every row of a long history.
_VALUES = attrgetter(*_FIELDS)
_ABSENT = (False, *(None for _ in STATE_FIELDS))


@dataclass(frozen=True)
class Change:
    """One recorded change of an asset: its previous record, the new one and the delta.

    kind: 'appeared' (first seen, or back after vanishing), 'changed', or 'vanished'.
    `delta` (current - previous per amount field) is None unless both are present.
    `changed` names every field that differs from the previous record, in schema order
    ('present' first when the asset appeared or vanished; no previous record counts as absent):
    a change of `update_time` alone shows as ('update_time',).
    """

    asset: str
    observed_at: datetime
    kind: str
    previous: AssetState | None
    current: AssetState
    delta: Mapping[str, Decimal] | None
    changed: tuple[str, ...] = ()


def changes(
    session: Session,
    account: str,
    *,
    assets: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[Change]:
    """Every change event in [since, until), oldest first, with the previous value and delta."""
    return list(iter_changes(session, account, assets=assets, since=since, until=until))


def iter_changes(
    session: Session,
    account: str,
    *,
    assets: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Iterator[Change]:
    """changes as they are read: constant memory (one previous state per asset), any range."""
    previous: dict[str, AssetState | None] = {}
    if since is not None:
        previous = _snapshot(session, account, since, assets, inclusive=False)[2]
    states = iter_history(session, account, assets=assets, since=since, until=until)
    return _changes(states, previous)


def _changes(states: Iterator[AssetState], previous: dict[str, AssetState | None]) -> Iterator[Change]:
    for state in states:
        before = previous.get(state.asset)
        if not state.present:
            kind = "vanished"
        elif before is None or not before.present:
            kind = "appeared"
        else:
            kind = "changed"
        yield Change(state.asset, state.observed_at, kind, before, state, _delta(before, state),
                     changed_fields(before, state))
        previous[state.asset] = state


def changed_fields(before: AssetState | None, after: AssetState | None) -> tuple[str, ...]:
    """The fields that differ between two records of an asset; None counts as absent."""
    old = _ABSENT if before is None else _VALUES(before)
    new = _ABSENT if after is None else _VALUES(after)
    # Equal Decimals are still compared by text: 10.0 == 10.00 as numbers, but Binance sent
    # another text and the row exists for it.
    return tuple(
        name for name, a, b in zip(_FIELDS, old, new)
        if a != b or (a.__class__ is Decimal and str(a) != str(b))
    )


def iter_changes_recorded(
    session: Session,
    account: str,
    *,
    after_id: int,
    through_id: int,
    assets: Sequence[str] | None = None,
) -> Iterator[Change]:
    """The change events of the balances rows stored with an id in (after_id, through_id], oldest first.

    For an incremental export: ids follow the order rows were stored, so a state that
    arrived late (replayed from the spool, older than rows already exported) is in the next
    batch exactly once. Each event's previous state is the asset's latest state observed
    before it, found by one index probe per row, as the balance_changes view does.
    """
    account_id = _account_id(session, account)
    current, previous = _BALANCES.alias("b"), _BALANCES.alias("p")
    before = (
        select(_BALANCES.c.id)
        .where(
            _BALANCES.c.account_id == current.c.account_id,
            _BALANCES.c.asset == current.c.asset,
            _BALANCES.c.observed_at < current.c.observed_at,
        )
        .order_by(_BALANCES.c.observed_at.desc())
        .limit(1)
        .correlate(current)
        .scalar_subquery()
    )
    fields = ("asset", "observed_at", "present", *STATE_FIELDS)
    query = (
        select(*(current.c[name] for name in fields), *(previous.c[name] for name in fields))
        .select_from(current.outerjoin(previous, previous.c.id == before))
        .where(current.c.account_id == account_id, current.c.id > after_id, current.c.id <= through_id)
        .order_by(current.c.observed_at, current.c.asset)
    )
    if assets:
        query = query.where(current.c.asset.in_(list(assets)))
    connection = session.connection().execution_options(stream_results=True, yield_per=STREAM_ROWS)
    return _recorded(connection.execute(query), len(fields))


def _recorded(result: Any, width: int) -> Iterator[Change]:
    with result:
        for row in result:
            state = AssetState(*row[:width])
            before = AssetState(*row[width:]) if row[width] is not None else None
            yield from _changes(iter((state,)), {state.asset: before})
