"""Gaps in the poll log: stretches without a successful poll (Gap), with the failed polls inside."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import extract, func, select, type_coerce
from sqlalchemy.orm import Session

from recorder.db_types import UtcDateTime
from recorder.models import POLL_FAILED, POLL_OK, Poll
from recorder.queries.states import DEFAULT_TOLERANCE, _account_id, _first_ok_poll, _last_ok_poll


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
