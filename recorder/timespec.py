"""Times typed by people: ISO-8601, plain dates, `now` and relative spans, always aware UTC.

A time without an offset is UTC (never the machine's zone: the same command must mean the
same instant on a laptop and on a server); `--tz` only changes how times are *shown*.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

Clock = Callable[[], datetime]

TIME_HELP = (
    "ISO-8601 (no offset means UTC), a date (midnight UTC), 'now', or a span before now "
    "such as 30s, 90m, 24h, 7d, 2w"
)

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# A leading year with the wrong number of digits (0, 10000, -5): name the range, not the format.
_YEAR = re.compile(r"^([+-]?\d+)-\d{1,2}-\d{1,2}(?:$|[T ])")
RANGE_HELP = "times run from 0001-01-01 to 9999-12-31 UTC"
_SUBMICROSECOND = re.compile(r"[T ]\d{1,2}:\d{2}(?::\d{2})?[.,]\d{6}0*[1-9]")
# Any span longer than 10000 years lands before year 1; checked first, so a 30-digit span
# never reaches Decimal's or timedelta's own limits.
_LONGEST_SPAN_SECONDS = Decimal(10_000 * 366 * 86400)
_MICROSECOND = Decimal("0.000001")


def utcnow() -> datetime:
    """The current instant, aware UTC."""
    return datetime.now(timezone.utc)


def parse_time(text: str, now: datetime) -> datetime:
    """Parse one time spec into an aware UTC datetime; raise ValueError with a one-line reason."""
    spec = text.strip()
    lowered = spec.lower()
    if lowered == "now":
        return now.astimezone(timezone.utc)
    span = _SPAN.match(lowered)
    if span:
        # Decimal, not float: `99999999999d` must fail as too far back, not lose digits first.
        seconds = Decimal(span.group(1)) * _UNIT_SECONDS[span.group(2)]
        too_far = f"{text!r} reaches back before year 1: {RANGE_HELP}"
        if seconds > _LONGEST_SPAN_SECONDS:
            raise ValueError(too_far)
        if seconds % _MICROSECOND:
            raise ValueError(f"{text!r} is more precise than a microsecond")
        try:
            return now.astimezone(timezone.utc) - timedelta(seconds=int(seconds), microseconds=int(seconds % 1 * 10**6))
        except OverflowError:
            raise ValueError(too_far) from None
    if _DATE.match(spec):
        try:
            day = date.fromisoformat(spec)
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a valid date ({exc})") from None
        return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    if _SUBMICROSECOND.search(spec):
        # Python would drop the 7th digit, and a range bound would move without a word.
        raise ValueError(f"{text!r} is more precise than a microsecond: use at most 6 fraction digits")
    try:
        parsed = datetime.fromisoformat(spec)
    except ValueError:
        year = _YEAR.match(spec)
        if year and not 1 <= int(year.group(1)) <= 9999:
            raise ValueError(f"{text!r} is out of range: {RANGE_HELP}") from None
        raise ValueError(f"{text!r} is not a time: use {TIME_HELP}") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:
        # 9999-12-31T23:59:59-01:00 is a valid text whose UTC instant is in year 10000.
        raise ValueError(f"{text!r} is out of range in UTC: {RANGE_HELP}") from None


def parse_zone(name: str) -> timezone | ZoneInfo:
    """An IANA zone (Europe/Berlin), UTC, or a fixed offset (+02:00); ValueError otherwise."""
    text = name.strip()
    if text.upper() in ("UTC", "Z"):
        return timezone.utc
    offset = re.match(r"^([+-])(\d{2}):?(\d{2})$", text)
    if offset:
        sign = 1 if offset.group(1) == "+" else -1
        delta = timedelta(hours=int(offset.group(2)), minutes=int(offset.group(3)))
        # +00:99 would otherwise become +01:39 without a word.
        if delta >= timedelta(hours=24) or int(offset.group(3)) >= 60:
            raise ValueError(f"{name!r} is not a valid UTC offset")
        return timezone(sign * delta)
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}: use an IANA name like Europe/Berlin, or +02:00") from None


def require_order(earlier: str, start: datetime | None, later: str, end: datetime | None) -> None:
    """UsageError when the range's start is after its end; option names as typed, e.g. '--since'."""
    # A reversed range would silently answer "nothing happened"; say what was typed instead.
    if start is not None and end is not None and start > end:
        raise click.UsageError(
            f"{earlier} {_shown(start)} is after {later} {_shown(end)}: "
            f"put the earlier time in {earlier}"
        )


def require_showable(tz: tzinfo, **times: datetime | None) -> None:
    """UsageError when a time given as option=value cannot be written in the zone `tz`."""
    # 9999-12-31T23:00Z exists in UTC but not at +14:00: refuse before printing half a table.
    for option, value in times.items():
        if value is None:
            continue
        try:
            value.astimezone(tz)
        except OverflowError:
            raise click.UsageError(
                f"--{option.replace('_', '-')} {_shown(value)} cannot be shown in --tz {tz}: "
                "there it falls outside the years 0001 to 9999"
            ) from None


def _shown(value: datetime) -> str:
    text = value.astimezone(timezone.utc).isoformat(timespec="microseconds")
    return text.removesuffix("+00:00") + "Z"


class TimeSpec(click.ParamType):
    """A click type for time specs; every option of one command shares one `now`."""

    name = "TIME"

    def __init__(self, clock: Clock = utcnow) -> None:
        self.clock = clock

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        now = self._now(ctx)
        try:
            return parse_time(str(value), now)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)

    def _now(self, ctx: click.Context | None) -> datetime:
        # `--since 24h --until now` must span exactly 24 h, so `now` is read once per command.
        if ctx is None:
            return self.clock()
        root = ctx.find_root()
        if "recorder.now" not in root.meta:
            root.meta["recorder.now"] = self.clock()
        return root.meta["recorder.now"]


class TimeZoneParam(click.ParamType):
    """A click type for --tz."""

    name = "ZONE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return parse_zone(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
