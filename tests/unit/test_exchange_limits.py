"""Values a hostile exchange controls, parsed strictly and bounded: Retry-After, ban ends, used weight,
error codes, redirect targets and any text that reaches a message."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from recorder.config import load_settings
from recorder.errors import ConfigError
from recorder.exchange import (
    MAX_ERROR_TEXT,
    BinanceFuturesClient,
    MAX_WAIT_SECONDS,
    _Answer,
    _clip,
    _error_body,
    _redirect_target,
    _retry_after,
    _used_weight,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
BAN = "Way too many requests; IP banned until {}. Please use the websocket for live updates to avoid bans."


def http_date(delta: timedelta) -> str:
    return format_datetime(NOW + delta, usegmt=True)


def answer(status: int, retry_after: str | None = None) -> _Answer:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return _Answer(status, headers, b"")


CAPPED = "waiting the maximum of 3600 s"
IGNORED = "ignoring Retry-After"


@pytest.mark.parametrize(("status", "header", "message", "seconds", "warning"), [
    (429, "30", "", 30.0, None),
    (429, " 30 ", "", 30.0, None),
    (429, "2.5", "", 2.5, None),
    (429, "0", "", 1.0, None),
    (429, "3600", "", 3600.0, None),
    (429, "3601", "", MAX_WAIT_SECONDS, CAPPED),
    (429, "99999999999", "", MAX_WAIT_SECONDS, CAPPED),
    (429, "999999999999999", "", MAX_WAIT_SECONDS, CAPPED),
    (429, "inf", "", 60.0, IGNORED),
    (429, "Infinity", "", 60.0, IGNORED),
    (429, "nan", "", 60.0, IGNORED),
    (429, "-5", "", 60.0, IGNORED),
    (429, "1e300", "", 60.0, IGNORED),
    (429, "1" * 400, "", 60.0, IGNORED),
    (429, "30s", "", 60.0, IGNORED),
    (429, "", "", 60.0, IGNORED),
    (429, "\u0661\u0662", "", 60.0, IGNORED),  # Arabic-Indic digits: int() takes them, HTTP does not
    (429, "0x10", "", 60.0, IGNORED),
    (429, http_date(timedelta(seconds=120)), "", 120.0, None),
    (429, http_date(timedelta(days=3)), "", MAX_WAIT_SECONDS, CAPPED),
    (429, http_date(-timedelta(days=1)), "", 1.0, None),
    (429, "Fri, 31 Dec 9999 23:59:59 GMT", "", MAX_WAIT_SECONDS, CAPPED),
    (429, "Mon, 32 Foo 2026 99:99:99 GMT", "", 60.0, IGNORED),
    (418, None, BAN.format(int((NOW + timedelta(seconds=300)).timestamp() * 1000)), 300.0, None),
    (418, None, BAN.format(int((NOW + timedelta(days=3)).timestamp() * 1000)), MAX_WAIT_SECONDS, CAPPED),
    (418, None, BAN.format(int((NOW - timedelta(days=3)).timestamp() * 1000)), 1.0, None),
    (418, None, BAN.format("99999999999999999999"), 120.0, None),  # not 13 digits: not a time we trust
    (418, "inf", BAN.format(int((NOW + timedelta(seconds=300)).timestamp() * 1000)), 300.0, IGNORED),
    (418, None, "", 120.0, None),
    (403, None, "", 60.0, None),
])
def test_retry_after_is_strict_and_at_most_an_hour(status, header, message, seconds, warning, caplog):
    with caplog.at_level(logging.WARNING, logger="recorder.exchange"):
        waited = _retry_after(answer(status, header), message, NOW.timestamp())
    assert waited == pytest.approx(seconds, abs=0.01)
    assert 1.0 <= waited <= MAX_WAIT_SECONDS
    logged = [r.getMessage() for r in caplog.records]
    if warning is None:
        assert logged == []
    else:
        assert len(logged) == 1 and warning in logged[0]
        assert logged[0].isprintable()


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("0", 0), ("2399", 2399), (" 21 ", 21), ("1000000", 1000000), ("1000001", None),
    ("98765432109876543210987654321", None), ("-1", None), ("1.5", None), ("1e3", None), ("", None),
    ("\u0661\u0662", None), ("1_000", None), ("ten", None),
])
def test_used_weight_is_a_plain_count_or_unknown(header, expected, caplog):
    headers = {} if header is None else {"X-MBX-USED-WEIGHT-1M": header}
    with caplog.at_level(logging.INFO, logger="recorder.exchange"):
        assert _used_weight(headers) == expected
    # An ignored value is visible in the log, not silently dropped.
    assert bool(caplog.records) == (header is not None and expected is None)


@pytest.mark.parametrize(("body", "code", "detail"), [
    (b'{"code":-1003,"msg":"Too many."}', -1003, "Too many."),
    (b'{"code":-2147483648,"msg":"edge"}', -2147483648, "edge"),
    (b'{"code":2147483648,"msg":"big"}', None, "error code 2147483648 out of range: big"),
    (b'{"code":-98765432109876543210987654321,"msg":"x"}', None, "error code -98765432109876543210987654321 out"),
    (b'{"code":-1000,"msg":"a\\u0000b\\u001b[31mc\\r\\nd"}', -1000, "a\\x00b\\x1b[31mc d"),
    (b'{"code":-1,"msg":{"nested":"\\u0007"}}', -1, "{'nested': '\\x07'}"),
    (b"[" * 100000, None, "non-JSON body: " + "[" * 20),
    (b'{"code":' + b"9" * 5000 + b',"msg":"x"}', None, "non-JSON body"),
])
def test_error_body_codes_are_bounded_and_text_is_clean(body, code, detail):
    got_code, got_detail = _error_body(_Answer(400, {"Content-Type": "application/json"}, body))
    assert got_code == code and detail in got_detail
    assert got_detail.isprintable() and len(got_detail) <= MAX_ERROR_TEXT + 40


@pytest.mark.parametrize(("location", "shown"), [
    ("http://127.0.0.1:9/fapi/v2/balance?timestamp=1&signature=abc", " to http://127.0.0.1:9"),
    ("https://user:pass@Evil.Example:8443/x?signature=abc", " to https://evil.example:8443"),
    ("http://[::1]:8080/x?signature=abc", " to http://[::1]:8080"),
    ("/fapi/v2/balance?signature=abc", " to a path on the same host"),
    ("//evil.example/fapi/v2/balance?signature=abc", " to //evil.example"),
    ("http://[/fapi/v2/balance?signature=abc", " with a malformed Location"),
    ("http://host:99999/?signature=abc", " with a malformed Location"),
    ("javascript:alert(1)", " with a malformed Location"),
    ("http://ev\u0000il/?signature=abc", " with a malformed Location"),
    ("http://\u0080\u00ff/\u0000?", " with a malformed Location"),
    (None, " without a Location"),
])
def test_redirect_target_shows_scheme_and_host_only(location, shown):
    assert _redirect_target(location) == shown


@pytest.mark.parametrize(("value", "expected"), [
    ("plain text", "plain text"),
    ("a\u0000b", "a\\x00b"),
    ("bell\u0007 esc\u001b[2J", "bell\\x07 esc\\x1b[2J"),
    ("right-to-left \u202eoverride", "right-to-left \\u202eoverride"),
    ("line\r\nbreak\ttab\u2028sep", "line break tab sep"),
    ("caf\u00e9 \u4e2d\u6587", "caf\u00e9 \u4e2d\u6587"),
    (10**30, "1000000000000000000000000000000"),
    (None, "None"),
])
def test_clip_escapes_unprintable_text(value, expected):
    assert _clip(value) == expected


def test_clip_bounds_length_even_for_huge_and_escaped_input():
    for value in ("x" * 10**6, "\u0000" * 10**6, " \n" * 10**6 + "tail", ["a"] * 10**5):
        clipped = _clip(value)
        assert len(clipped) <= MAX_ERROR_TEXT and clipped.isprintable()


@pytest.mark.parametrize("value", ["inf", "601", "1e300"])
def test_timeout_setting_must_be_a_real_deadline(value):
    with pytest.raises(ConfigError, match=r"RECORDER_TIMEOUT \(--timeout\) must be (a finite number from 0.1 to|at most) 600 s"):
        load_settings({"timeout": value}, environ={})
    assert load_settings({"timeout": "600"}, environ={}).timeout == 600.0


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("inf"), float("nan"), 86401.0])
def test_client_refuses_a_timeout_that_is_no_deadline(timeout):
    with pytest.raises(ValueError, match="timeout must be a number of seconds"):
        BinanceFuturesClient(base_url="http://127.0.0.1:9", api_key="k", api_secret="s", timeout=timeout)
