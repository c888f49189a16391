"""The query module on a scripted sequence of polls with known balances, on both backends.

The script (UTC, one poll a minute, interval 60 s so the gap tolerance is 120 s):

    00:00 ok      USDT 100.00000000   BNB 0.50000000
    00:01 ok      (unchanged)
    00:02 ok      USDT  99.50000000 (cross_un_pnl -0.25000000, margin off)   BNB unchanged
    00:03-00:06   failed: ExchangeUnavailable x3, RateLimited x1
    00:07 ok      USDT 120.00000000   BNB unchanged   BTC 0.00100000 (appears)
    00:08 ok      USDT 120.00000000   BTC 0.00100000  (BNB vanishes)
    00:09 ok      (unchanged)

Every expectation below is computed by hand from this table.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from recorder import queries
from recorder.errors import ConfigError, ExchangeUnavailable, RateLimited
from recorder.records import AssetBalance, FetchedBalances
from recorder.store import ensure_account, record_failure, record_poll

LOCAL = "http://127.0.0.1:9"
DAY = datetime(2026, 1, 1, tzinfo=timezone.utc)
UPDATE = datetime(2025, 12, 31, 23, 0, 0, 123000, tzinfo=timezone.utc)


def at(minute: int, second: float = 0) -> datetime:
    return DAY + timedelta(minutes=minute, seconds=second)


def asset(name: str, amount: str, *, unpnl: str = "0.00000000", margin: bool = True) -> AssetBalance:
    value = Decimal(amount)
    return AssetBalance(
        asset=name,
        balance=value,
        cross_wallet_balance=value,
        cross_un_pnl=Decimal(unpnl),
        available_balance=value,
        max_withdraw_amount=value,
        margin_available=margin,
        update_time=UPDATE,
    )


def record(sessions, when: datetime, outcome, label: str = "default") -> None:
    """One poll finishing at `when`: a tuple of AssetBalance, or an error for a failed poll."""
    with sessions.begin() as session:
        account = ensure_account(session, label, LOCAL, when)
        uid = f"{label}-{when.isoformat()}"
        started = when - timedelta(milliseconds=250)
        if isinstance(outcome, Exception):
            record_failure(session, account, outcome, uid=uid, endpoint="/fapi/v2/balance", started_at=started, finished_at=when)
        else:
            fetched = FetchedBalances(account_alias="SgsR", assets=tuple(outcome), endpoint="/fapi/v2/balance", used_weight=5)
            record_poll(session, account, fetched, uid=uid, started_at=started, finished_at=when)


USDT_100 = asset("USDT", "100.00000000")
USDT_99 = asset("USDT", "99.50000000", unpnl="-0.25000000", margin=False)
USDT_120 = asset("USDT", "120.00000000")
BNB = asset("BNB", "0.50000000")
BTC = asset("BTC", "0.00100000")
DOWN = ExchangeUnavailable("HTTP 503", http_status=503)
SLOW = RateLimited("HTTP 429", retry_after=30, http_status=429, code=-1003)

SCRIPT = [
    (0, (USDT_100, BNB)),
    (1, (USDT_100, BNB)),
    (2, (USDT_99, BNB)),
    (3, DOWN),
    (4, DOWN),
    (5, SLOW),
    (6, DOWN),
    (7, (USDT_120, BNB, BTC)),
    (8, (USDT_120, BTC)),
    (9, (USDT_120, BTC)),
]


@pytest.fixture
def scripted(sessions):
    """The scripted account 'default' plus an unrelated account 'other' that must never leak in."""
    for minute, outcome in SCRIPT:
        record(sessions, at(minute), outcome)
    record(sessions, at(0, 30), (asset("USDT", "5.00000000"),), label="other")
    return sessions


def amounts(state) -> tuple:
    return None if state is None else (state.balance, state.cross_un_pnl, state.margin_available)


# --- history -----------------------------------------------------------------------------


def test_history_lists_every_distinct_state_oldest_first(scripted):
    with scripted() as session:
        states = queries.history(session, "default")
    assert [(s.observed_at, s.asset, s.present, s.balance) for s in states] == [
        (at(0), "BNB", True, Decimal("0.50000000")),
        (at(0), "USDT", True, Decimal("100.00000000")),
        (at(2), "USDT", True, Decimal("99.50000000")),
        (at(7), "BTC", True, Decimal("0.00100000")),
        (at(7), "USDT", True, Decimal("120.00000000")),
        (at(8), "BNB", False, None),
    ]
    usdt_99 = states[2]
    assert (usdt_99.cross_un_pnl, usdt_99.margin_available, usdt_99.update_time) == (Decimal("-0.25"), False, UPDATE)


def test_history_filters_by_asset_and_half_open_range(scripted):
    with scripted() as session:
        states = queries.history(session, "default", assets=["USDT", "BNB"], since=at(2), until=at(8))
    assert [(s.observed_at, s.asset) for s in states] == [(at(2), "USDT"), (at(7), "USDT")]


def test_unknown_account_is_a_config_error_naming_the_known_ones(scripted):
    with scripted() as session, pytest.raises(ConfigError, match="no account 'nope'.*default, other"):
        queries.history(session, "nope")


def test_list_assets_names_every_asset_ever_seen(scripted):
    with scripted() as session:
        assert queries.list_assets(session, "default") == ["BNB", "BTC", "USDT"]
