"""Read the recorded history: distinct states, as-of balances, diffs, change log, series, gaps.

Every function takes a Session and an account label, takes and returns aware UTC datetimes,
and returns frozen dataclasses; money stays Decimal end to end. Ranges are half-open,
`since <= t < until`, so consecutive ranges never count an event twice.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal

from sqlalchemy import Select, bindparam, extract, func, select, true, type_coerce
from sqlalchemy.orm import Session

from recorder.config import DEFAULT_INTERVAL_SECONDS
from recorder.db_types import UtcDateTime
from recorder.errors import ConfigError
from recorder.models import AMOUNT_FIELDS, POLL_FAILED, POLL_OK, STATE_FIELDS, Account, Balance, BalanceHead, Poll

UTC = timezone.utc
# A state is stale, and a stretch without a successful poll a gap, past twice the interval.
DEFAULT_TOLERANCE = timedelta(seconds=2 * DEFAULT_INTERVAL_SECONDS)
BUCKETS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
MAX_BUCKETS = 100_000

# Statements are built once, with bound parameters, and run on the session's connection:
# building an ORM statement per call cost more than the index probes themselves (~1.5 ms
# of the first as_of's 2 ms), and a constant statement hits SQLAlchemy's compiled cache.
_BALANCES = Balance.__table__
_HEADS = BalanceHead.__table__
_POLLS = Poll.__table__
_STATE_COLUMNS = (
    _BALANCES.c.asset,
    _BALANCES.c.observed_at,
    _BALANCES.c.present,
    *(_BALANCES.c[name] for name in AMOUNT_FIELDS),
    _BALANCES.c.margin_available,
    _BALANCES.c.update_time,
)
_ACCOUNT_ID = select(Account.__table__.c.id).where(Account.__table__.c.label == bindparam("label"))
_AT = bindparam("at", type_=UtcDateTime())
_LAST_OK_POLL = {
    inclusive: select(_POLLS.c.finished_at)
    .where(
        _POLLS.c.account_id == bindparam("account_id"),
        _POLLS.c.outcome == POLL_OK,
        _POLLS.c.finished_at <= _AT if inclusive else _POLLS.c.finished_at < _AT,
    )
    .order_by(_POLLS.c.finished_at.desc())
    .limit(1)
    for inclusive in (True, False)
}
_FIRST_OK_POLL = (
    select(_POLLS.c.finished_at)
    .where(_POLLS.c.account_id == bindparam("account_id"), _POLLS.c.outcome == POLL_OK, _POLLS.c.finished_at >= _AT)
    .order_by(_POLLS.c.finished_at)
    .limit(1)
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
    latest = (
        select(older)
        .where(older.c.account_id == _HEADS.c.account_id, older.c.asset == _HEADS.c.asset, state_bound)
        .order_by(older.c.observed_at.desc())
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


_SNAPSHOTS = {
    (dialect, inclusive, filtered): _snapshot_query(dialect, inclusive, filtered)
    for dialect in ("postgresql", "sqlite")
    for inclusive in (True, False)
    for filtered in (True, False)
}


@dataclass(frozen=True)
class AssetState:
    """One recorded state of an asset; present=False marks it vanished (amounts None)."""

    asset: str
    observed_at: datetime
    present: bool
    balance: Decimal | None
    cross_wallet_balance: Decimal | None
    cross_un_pnl: Decimal | None
    available_balance: Decimal | None
    max_withdraw_amount: Decimal | None
    margin_available: bool | None
    update_time: datetime | None

    def amount(self, name: str) -> Decimal | None:
        """One amount field by name."""
        if name not in AMOUNT_FIELDS:
            raise ValueError(f"{name!r} is not an amount field: {', '.join(AMOUNT_FIELDS)}")
        return getattr(self, name)


def find_account(session: Session, label: str) -> Account:
    """The account with this label; ConfigError naming the known labels otherwise."""
    account = session.scalars(select(Account).where(Account.label == label)).one_or_none()
    if account is None:
        known = session.scalars(select(Account.label).order_by(Account.label)).all()
        hint = f"recorded accounts: {', '.join(known)}" if known else "the database has no recorded account yet"
        raise ConfigError(f"no account {label!r} in the database; {hint}")
    return account


def _account_id(session: Session, label: str) -> int:
    account_id = session.connection().execute(_ACCOUNT_ID, {"label": label}).scalar()
    if account_id is None:
        find_account(session, label)  # raises, naming the known accounts
    return account_id


def list_assets(session: Session, label: str) -> list[str]:
    """Every asset the account ever had, sorted."""
    account = find_account(session, label)
    return list(
        session.scalars(
            select(BalanceHead.asset).where(BalanceHead.account_id == account.id).order_by(BalanceHead.asset)
        )
    )


def history(
    session: Session,
    account: str,
    *,
    assets: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[AssetState]:
    """Every recorded distinct state (vanished markers included), oldest first, in [since, until)."""
    account_id = _account_id(session, account)
    query = select(*_STATE_COLUMNS).where(_BALANCES.c.account_id == account_id)
    if assets:
        query = query.where(_BALANCES.c.asset.in_(list(assets)))
    if since is not None:
        query = query.where(_BALANCES.c.observed_at >= since)
    if until is not None:
        query = query.where(_BALANCES.c.observed_at < until)
    query = query.order_by(_BALANCES.c.observed_at, _BALANCES.c.asset)
    return [AssetState(*row) for row in session.connection().execute(query)]


# --- as of an instant --------------------------------------------------------------------


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
    'vanished' (last seen absent from the response), 'unobserved' (no state recorded yet).
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
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> AsOf:
    """Each asset's last successfully observed state at or before `at`, and how stale it is.

    One index probe per asset the account ever had, plus one for the last successful
    poll: the cost does not grow with the length of the history.
    """
    return _as_of(session, account, at, assets, tolerance)


def _as_of(session: Session, label: str, at: datetime, assets: Sequence[str] | None, tolerance: timedelta) -> AsOf:
    _require_aware(at)
    _, last_poll_at, states = _snapshot(session, label, at, assets, inclusive=True)
    freshness = Freshness(at, last_poll_at, tolerance)
    positions = tuple(
        Position(asset, state, _position_status(state, freshness)) for asset, state in sorted(states.items())
    )
    return AsOf(label, freshness, positions)


def _position_status(state: AssetState | None, freshness: Freshness) -> str:
    if state is None:
        return "unobserved"
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


def _last_ok_poll(session: Session, account_id: int, at: datetime, *, inclusive: bool) -> datetime | None:
    return session.connection().execute(_LAST_OK_POLL[inclusive], {"account_id": account_id, "at": at}).scalar()


def _first_ok_poll(session: Session, account_id: int, at: datetime) -> datetime | None:
    return session.connection().execute(_FIRST_OK_POLL, {"account_id": account_id, "at": at}).scalar()


# --- diff --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AssetDiff:
    """One asset between two instants.

    status: 'appeared', 'vanished', 'changed' or 'unchanged'. `before`/`after` are None
    where the asset was absent (never seen, or vanished); `change` holds after - before per
    amount field, and is None unless the asset was present at both ends.
    """

    asset: str
    before: AssetState | None
    after: AssetState | None
    status: str
    change: Mapping[str, Decimal] | None


@dataclass(frozen=True)
class Diff:
    """Every asset's change between two instants, with the poll evidence at each end."""

    account: str
    start: Freshness
    end: Freshness
    assets: tuple[AssetDiff, ...]


def diff(
    session: Session,
    account: str,
    start: datetime,
    end: datetime,
    *,
    assets: Sequence[str] | None = None,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> Diff:
    """Per asset, the state at `start`, at `end` and the exact change of every amount (end - start)."""
    before = _as_of(session, account, start, assets, tolerance)
    after = _as_of(session, account, end, assets, tolerance)
    then = {p.asset: _present(p.state) for p in before.positions}
    now = {p.asset: _present(p.state) for p in after.positions}
    rows = []
    for asset in sorted(then.keys() | now.keys()):
        old, new = then.get(asset), now.get(asset)
        if old is None and new is None:
            continue
        rows.append(AssetDiff(asset, old, new, _diff_status(old, new), _delta(old, new)))
    return Diff(account, before.freshness, after.freshness, tuple(rows))


def _present(state: AssetState | None) -> AssetState | None:
    return state if state is not None and state.present else None


def _diff_status(old: AssetState | None, new: AssetState | None) -> str:
    if old is None:
        return "appeared"
    if new is None:
        return "vanished"
    same = all(getattr(old, name) == getattr(new, name) for name in STATE_FIELDS)
    return "unchanged" if same else "changed"


def _delta(old: AssetState | None, new: AssetState | None) -> dict[str, Decimal] | None:
    if old is None or new is None or not old.present or not new.present:
        return None
    # Decimal subtraction is exact here: the default context's 28 digits cover Binance's
    # amounts (at most 20 integer + 8 fraction digits).
    return {name: new.amount(name) - old.amount(name) for name in AMOUNT_FIELDS}


# --- change log --------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One recorded change of an asset: its previous record, the new one and the delta.

    kind: 'appeared' (first seen, or back after vanishing), 'changed', or 'vanished'.
    `delta` (current - previous per amount field) is None unless both are present.
    """

    asset: str
    observed_at: datetime
    kind: str
    previous: AssetState | None
    current: AssetState
    delta: Mapping[str, Decimal] | None


def changes(
    session: Session,
    account: str,
    *,
    assets: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[Change]:
    """Every change event in [since, until), oldest first, with the previous value and delta."""
    previous: dict[str, AssetState | None] = {}
    if since is not None:
        previous = _snapshot(session, account, since, assets, inclusive=False)[2]
    result = []
    for state in history(session, account, assets=assets, since=since, until=until):
        before = previous.get(state.asset)
        if not state.present:
            kind = "vanished"
        elif before is None or not before.present:
            kind = "appeared"
        else:
            kind = "changed"
        result.append(Change(state.asset, state.observed_at, kind, before, state, _delta(before, state)))
        previous[state.asset] = state
    return result


# --- series ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesPoint:
    """One bucket [start, end): the field's value at its end, carried forward from the last change.

    status: 'ok'; 'gap' (the last successful poll before the end is older than the
    tolerance: value None); 'absent' (the asset had vanished); 'unobserved' (not seen yet).
    """

    start: datetime
    end: datetime
    value: Decimal | None
    observed_at: datetime | None
    status: str


def series(
    session: Session,
    account: str,
    asset: str,
    field: str,
    since: datetime,
    until: datetime,
    *,
    every: str = "hour",
    tolerance: timedelta = DEFAULT_TOLERANCE,
    tz: tzinfo = UTC,
) -> list[SeriesPoint]:
    """The value of `field` at the end of each minute, hour or day bucket of [since, until).

    Minute and hour buckets are aligned in UTC; day buckets start at midnight in `tz`
    (default UTC). The value of a bucket is the last state recorded strictly before its end
    (or before `until`, for a last bucket that `until` cuts short).
    """
    if field not in AMOUNT_FIELDS:
        raise ValueError(f"{field!r} is not an amount field: {', '.join(AMOUNT_FIELDS)}")
    if every not in BUCKETS:
        raise ValueError(f"every must be one of {', '.join(BUCKETS)}, not {every!r}")
    account_id = _account_id(session, account)
    buckets = _buckets(since, until, every, tz)
    gap_list = gaps(session, account, since=since, until=until, tolerance=tolerance)
    gap_starts = [gap.start for gap in gap_list]
    probe = _SERIES_PROBE[field]
    connection = session.connection()
    first_poll = _first_ok_poll(session, account_id, datetime(1970, 1, 1, tzinfo=UTC))
    points = []
    for start, end in buckets:
        cut = min(end, until)
        # One index seek per bucket: the cost follows the number of buckets, not of changes.
        found = connection.execute(probe, {"account_id": account_id, "asset": asset, "at": cut}).first()
        if first_poll is None or cut <= first_poll or found is None:
            points.append(SeriesPoint(start, end, None, None, "unobserved"))
            continue
        observed_at, present, value = found
        if _inside_gap(gap_list, gap_starts, cut, tolerance):
            points.append(SeriesPoint(start, end, None, observed_at, "gap"))
        elif not present:
            points.append(SeriesPoint(start, end, None, observed_at, "absent"))
        else:
            points.append(SeriesPoint(start, end, value, observed_at, "ok"))
    return points


_SERIES_PROBE = {
    name: select(_BALANCES.c.observed_at, _BALANCES.c.present, _BALANCES.c[name])
    .where(
        _BALANCES.c.account_id == bindparam("account_id"),
        _BALANCES.c.asset == bindparam("asset"),
        _BALANCES.c.observed_at < _AT,
    )
    .order_by(_BALANCES.c.observed_at.desc())
    .limit(1)
    for name in AMOUNT_FIELDS
}


def _inside_gap(gap_list: Sequence[Gap], starts: Sequence[datetime], at: datetime, tolerance: timedelta) -> bool:
    # The last gap starting before `at`: `at` is stale when it lies past start + tolerance
    # and no later than the gap's end (the next successful poll is only known from then on).
    index = bisect_left(starts, at) - 1
    if index < 0:
        return False
    gap = gap_list[index]
    return gap.start + tolerance < at <= gap.end


def _buckets(since: datetime, until: datetime, every: str, tz: tzinfo) -> list[tuple[datetime, datetime]]:
    _require_aware(since)
    _require_aware(until)
    if until <= since:
        return []
    step = BUCKETS[every]
    if every == "day":
        local = since.astimezone(tz)
        day = local.date()
        edges = []
        while True:
            edge = datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)
            edges.append(edge)
            if edge >= until:
                break
            day += timedelta(days=1)
            if len(edges) > MAX_BUCKETS:
                raise ValueError(f"more than {MAX_BUCKETS} buckets: use a shorter range or a larger bucket")
    else:
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        first = epoch + ((since - epoch) // step) * step
        count = -((first - until) // step)
        if count > MAX_BUCKETS:
            raise ValueError(f"more than {MAX_BUCKETS} buckets: use a shorter range or a larger bucket")
        edges = [first + i * step for i in range(count + 1)]
    return [(start, end) for start, end in zip(edges, edges[1:]) if end > since]


# --- gaps --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gap:
    """A stretch longer than the tolerance without a successful poll.

    `start` is the last successful poll before it (or `since` when there was none), `end`
    the next successful poll (or `until` when there is none yet: open_end). `failures`
    counts the failed polls inside, by error class.
    """

    start: datetime
    end: datetime
    failures: Mapping[str, int]
    open_end: bool = False

    @property
    def seconds(self) -> float:
        """Length of the gap in seconds."""
        return (self.end - self.start).total_seconds()


def gaps(
    session: Session,
    account: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> list[Gap]:
    """Stretches without a successful poll longer than `tolerance` that overlap [since, until)."""
    account_id = _account_id(session, account)
    # Successful polls just outside the range: a gap that crosses a bound keeps its true ends.
    before = _last_ok_poll(session, account_id, since, inclusive=False) if since is not None else None
    after = _first_ok_poll(session, account_id, until) if until is not None else None
    spans = [(start, end, False) for start, end in _long_intervals(session, account_id, before or since, after or until, tolerance)]
    if since is not None and before is None:
        # Nothing succeeded before `since`: from `since` to the first successful poll (or to
        # `until`, when there is none at all) is a gap too.
        first = _first_ok_poll(session, account_id, since)
        edge = first if first is not None else until
        if edge is not None and edge - since > tolerance:
            spans.insert(0, (since, edge, first is None))
    if until is not None and after is None:
        last = _last_ok_poll(session, account_id, until, inclusive=False)
        if last is not None and until - last > tolerance:
            spans.append((last, until, True))
    if not spans:
        return []
    failures = _failures(session, account_id, spans[0][0], spans[-1][1])
    times = [at for at, _ in failures]
    result = []
    for start, end, open_end in spans:
        inside = failures[bisect_right(times, start) : bisect_left(times, end)]
        result.append(Gap(start, end, dict(sorted(Counter(name for _, name in inside).items())), open_end))
    return result


def _long_intervals(
    session: Session, account_id: int, low: datetime | None, high: datetime | None, tolerance: timedelta
) -> list[tuple[datetime, datetime]]:
    """Consecutive successful polls in [low, high] further apart than the tolerance."""
    at = Poll.finished_at
    previous = func.lag(at).over(order_by=at)
    inner = select(at.label("at"), type_coerce(previous, UtcDateTime()).label("previous")).where(
        Poll.account_id == account_id, Poll.outcome == POLL_OK
    )
    if low is not None:
        inner = inner.where(at >= low)
    if high is not None:
        inner = inner.where(at <= high)
    pairs = inner.subquery()
    # The window runs in the database so a year of polls never crosses into Python; the
    # coarse filter (SQLite's julianday keeps milliseconds) is re-checked exactly below.
    if session.get_bind().dialect.name == "sqlite":
        span = (func.julianday(pairs.c.at) - func.julianday(pairs.c.previous)) * 86400.0
    else:
        span = extract("epoch", pairs.c.at - pairs.c.previous)
    query = select(pairs.c.previous, pairs.c.at).where(span > tolerance.total_seconds() - 0.002).order_by(pairs.c.at)
    return [(start, end) for start, end in session.connection().execute(query) if end - start > tolerance]


def _failures(session: Session, account_id: int, low: datetime, high: datetime) -> list[tuple[datetime, str]]:
    query = (
        select(Poll.finished_at, Poll.error_class)
        .where(Poll.account_id == account_id, Poll.outcome == POLL_FAILED, Poll.finished_at >= low, Poll.finished_at <= high)
        .order_by(Poll.finished_at)
    )
    return [(at, name or "unknown") for at, name in session.connection().execute(query)]


def _require_aware(value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("queries take aware datetimes: attach a time zone (UTC)")
