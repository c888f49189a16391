"""One row per asset and day: open, close, change, high and low of one amount, and the blind time.

Days start at midnight in a time zone (UTC by default). The states are read once, oldest
first, as a stream; memory holds one day's figures per asset, whatever the range.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from decimal import Decimal

from sqlalchemy.orm import Session

from recorder.models import AMOUNT_FIELDS
from recorder.queries.diffs import EXACT
from recorder.queries.poll_gaps import EARLIEST, Gap, gaps
from recorder.queries.snapshots import _snapshot
from recorder.queries.states import UTC, AssetState, _account_id, _first_ok_poll, _last_ok_poll, iter_history


@dataclass(frozen=True)
class Day:
    """One asset over one day [start, end) (cut at the range's ends).

    open: the value at `start` (the last state before it); close: the value at `end` (the
    last state before it); None where the asset was absent or not seen yet. high and low
    cover the open and every value recorded inside the day. changes counts the states
    recorded inside the day. gap_seconds is the part of the day inside a gap (`recorder
    gaps`); fully_observed means no gap and successful polls before `start` and at or after `end`.
    """

    asset: str
    day: date
    start: datetime
    end: datetime
    open: Decimal | None
    close: Decimal | None
    change: Decimal | None
    high: Decimal | None
    low: Decimal | None
    changes: int
    gap_seconds: timedelta
    fully_observed: bool


def iter_daily(
    session: Session,
    account: str,
    *,
    field: str = "balance",
    assets: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    tz: tzinfo = UTC,
) -> Iterator[Day]:
    """Per day in [since, until) and asset, open/close/change/high/low of `field`, oldest day first.

    Without `since` the first day is the day of the account's first recorded state; without
    `until` the range ends at its last successful poll.
    """
    if field not in AMOUNT_FIELDS:
        raise ValueError(f"{field!r} is not an amount field: {', '.join(AMOUNT_FIELDS)}")
    account_id = _account_id(session, account)
    first_poll = _first_ok_poll(session, account_id, EARLIEST)
    if first_poll is None:
        return iter(())
    start = since if since is not None else first_poll
    end = until if until is not None else _last_ok_poll(session, account_id, datetime(9999, 12, 31, tzinfo=UTC), inclusive=True)
    if end is None or end <= start:
        return iter(())
    opening = _snapshot(session, account, start, assets, inclusive=False)[2]
    blind = gaps(session, account, since=start, until=end)
    last_poll = _last_ok_poll(session, account_id, datetime(9999, 12, 31, tzinfo=UTC), inclusive=True)
    states = iter_history(session, account, assets=assets, since=start, until=end)
    return _days(states, opening, field, start, end, tz, blind, first_poll, last_poll)


def _days(
    states: Iterator[AssetState],
    opening: dict[str, AssetState | None],
    field: str,
    start: datetime,
    end: datetime,
    tz: tzinfo,
    blind: Sequence[Gap],
    first_poll: datetime,
    last_poll: datetime | None,
) -> Iterator[Day]:
    values = {asset: _value(state, field) for asset, state in opening.items()}
    pending = next(states, None)
    day = start.astimezone(tz).date()
    while True:
        day_start = max(start, datetime.combine(day, time(), tzinfo=tz).astimezone(UTC))
        day_end = min(end, datetime.combine(day + timedelta(days=1), time(), tzinfo=tz).astimezone(UTC))
        if day_start >= end:
            return
        figures: dict[str, list] = {}
        for asset, value in values.items():
            figures[asset] = [value, value, value, 0]
        while pending is not None and pending.observed_at < day_end:
            value = _value(pending, field)
            high_low = figures.setdefault(pending.asset, [None, None, None, 0])
            values[pending.asset] = value
            high_low[3] += 1
            if value is not None:
                high_low[1] = value if high_low[1] is None else max(high_low[1], value)
                high_low[2] = value if high_low[2] is None else min(high_low[2], value)
            pending = next(states, None)
        gap = _overlap(blind, day_start, day_end)
        observed = gap == timedelta(0) and first_poll <= day_start and last_poll is not None and last_poll >= day_end
        for asset in sorted(figures):
            opened, high, low, count = figures[asset]
            closed = values.get(asset)
            if opened is None and closed is None and count == 0:
                continue
            change = EXACT.subtract(closed, opened) if opened is not None and closed is not None else None
            yield Day(asset, day, day_start, day_end, opened, closed, change, high, low, count, gap, observed)
        day += timedelta(days=1)


def _value(state: AssetState | None, field: str) -> Decimal | None:
    if state is None or not state.present:
        return None
    return getattr(state, field)


def _overlap(blind: Sequence[Gap], start: datetime, end: datetime) -> timedelta:
    total = timedelta(0)
    for gap in blind:
        low, high = max(gap.start, start), min(gap.end, end)
        if high > low:
            total += high - low
    return total
