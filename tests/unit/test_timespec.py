"""Parsing the times people type: ISO-8601, dates, now, relative spans; zones for display."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import click
import pytest

from recorder.timespec import TimeSpec, parse_time, parse_zone, require_order, require_showable

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


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("99999999999d", "reaches back before year 1"),
        ("800000d", "reaches back before year 1"),
        ("999999999999999999999999999999w", "reaches back before year 1"),
        ("0000-01-01", "year 0 is out of range"),
        ("0000-01-01T00:00:00", "is out of range: times run from 0001-01-01 to 9999-12-31 UTC"),
        ("10000-01-01", "is out of range"),
        ("10000-01-01T00:00:00Z", "is out of range"),
        ("-0001-01-01", "is out of range"),
        ("9999-12-31T23:59:59-01:00", "is out of range in UTC"),
        ("0001-01-01T00:30:00+01:00", "is out of range in UTC"),
        ("1e300s", "is not a time"),
        ("infd", "is not a time"),
    ],
)
def test_parse_time_names_the_range_for_times_that_cannot_exist(text, reason):
    with pytest.raises(ValueError, match=reason) as error:
        parse_time(text, NOW)
    assert "\n" not in str(error.value)


def test_parse_time_reaches_the_edges_of_the_range():
    assert parse_time("0001-01-01", NOW) == datetime(1, 1, 1, tzinfo=timezone.utc)
    assert parse_time("9999-12-31T23:59:59.999999", NOW) == datetime.max.replace(tzinfo=timezone.utc)
    assert parse_time("9999-12-31T23:59:59+01:00", NOW) == datetime(9999, 12, 31, 22, 59, 59, tzinfo=timezone.utc)
    assert parse_time("0.000001s", NOW) == NOW - timedelta(microseconds=1)


def test_require_order_refuses_a_start_after_the_end_only():
    require_order("--since", NOW, "--until", NOW)
    require_order("--since", None, "--until", NOW)
    with pytest.raises(click.UsageError, match=r"--from 2026-03-10T12:00:00.000001Z is after --to 2026-03-10T12:00:00.000000Z"):
        require_order("--from", NOW + timedelta(microseconds=1), "--to", NOW)


def test_require_showable_refuses_times_the_zone_cannot_write():
    far = datetime(9999, 12, 31, 23, tzinfo=timezone.utc)
    require_showable(parse_zone("-05:00"), at=far)
    with pytest.raises(click.UsageError, match=r"--at 9999-12-31T23:00:00.000000Z cannot be shown in --tz UTC\+14:00"):
        require_showable(parse_zone("+14:00"), at=far)


@pytest.mark.parametrize("text", ["2026-01-02T00:00:00.1234567", "2026-01-02 00:00:00,123456789+01:00", "0.0000001s"])
def test_parse_time_refuses_digits_below_a_microsecond_instead_of_dropping_them(text):
    with pytest.raises(ValueError, match="more precise than a microsecond"):
        parse_time(text, NOW)
    assert parse_time("2026-01-02T00:00:00.1234560", NOW).microsecond == 123456


@pytest.mark.parametrize("text", ["+00:99", "+05:60", "-24:00", "+2400"])
def test_parse_zone_refuses_offsets_that_are_no_clock_time(text):
    with pytest.raises(ValueError, match="not a valid UTC offset"):
        parse_zone(text)
