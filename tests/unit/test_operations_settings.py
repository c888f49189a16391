"""Settings of the operations features and the key check's verdict: pure parsing, no I/O."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from recorder.config import (
    LIVE_SPOT_BASE_URL,
    TESTNET_BASE_URL,
    load_settings,
    metrics_address,
    spot_base_url_for,
)
from recorder.errors import ConfigError
from recorder.health import judge
from recorder.keycheck import classify
from recorder.simulator.market import READ_ONLY_RESTRICTIONS


@pytest.mark.parametrize(
    "text, expected",
    [
        ("9108", ("127.0.0.1", 9108)),
        (":9108", ("127.0.0.1", 9108)),
        ("localhost:9108", ("localhost", 9108)),
        ("[::1]:9108", ("::1", 9108)),
        ("0", ("127.0.0.1", 0)),
    ],
)
def test_metrics_address_bare_port_binds_loopback(text, expected):
    assert metrics_address(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "9108x", "127.0.0.1:65536", "127.0.0.1:-1", "host:"])
def test_metrics_address_malformed_is_a_one_line_config_error(text):
    with pytest.raises(ConfigError, match=r"RECORDER_METRICS_ADDR \(--metrics-addr\) must be PORT or HOST:PORT"):
        metrics_address(text)


def test_metrics_addr_beyond_loopback_needs_the_explicit_setting():
    with pytest.raises(ConfigError, match="'0.0.0.0' is not a loopback address: set RECORDER_METRICS_ALLOW_REMOTE"):
        load_settings({}, {"RECORDER_METRICS_ADDR": "0.0.0.0:9108"})
    allowed = load_settings({}, {"RECORDER_METRICS_ADDR": "0.0.0.0:9108", "RECORDER_METRICS_ALLOW_REMOTE": "true"})
    assert allowed.metrics_addr == "0.0.0.0:9108"
    assert load_settings({"metrics_addr": "9108"}, {}).metrics_addr == "127.0.0.1:9108"


def test_boolean_settings_refuse_anything_but_true_or_false():
    assert load_settings({}, {"RECORDER_REQUIRE_READ_ONLY_KEY": "yes"}).require_read_only_key is True
    assert load_settings({}, {"RECORDER_REQUIRE_READ_ONLY_KEY": "0"}).require_read_only_key is False
    with pytest.raises(ConfigError, match="RECORDER_REQUIRE_READ_ONLY_KEY .* must be true or false, not 'maybe'"):
        load_settings({}, {"RECORDER_REQUIRE_READ_ONLY_KEY": "maybe"})


def test_spot_host_follows_the_futures_host():
    assert spot_base_url_for(load_settings({}, {})) == LIVE_SPOT_BASE_URL
    assert spot_base_url_for(load_settings({"base_url": "http://127.0.0.1:8765"}, {})) == "http://127.0.0.1:8765"
    # Binance's futures testnet has no /sapi: the check cannot be made there.
    assert spot_base_url_for(load_settings({"base_url": TESTNET_BASE_URL}, {})) is None
    assert spot_base_url_for(load_settings({"base_url": "https://proxy.example"}, {})) is None
    explicit = load_settings({"base_url": TESTNET_BASE_URL, "spot_base_url": "https://testnet.binance.vision/"}, {})
    assert spot_base_url_for(explicit) == "https://testnet.binance.vision"
    with pytest.raises(ConfigError, match=r"BINANCE_SPOT_BASE_URL \(--spot-base-url\) must be scheme and host only"):
        load_settings({"spot_base_url": "https://api.binance.com/sapi"}, {})


def test_classify_names_each_enabled_permission_by_group():
    assert classify(dict(READ_ONLY_RESTRICTIONS)).read_only
    found = classify({**READ_ONLY_RESTRICTIONS, "enableFutures": True, "enableFixApiTrade": True,
                      "enableWithdrawals": True, "permitsUniversalTransfer": True})
    assert not found.read_only and found.can_read
    assert found.enabled == (
        ("trading", ("enableFutures", "enableFixApiTrade")),
        ("withdrawals", ("enableWithdrawals",)),
        ("internal/universal transfer", ("permitsUniversalTransfer",)),
    )
    no_reading = classify({**READ_ONLY_RESTRICTIONS, "enableReading": False})
    assert not no_reading.can_read and not no_reading.read_only and no_reading.enabled == ()


def test_judge_overdue_poll_and_waiting_spool():
    t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    due = t + timedelta(seconds=90)
    assert judge(last_ok_at=t, due_at=due, spool_depth=0, now=due) == ()
    late = judge(last_ok_at=t, due_at=due, spool_depth=0, now=due + timedelta(microseconds=1))
    assert late == ("no successful poll since 2026-01-01T00:00:00+00:00 (was due by 2026-01-01T00:01:30+00:00)",)
    assert judge(last_ok_at=t, due_at=due, spool_depth=2, now=t) == (
        "2 poll(s) waiting in the spool: the database did not take them",
    )
    assert judge(last_ok_at=None, due_at=None, spool_depth=0, now=t) == ("no successful poll yet",)
    assert judge(last_ok_at=None, due_at=due, spool_depth=0, now=t) == ()
