"""What the poll log covers: the schedule each account is polled on, and the gaps in it.

A gap is a fact recorded by the writer, not an opinion of the reader: the recorder stores
the interval it polls at (`poll_schedules`), and every successful poll that arrives later
than the schedule allowed stores the gap it ends (`poll_gaps`) in the poll's transaction.
Readers then judge staleness by the schedule in force, whatever their own environment says,
and list gaps without scanning every poll.

The rule: after a successful poll at t (its finished_at, the poll's key), the next one is
due by t + tolerance, where tolerance = 1.5 x the interval of the schedule in force at t.
A single missed or failed poll puts the next success at ~2 intervals, past the tolerance;
half an interval of slack either way absorbs scheduler and HTTP jitter. A schedule declared
after t (a restarted recorder) polls at once and promises its own cadence, so the deadline
is also at most its start + its tolerance. Accounts with no declared schedule are judged by
the default interval (60 s, `recorder run`'s default and a cron job's minute).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, delete, func, insert, select

from recorder.config import DEFAULT_INTERVAL_SECONDS
from recorder.db_types import UtcDateTime
from recorder.prepared import Prepared
from recorder.tables import POLL_OK, poll_gaps, poll_schedules, polls

_POLLS, _SCHEDULES, _GAPS = polls, poll_schedules, poll_gaps


@dataclass(frozen=True)
class Schedule:
    """An interval declared from `started_at` on (None: the default, before any declaration)."""

    started_at: datetime | None
    interval: timedelta
    tolerance: timedelta
    source: str = "default"


def tolerance_ms_for(interval_ms: int) -> int:
    """The gap tolerance for an interval: 1.5 x, so one missed poll is a gap and jitter is not."""
    return interval_ms * 3 // 2


DEFAULT_INTERVAL_MS = round(DEFAULT_INTERVAL_SECONDS * 1000)
DEFAULT_SCHEDULE = Schedule(
    None,
    timedelta(milliseconds=DEFAULT_INTERVAL_MS),
    timedelta(milliseconds=tolerance_ms_for(DEFAULT_INTERVAL_MS)),
)

_ACCOUNT = bindparam("account_id")
_AT = bindparam("at", type_=UtcDateTime())
_LOW = bindparam("low", type_=UtcDateTime())
_HIGH = bindparam("high", type_=UtcDateTime())

# Built once (see recorder.store for why). The hot path asks one question per successful
# poll: the previous and the next successful poll (the next exists only when a poll arrives
# out of order) and the latest schedule; the gap needs nothing more unless a schedule was
# declared since the previous poll.
_IN_FORCE = (
    select(_SCHEDULES.c.started_at, _SCHEDULES.c.tolerance_ms)
    .where(_SCHEDULES.c.account_id == _ACCOUNT, _SCHEDULES.c.started_at <= _AT)
    .order_by(_SCHEDULES.c.started_at.desc())
    .limit(1)
    .subquery()
)
_NEIGHBOURS = Prepared(select(
    select(_POLLS.c.finished_at)
    .where(_POLLS.c.account_id == _ACCOUNT, _POLLS.c.outcome == POLL_OK, _POLLS.c.finished_at < _AT)
    .order_by(_POLLS.c.finished_at.desc())
    .limit(1)
    .scalar_subquery()
    .label("previous"),
    select(_POLLS.c.finished_at)
    .where(_POLLS.c.account_id == _ACCOUNT, _POLLS.c.outcome == POLL_OK, _POLLS.c.finished_at > _AT)
    .order_by(_POLLS.c.finished_at)
    .limit(1)
    .scalar_subquery()
    .label("next"),
    select(_IN_FORCE.c.started_at).scalar_subquery().label("schedule_at"),
    select(_IN_FORCE.c.tolerance_ms).scalar_subquery().label("tolerance_ms"),
))
_SCHEDULES_OVER = (
    select(_SCHEDULES.c.started_at, _SCHEDULES.c.interval_ms, _SCHEDULES.c.tolerance_ms, _SCHEDULES.c.source)
    .where(
        _SCHEDULES.c.account_id == _ACCOUNT,
        _SCHEDULES.c.started_at <= _HIGH,
        _SCHEDULES.c.started_at
        >= func.coalesce(
            select(func.max(_SCHEDULES.c.started_at))
            .where(_SCHEDULES.c.account_id == _ACCOUNT, _SCHEDULES.c.started_at <= _LOW)
            .scalar_subquery(),
            _LOW,
        ),
    )
    .order_by(_SCHEDULES.c.started_at)
)
_LATEST_SCHEDULE = (
    select(_SCHEDULES.c.interval_ms, _SCHEDULES.c.tolerance_ms)
    .where(_SCHEDULES.c.account_id == _ACCOUNT)
    .order_by(_SCHEDULES.c.started_at.desc())
    .limit(1)
)
_INSERT_GAP = insert(_GAPS)
_DELETE_GAP = delete(_GAPS).where(_GAPS.c.account_id == _ACCOUNT, _GAPS.c.end_at == _AT)


def declare_schedule(connection: Connection, account_id: int, interval_seconds: float, *, source: str, at: datetime) -> bool:
    """Record that the account is polled every `interval_seconds` from `at` on; False when already so."""
    interval_ms = round(interval_seconds * 1000)
    tolerance_ms = tolerance_ms_for(interval_ms)
    latest = connection.execute(_LATEST_SCHEDULE, {"account_id": account_id}).first()
    if latest is not None and tuple(latest) == (interval_ms, tolerance_ms):
        return False
    connection.execute(
        insert(_SCHEDULES).values(
            account_id=account_id, started_at=at, interval_ms=interval_ms, tolerance_ms=tolerance_ms, source=source
        )
    )
    return True


def schedules_over(connection: Connection, account_id: int, low: datetime, high: datetime) -> list[Schedule]:
    """The schedule in force at `low` (the default when none was declared yet), then every one started in (low, high]."""
    rows = connection.execute(_SCHEDULES_OVER, {"account_id": account_id, "low": low, "high": high}).all()
    found = [
        Schedule(row.started_at, timedelta(milliseconds=row.interval_ms), timedelta(milliseconds=row.tolerance_ms), row.source)
        for row in rows
    ]
    if not found or found[0].started_at > low:
        found.insert(0, DEFAULT_SCHEDULE)
    return found


def due_at(last_ok: datetime, schedules: Sequence[Schedule]) -> datetime:
    """When the successful poll after `last_ok` was due at the latest; any later is a gap.

    `schedules` is schedules_over(last_ok, ...): the one in force at last_ok first.
    """
    due = last_ok + schedules[0].tolerance
    for schedule in schedules[1:]:
        if schedule.started_at is None or schedule.started_at >= due:
            break
        # A recorder started after last_ok polls at once and promises its own cadence.
        due = min(due, schedule.started_at + schedule.tolerance)
    return due


@dataclass(frozen=True)
class LatestOk:
    """The account's latest successful poll and the schedule in force at it, as note_ok_poll found them."""

    finished_at: datetime
    schedule_at: datetime | None
    tolerance_ms: int | None


def note_ok_poll(
    connection: Connection, account_id: int, finished_at: datetime, latest: LatestOk | None = None
) -> LatestOk | None:
    """Keep poll_gaps true after a successful poll is stored: store the gap it ends, if any.

    A poll that arrives out of order (older than a stored successful poll) splits the gap it
    lands in: the old gap is deleted and both halves are judged again.

    Returns this poll as the account's latest successful one (None when a later one is stored).
    A caller that is the account's only writer of polls and schedules (the writer lock) may
    pass it back with its next poll: a later poll's neighbours are then known without a query,
    as long as no schedule was declared since (the caller forgets it when one is).
    """
    if latest is not None and finished_at > latest.finished_at:
        previous, following, schedule_at, tolerance_ms = latest.finished_at, None, latest.schedule_at, latest.tolerance_ms
    else:
        ((previous, following, schedule_at, tolerance_ms),) = _NEIGHBOURS.execute(
            connection, {"account_id": account_id, "at": finished_at}
        )
    now_latest = LatestOk(finished_at, schedule_at, tolerance_ms) if following is None else None
    if following is not None:
        connection.execute(_DELETE_GAP, {"account_id": account_id, "at": following})
        _store_gap_if_late(connection, account_id, finished_at, following)
    if previous is None:
        return now_latest
    if following is None and (schedule_at is None or schedule_at <= previous):
        # The usual case: no schedule was declared since the previous poll.
        tolerance = timedelta(milliseconds=tolerance_ms) if tolerance_ms is not None else DEFAULT_SCHEDULE.tolerance
        if finished_at - previous > tolerance:
            connection.execute(
                _INSERT_GAP,
                {"account_id": account_id, "start_at": previous, "end_at": finished_at, "tolerance_ms": _ms(tolerance)},
            )
        return now_latest
    _store_gap_if_late(connection, account_id, previous, finished_at)
    return now_latest


def _store_gap_if_late(connection: Connection, account_id: int, start: datetime, end: datetime) -> None:
    due = due_at(start, schedules_over(connection, account_id, start, end))
    if end > due:
        connection.execute(
            _INSERT_GAP, {"account_id": account_id, "start_at": start, "end_at": end, "tolerance_ms": _ms(due - start)}
        )


def _ms(delta: timedelta) -> int:
    # Whole milliseconds, rounded up so start + tolerance is never before the real deadline.
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return -(-micros // 1000)
