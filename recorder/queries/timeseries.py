"""One amount of one asset over time, per minute, hour or day bucket: series, SeriesPoint, BUCKETS."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo
from decimal import Decimal

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from recorder.models import AMOUNT_FIELDS
from recorder.queries.poll_gaps import Gap, gaps
from recorder.queries.states import UTC, _AT, _BALANCES, _account_id, _first_ok_poll, _require_aware

BUCKETS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
MAX_BUCKETS = 100_000


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
    tolerance: timedelta | None = None,
    tz: tzinfo = UTC,
) -> list[SeriesPoint]:
    """The value of `field` at the end of each minute, hour or day bucket of [since, until).

    Minute and hour buckets are aligned in UTC; day buckets start at midnight in `tz`
    (default UTC). The value of a bucket is the last state recorded strictly before its end
    (or before `until`, for a last bucket that `until` cuts short). A bucket is a gap by the
    stored schedule (see gaps), or by `tolerance` when given.
    """
    return list(iter_series(session, account, asset, field, since, until, every=every, tolerance=tolerance, tz=tz))


def iter_series(
    session: Session,
    account: str,
    asset: str,
    field: str,
    since: datetime,
    until: datetime,
    *,
    every: str = "hour",
    tolerance: timedelta | None = None,
    tz: tzinfo = UTC,
) -> Iterator[SeriesPoint]:
    """series, one point at a time as each bucket is probed; bad arguments raise at once."""
    if field not in AMOUNT_FIELDS:
        raise ValueError(f"{field!r} is not an amount field: {', '.join(AMOUNT_FIELDS)}")
    if every not in BUCKETS:
        raise ValueError(f"every must be one of {', '.join(BUCKETS)}, not {every!r}")
    account_id = _account_id(session, account)
    buckets = _buckets(since, until, every, tz)
    gap_list = gaps(session, account, since=since, until=until, tolerance=tolerance)
    return _points(session, account_id, asset, field, until, buckets, gap_list)


def _points(
    session: Session, account_id: int, asset: str, field: str, until: datetime,
    buckets: Sequence[tuple[datetime, datetime]], gap_list: Sequence[Gap],
) -> Iterator[SeriesPoint]:
    gap_starts = [gap.start for gap in gap_list]
    probe = _SERIES_PROBE[field]
    connection = session.connection()
    first_poll = _first_ok_poll(session, account_id, datetime(1970, 1, 1, tzinfo=UTC))
    for start, end in buckets:
        cut = min(end, until)
        # One index seek per bucket: the cost follows the number of buckets, not of changes.
        found = connection.execute(probe, {"account_id": account_id, "asset": asset, "at": cut}).first()
        if first_poll is None or cut <= first_poll or found is None:
            yield SeriesPoint(start, end, None, None, "unobserved")
            continue
        observed_at, present, value = found
        if _inside_gap(gap_list, gap_starts, cut):
            yield SeriesPoint(start, end, None, observed_at, "gap")
        elif not present:
            yield SeriesPoint(start, end, None, observed_at, "absent")
        else:
            yield SeriesPoint(start, end, value, observed_at, "ok")


# Built once, like the shared statements in queries/states.py (which says why).
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


def _inside_gap(gap_list: Sequence[Gap], starts: Sequence[datetime], at: datetime) -> bool:
    # The last gap starting before `at`: `at` is stale when it lies past the gap's due time
    # and no later than its end (the next successful poll is only known from then on).
    index = bisect_left(starts, at) - 1
    if index < 0:
        return False
    gap = gap_list[index]
    return gap.start + gap.tolerance < at <= gap.end


def _buckets(since: datetime, until: datetime, every: str, tz: tzinfo) -> list[tuple[datetime, datetime]]:
    _require_aware(since)
    _require_aware(until)
    if until <= since:
        return []
    try:
        return _bucket_edges(since, until, every, tz)
    except OverflowError:
        # The last bucket of a range ending in 9999 would end in year 10000.
        raise ValueError(f"the {every} buckets of this range reach past 9999-12-31: end the range earlier") from None


def _bucket_edges(since: datetime, until: datetime, every: str, tz: tzinfo) -> list[tuple[datetime, datetime]]:
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
