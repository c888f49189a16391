"""Times typed by people: ISO-8601, plain dates, `now` and relative spans, always aware UTC.

A time without an offset is UTC (never the machine's zone: the same command must mean the
same instant on a laptop and on a server); `--tz` only changes how times are *shown*.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
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
        seconds = float(span.group(1)) * _UNIT_SECONDS[span.group(2)]
        return now.astimezone(timezone.utc) - timedelta(seconds=seconds)
    if _DATE.match(spec):
        try:
            day = date.fromisoformat(spec)
        except ValueError:
            raise ValueError(f"{text!r} is not a valid date") from None
        return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    try:
        parsed = datetime.fromisoformat(spec)
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use {TIME_HELP}") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def parse_zone(name: str) -> timezone | ZoneInfo:
    """An IANA zone (Europe/Berlin), UTC, or a fixed offset (+02:00); ValueError otherwise."""
    text = name.strip()
    if text.upper() in ("UTC", "Z"):
        return timezone.utc
    offset = re.match(r"^([+-])(\d{2}):?(\d{2})$", text)
    if offset:
        sign = 1 if offset.group(1) == "+" else -1
        delta = timedelta(hours=int(offset.group(2)), minutes=int(offset.group(3)))
        if delta >= timedelta(hours=24):
            raise ValueError(f"{name!r} is not a valid UTC offset")
        return timezone(sign * delta)
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}: use an IANA name like Europe/Berlin, or +02:00") from None


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
