"""Parsing the times people type: ISO-8601, dates, now, relative spans; zones for display."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import click
import pytest

from recorder.timespec import TimeSpec, parse_time, parse_zone

NOW = datetime(2026, 3, 10, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-02T03:04:05", datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
        ("2026-01-02 03:04:05.250", datetime(2026, 1, 2, 3, 4, 5, 250000, tzinfo=timezone.utc)),
        ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
        ("2026-01-02T03:04:05+02:00", datetime(2026, 1, 2, 1, 4, 5, tzinfo=timezone.utc)),
        ("2026-01-02T00:30:00-05:00", datetime(2026, 1, 2, 5, 30, tzinfo=timezone.utc)),
        ("2026-01-02", datetime(2026, 1, 2, tzinfo=timezone.utc)),
        ("now", NOW),
        (" NOW ", NOW),
        ("30s", NOW - timedelta(seconds=30)),
        ("90m", datetime(2026, 3, 10, 10, 30, tzinfo=timezone.utc)),
        ("24h", datetime(2026, 3, 9, 12, 0, tzinfo=timezone.utc)),
        ("7d", datetime(2026, 3, 3, 12, 0, tzinfo=timezone.utc)),
        ("2w", datetime(2026, 2, 24, 12, 0, tzinfo=timezone.utc)),
        ("1.5h", datetime(2026, 3, 10, 10, 30, tzinfo=timezone.utc)),
    ],
)
def test_parse_time_accepts_every_documented_form(text, expected):
    parsed = parse_time(text, NOW)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "2026-02-30", "12x", "-5m", ""])
def test_parse_time_rejects_garbage_with_one_line(text):
    with pytest.raises(ValueError) as error:
        parse_time(text, NOW)
    assert "\n" not in str(error.value)


def test_timespec_param_turns_errors_into_bad_parameter_and_shares_now():
    calls = []

    def clock():
        calls.append(1)
        return NOW + timedelta(seconds=len(calls))

    spec = TimeSpec(clock)
    command = click.Command("x")
    ctx = click.Context(command)
    first = spec.convert("now", None, ctx)
    second = spec.convert("1h", None, ctx)
    assert (first, second, len(calls)) == (NOW + timedelta(seconds=1), NOW + timedelta(seconds=1) - timedelta(hours=1), 1)
    with pytest.raises(click.BadParameter, match="not a time"):
        spec.convert("soon", None, ctx)


def test_parse_zone_accepts_iana_names_utc_and_offsets():
    assert parse_zone("UTC") is timezone.utc
    assert parse_zone("+05:30").utcoffset(None) == timedelta(hours=5, minutes=30)
    assert parse_zone("-0800").utcoffset(None) == timedelta(hours=-8)
    tokyo = parse_zone("Asia/Tokyo")
    assert datetime(2026, 1, 1, tzinfo=timezone.utc).astimezone(tokyo).hour == 9
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Base'"):
        parse_zone("Mars/Base")
