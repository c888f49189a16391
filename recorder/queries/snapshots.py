"""Every asset's state at one instant, with the poll evidence for it: as_of, AsOf, Position, Freshness.

Also the snapshot query behind it, which the change log reuses for the states just before a range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, bindparam, select, true
from sqlalchemy.orm import Session

from recorder.models import POLL_OK, Account
from recorder.queries.states import (
    DEFAULT_TOLERANCE,
    _AT,
    _BALANCES,
    _HEADS,
    _POLLS,
    _STATE_COLUMNS,
    AssetState,
    _account_id,
    _due,
    _last_ok_poll,
    _require_aware,
)


def _snapshot_query(dialect: str, inclusive: bool, filtered: bool) -> Select:
    """One row per head of the account :label: its last state at (or before) :at, if any,
    and the last successful poll at (or before) :at.

    One round trip; per asset one seek on (account_id, asset, observed_at), plus one on the
    polls key (account_id, finished_at), stepping back over any failed polls: the cost does
    not grow with the history.
    PostgreSQL takes the probe as a LATERAL join; SQLite, which has no LATERAL, as a
    correlated scalar subquery on the rowid.
    """
    accounts = Account.__table__
    older = _BALANCES.alias("older")
    state_bound = older.c.observed_at <= _AT if inclusive else older.c.observed_at < _AT
    poll_bound = _POLLS.c.finished_at <= _AT if inclusive else _POLLS.c.finished_at < _AT
    last_poll = (
        select(_POLLS.c.finished_at)
        .where(_POLLS.c.account_id == accounts.c.id, _POLLS.c.outcome == POLL_OK, poll_bound)
        .order_by(_POLLS.c.finished_at.desc())
        .limit(1)
        .correlate(accounts)
        .scalar_subquery()
    )
    # Ordering by asset too (a constant here) spells out the (account_id, asset, observed_at)
    # key: without it PostgreSQL's planner may walk (account_id, observed_at) backwards and
    # filter a busy account's other assets, ~0.5 s on a year of data instead of one seek.
    latest = (
        select(older)
        .where(older.c.account_id == _HEADS.c.account_id, older.c.asset == _HEADS.c.asset, state_bound)
        .order_by(older.c.asset.desc(), older.c.observed_at.desc())
        .limit(1)
    )
    heads = accounts.join(_HEADS, _HEADS.c.account_id == accounts.c.id)
    if dialect == "postgresql":
        found = latest.lateral("latest")
        joined = heads.outerjoin(found, true())
    else:
        found = _BALANCES
        probe = latest.with_only_columns(older.c.id).correlate(_HEADS).scalar_subquery()
        joined = heads.outerjoin(_BALANCES, _BALANCES.c.id == probe)
    columns = [found.c[column.name] for column in _STATE_COLUMNS[1:]]
    query = (
        select(accounts.c.id, _HEADS.c.asset, *columns, last_poll.label("last_poll_at"))
        .select_from(joined)
        .where(accounts.c.label == bindparam("label"))
    )
    if filtered:
        query = query.where(_HEADS.c.asset.in_(bindparam("assets", expanding=True)))
    return query


# Built once, like the shared statements in queries/states.py (which says why).
_SNAPSHOTS = {
    (dialect, inclusive, filtered): _snapshot_query(dialect, inclusive, filtered)
    for dialect in ("postgresql", "sqlite")
    for inclusive in (True, False)
    for filtered in (True, False)
}


@dataclass(frozen=True)
class Freshness:
    """What the poll log proves about an instant: the last successful poll at or before it."""

    at: datetime
    last_poll_at: datetime | None
    tolerance: timedelta

    @property
    def stale_seconds(self) -> float | None:
        """Seconds since the last successful poll at or before `at`; None before the first one."""
        return None if self.last_poll_at is None else (self.at - self.last_poll_at).total_seconds()

    @property
    def in_gap(self) -> bool:
        """True when the last successful poll is older than the tolerance: values may be out of date."""
        return self.last_poll_at is not None and self.at - self.last_poll_at > self.tolerance

    @property
    def status(self) -> str:
        """'ok', 'gap', or 'before_first_poll' (nothing was recorded yet)."""
        if self.last_poll_at is None:
            return "before_first_poll"
        return "gap" if self.in_gap else "ok"


@dataclass(frozen=True)
class Position:
    """One asset at an instant: its last recorded state at or before it, and what that means.

    status: 'ok' (observed, fresh), 'stale' (observed, but the instant is inside a gap),
    'vanished' (last seen absent from the response), 'unobserved' (no state recorded for it
    yet, though polls were), 'before_first_poll' (the instant precedes every successful poll).
    """

    asset: str
    state: AssetState | None
    status: str


@dataclass(frozen=True)
class AsOf:
    """Every asset's state at one instant, with the poll evidence for it."""

    account: str
    freshness: Freshness
    positions: tuple[Position, ...]


def as_of(
    session: Session,
    account: str,
    at: datetime,
    *,
    assets: Sequence[str] | None = None,
    tolerance: timedelta | None = None,
) -> AsOf:
    """Each asset's last successfully observed state at or before `at`, and how stale it is.

    Stale means later than the schedule the recorder stored allowed after the last
    successful poll (see recorder.coverage); `tolerance` overrides that with a fixed span.
    One index probe per asset the account ever had, plus one for the last successful
    poll and one for the schedule: the cost does not grow with the length of the history.
    """
    return _as_of(session, account, at, assets, tolerance)


def _as_of(
    session: Session, label: str, at: datetime, assets: Sequence[str] | None, tolerance: timedelta | None
) -> AsOf:
    _require_aware(at)
    account_id, last_poll_at, states = _snapshot(session, label, at, assets, inclusive=True)
    if tolerance is None:
        # The span the stored schedule allowed after the last successful poll.
        tolerance = DEFAULT_TOLERANCE if last_poll_at is None else _due(session, account_id, last_poll_at, at) - last_poll_at
    freshness = Freshness(at, last_poll_at, tolerance)
    positions = tuple(
        Position(asset, state, _position_status(state, freshness)) for asset, state in sorted(states.items())
    )
    return AsOf(label, freshness, positions)


def _position_status(state: AssetState | None, freshness: Freshness) -> str:
    if state is None:
        return "before_first_poll" if freshness.last_poll_at is None else "unobserved"
    if not state.present:
        return "vanished"
    return "stale" if freshness.in_gap else "ok"


def _snapshot(
    session: Session, label: str, at: datetime, assets: Sequence[str] | None, *, inclusive: bool
) -> tuple[int, datetime | None, dict[str, AssetState | None]]:
    """The account's id, its last successful poll and, per asset it ever had, its last state
    at (or strictly before) `at`: None for an asset not seen yet."""
    connection = session.connection()
    dialect = "postgresql" if connection.dialect.name == "postgresql" else "sqlite"
    params: dict[str, object] = {"label": label, "at": at}
    if assets:
        params["assets"] = list(assets)
    rows = connection.execute(_SNAPSHOTS[(dialect, inclusive, bool(assets))], params).all()
    if not rows:
        # No asset recorded (or none of those asked for): still tell an unknown account apart.
        account_id = _account_id(session, label)
        return account_id, _last_ok_poll(session, account_id, at, inclusive=inclusive), {}
    states: dict[str, AssetState | None] = {}
    for row in rows:
        account_id, asset, observed_at = row[0], row[1], row[2]
        states[asset] = None if observed_at is None else AssetState(asset, *row[2:-1])
    return rows[0][0], rows[0][-1], states
