"""Gaps in the poll log: stretches without a successful poll (Gap), with the failed polls inside."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import bindparam, extract, func, select, type_coerce
from sqlalchemy.orm import Session

from recorder.coverage import schedules_over
from recorder.db_types import UtcDateTime
from recorder.models import POLL_FAILED, POLL_OK, Poll, PollGap
from recorder.queries.states import DEFAULT_TOLERANCE, _account_id, _due, _first_ok_poll, _last_ok_poll

# Bounds for a range left open: every stored time lies between them.
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(9999, 12, 31, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Gap:
    """A stretch without a successful poll longer than the schedule allowed.

    `start` is the last successful poll before it (or `since` when there was none), `end`
    the next successful poll (or `until` when there is none yet: open_end). `failures`
    counts the failed polls inside, by error class. The next poll was due `tolerance` after
    `start` (from the stored schedule, or the --tolerance given).
    """

    start: datetime
    end: datetime
    failures: Mapping[str, int]
    open_end: bool = False
    tolerance: timedelta = DEFAULT_TOLERANCE

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
    tolerance: timedelta | None = None,
) -> list[Gap]:
    """Stretches without a successful poll that overlap [since, until), oldest first.

    By default a gap is what the writer stored: a successful poll later than the schedule
    in force allowed (recorder.coverage); the cost follows the number of gaps, not of polls.
    `tolerance` counts every stretch longer than it instead: read from the stored gaps when
    it is at least every stored tolerance in the range (each such stretch is stored), else
    found by scanning the successful polls in the range.
    """
    account_id = _account_id(session, account)
    if tolerance is not None and tolerance < _largest_tolerance(session, account_id, since, until):
        spans = _scanned_spans(session, account_id, since, until, tolerance)
    else:
        spans = _stored_spans(session, account_id, since, until, tolerance)
    return [Gap(start, end, _failures(session, account_id, start, end), open_end, allowed) for start, end, open_end, allowed in spans]


Span = tuple[datetime, datetime, bool, timedelta]


def _largest_tolerance(session: Session, account_id: int, since: datetime | None, until: datetime | None) -> timedelta:
    # From the last successful poll before `since`: a gap crossing `since` was judged by the
    # schedule in force there.
    before = _last_ok_poll(session, account_id, since, inclusive=False) if since is not None else None
    low, high = before or since or EARLIEST, until or LATEST
    return max(schedule.tolerance for schedule in schedules_over(session.connection(), account_id, low, high))


def _stored_spans(
    session: Session, account_id: int, since: datetime | None, until: datetime | None, tolerance: timedelta | None
) -> list[Span]:
    """The stored gaps overlapping the range, plus the silence at its ends (never stored)."""
    connection = session.connection()
    after = _first_ok_poll(session, account_id, until) if until is not None else None
    params = {"account_id": account_id, "low": since or EARLIEST, "high": after or LATEST, "until": until or LATEST}
    spans: list[Span] = []
    for start, end, tolerance_ms in connection.execute(_STORED_GAPS, params):
        allowed = timedelta(milliseconds=tolerance_ms) if tolerance is None else tolerance
        if end - start > allowed:
            spans.append((start, end, False, allowed))
    if since is not None and _last_ok_poll(session, account_id, since, inclusive=False) is None:
        # Nothing succeeded before `since`: from `since` to the first successful poll (or to
        # `until`, when there is none at all) is a gap too, judged as if `since` were a poll.
        first = _first_ok_poll(session, account_id, since)
        edge = first if first is not None else until
        if edge is not None:
            allowed = tolerance if tolerance is not None else _due(session, account_id, since, edge) - since
            if edge - since > allowed:
                spans.insert(0, (since, edge, first is None, allowed))
    if until is not None and after is None:
        last = _last_ok_poll(session, account_id, until, inclusive=False)
        if last is not None:
            allowed = tolerance if tolerance is not None else _due(session, account_id, last, until) - last
            if until - last > allowed:
                spans.append((last, until, True, allowed))
    return spans


# The key of poll_gaps is (account_id, end_at): a range on end_at, bounded above by the first
# successful poll at or after `until` (no gap that overlaps the range can end later).
_GAPS = PollGap.__table__
_STORED_GAPS = (
    select(_GAPS.c.start_at, _GAPS.c.end_at, _GAPS.c.tolerance_ms)
    .where(
        _GAPS.c.account_id == bindparam("account_id"),
        _GAPS.c.end_at >= bindparam("low", type_=UtcDateTime()),
        _GAPS.c.end_at <= bindparam("high", type_=UtcDateTime()),
        _GAPS.c.start_at < bindparam("until", type_=UtcDateTime()),
    )
    .order_by(_GAPS.c.end_at)
)


def _scanned_spans(
    session: Session, account_id: int, since: datetime | None, until: datetime | None, tolerance: timedelta
) -> list[Span]:
    """Every stretch longer than `tolerance`, found by scanning the successful polls in the range."""
    # Successful polls just outside the range: a gap that crosses a bound keeps its true ends.
    before = _last_ok_poll(session, account_id, since, inclusive=False) if since is not None else None
    after = _first_ok_poll(session, account_id, until) if until is not None else None
    spans = [(start, end, False) for start, end in _long_intervals(session, account_id, before or since, after or until, tolerance)]
    if since is not None and before is None:
        first = _first_ok_poll(session, account_id, since)
        edge = first if first is not None else until
        if edge is not None and edge - since > tolerance:
            spans.insert(0, (since, edge, first is None))
    if until is not None and after is None:
        last = _last_ok_poll(session, account_id, until, inclusive=False)
        if last is not None and until - last > tolerance:
            spans.append((last, until, True))
    return [(start, end, open_end, tolerance) for start, end, open_end in spans]


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


def _failures(session: Session, account_id: int, start: datetime, end: datetime) -> dict[str, int]:
    """The failed polls strictly inside (start, end), counted by error class."""
    rows = session.connection().execute(_FAILURES, {"account_id": account_id, "start": start, "end": end})
    counts: Counter[str] = Counter()
    for name, count in rows:
        counts[name or "unknown"] += count
    return dict(sorted(counts.items()))


# One range probe on the polls key per gap: the cost follows the polls inside the gaps.
_FAILURES = (
    select(Poll.error_class, func.count())
    .where(
        Poll.account_id == bindparam("account_id"),
        Poll.outcome == POLL_FAILED,
        Poll.finished_at > bindparam("start", type_=UtcDateTime()),
        Poll.finished_at < bindparam("end", type_=UtcDateTime()),
    )
    .group_by(Poll.error_class)
)
