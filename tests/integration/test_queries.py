"""The query module on a scripted sequence of polls with known balances, on both backends.

The script (UTC, one poll a minute; no declared schedule, so the default 60 s interval and its
gap tolerance of 90 s apply):

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
        started = when - timedelta(milliseconds=250)
        if isinstance(outcome, Exception):
            record_failure(session, account, outcome, endpoint="/fapi/v2/balance", started_at=started, finished_at=when)
        else:
            fetched = FetchedBalances(account_alias="SgsR", assets=tuple(outcome), endpoint="/fapi/v2/balance", used_weight=5)
            record_poll(session, account, fetched, started_at=started, finished_at=when)


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


# --- as_of -------------------------------------------------------------------------------


def positions(result) -> dict:
    return {p.asset: (p.status, amounts(p.state), p.state.observed_at if p.state else None) for p in result.positions}


def test_as_of_at_an_observation_instant_includes_that_observation(scripted):
    with scripted() as session:
        result = queries.as_of(session, "default", at(2))
    assert positions(result) == {
        "BNB": ("ok", (Decimal("0.50000000"), Decimal("0E-8"), True), at(0)),
        "BTC": ("unobserved", None, None),
        "USDT": ("ok", (Decimal("99.50000000"), Decimal("-0.25000000"), False), at(2)),
    }
    assert (result.freshness.last_poll_at, result.freshness.stale_seconds, result.freshness.status) == (at(2), 0.0, "ok")


def test_as_of_a_microsecond_earlier_is_the_previous_state(scripted):
    with scripted() as session:
        result = queries.as_of(session, "default", at(2) - timedelta(microseconds=1), assets=["USDT"])
    assert positions(result) == {"USDT": ("ok", (Decimal("100"), Decimal(0), True), at(0))}
    assert result.freshness.last_poll_at == at(1)
    assert result.freshness.stale_seconds == 59.999999


def test_as_of_inside_a_gap_reports_staleness_instead_of_freshness(scripted):
    with scripted() as session:
        edge = queries.as_of(session, "default", at(3, 30))
        inside = queries.as_of(session, "default", at(5, 30))
    # 00:03:30 is exactly the tolerance (90 s) after the last success at 00:02: still fresh.
    assert (edge.freshness.stale_seconds, edge.freshness.in_gap, positions(edge)["USDT"][0]) == (90.0, False, "ok")
    assert (inside.freshness.last_poll_at, inside.freshness.stale_seconds) == (at(2), 210.0)
    assert (inside.freshness.in_gap, inside.freshness.status) == (True, "gap")
    assert positions(inside)["USDT"] == ("stale", (Decimal("99.5"), Decimal("-0.25"), False), at(2))
    assert positions(inside)["BNB"][0] == "stale"


def test_as_of_before_the_first_poll_invents_nothing(scripted):
    with scripted() as session:
        result = queries.as_of(session, "default", at(-1))
    assert result.freshness.status == "before_first_poll"
    assert result.freshness.stale_seconds is None
    assert positions(result) == {name: ("before_first_poll", None, None) for name in ("BNB", "BTC", "USDT")}


def test_as_of_shows_vanished_assets_and_long_silence(scripted):
    with scripted() as session:
        latest = queries.as_of(session, "default", at(9))
        later = queries.as_of(session, "default", at(60))
    assert positions(latest) == {
        "BNB": ("vanished", (None, None, None), at(8)),
        "BTC": ("ok", (Decimal("0.001"), Decimal(0), True), at(7)),
        "USDT": ("ok", (Decimal("120"), Decimal(0), True), at(7)),
    }
    assert (later.freshness.stale_seconds, later.freshness.in_gap) == (3060.0, True)
    assert positions(later)["USDT"][0] == "stale"


def test_as_of_keeps_accounts_apart(scripted):
    with scripted() as session:
        result = queries.as_of(session, "other", at(1))
    assert positions(result) == {"USDT": ("ok", (Decimal("5"), Decimal(0), True), at(0, 30))}


# --- diff --------------------------------------------------------------------------------


def test_diff_across_a_gap_shows_changes_and_appeared_and_vanished_assets(scripted):
    with scripted() as session:
        result = queries.diff(session, "default", at(1), at(8))
    rows = {row.asset: row for row in result.assets}
    assert sorted(rows) == ["BNB", "BTC", "USDT"]
    assert (rows["USDT"].status, rows["USDT"].before.balance, rows["USDT"].after.balance) == (
        "changed", Decimal("100.00000000"), Decimal("120.00000000"))
    assert {name: format(value, "f") for name, value in rows["USDT"].change.items()} == {
        "balance": "20.00000000",
        "cross_wallet_balance": "20.00000000",
        "cross_un_pnl": "0.00000000",
        "available_balance": "20.00000000",
        "max_withdraw_amount": "20.00000000",
    }
    assert (rows["BTC"].status, rows["BTC"].before, rows["BTC"].after.balance, rows["BTC"].change) == (
        "appeared", None, Decimal("0.00100000"), None)
    assert (rows["BNB"].status, rows["BNB"].before.balance, rows["BNB"].after, rows["BNB"].change) == (
        "vanished", Decimal("0.5"), None, None)
    assert (result.start.last_poll_at, result.end.last_poll_at, result.end.in_gap) == (at(1), at(8), False)


def test_diff_gives_the_exact_served_change(scripted):
    with scripted() as session:
        result = queries.diff(session, "default", at(0), at(2), assets=["USDT"])
    (usdt,) = result.assets
    assert {name: format(value, "f") for name, value in usdt.change.items()} == {
        "balance": "-0.50000000",
        "cross_wallet_balance": "-0.50000000",
        "cross_un_pnl": "-0.25000000",
        "available_balance": "-0.50000000",
        "max_withdraw_amount": "-0.50000000",
    }
    assert (usdt.before.margin_available, usdt.after.margin_available, usdt.status) == (True, False, "changed")


def test_diff_into_a_gap_flags_the_stale_end(scripted):
    with scripted() as session:
        result = queries.diff(session, "default", at(2), at(5))
    assert [(row.asset, row.status) for row in result.assets] == [("BNB", "unchanged"), ("USDT", "unchanged")]
    assert result.assets[1].change["balance"] == Decimal(0)
    assert (result.end.status, result.end.stale_seconds) == ("gap", 180.0)


# --- changes -----------------------------------------------------------------------------


def test_changes_list_every_event_with_previous_value_and_delta(scripted):
    with scripted() as session:
        events = queries.changes(session, "default")
    assert [(e.observed_at, e.asset, e.kind, amounts(e.previous), e.current.balance) for e in events] == [
        (at(0), "BNB", "appeared", None, Decimal("0.5")),
        (at(0), "USDT", "appeared", None, Decimal("100")),
        (at(2), "USDT", "changed", (Decimal("100"), Decimal(0), True), Decimal("99.5")),
        (at(7), "BTC", "appeared", None, Decimal("0.001")),
        (at(7), "USDT", "changed", (Decimal("99.5"), Decimal("-0.25"), False), Decimal("120")),
        (at(8), "BNB", "vanished", (Decimal("0.5"), Decimal(0), True), None),
    ]
    assert [e.delta and format(e.delta["balance"], "f") for e in events] == [
        None, None, "-0.50000000", None, "20.50000000", None]
    assert format(events[4].delta["cross_un_pnl"], "f") == "0.25000000"


def test_changes_in_a_range_take_the_previous_value_from_before_it(scripted):
    with scripted() as session:
        events = queries.changes(session, "default", since=at(2), until=at(8))
        late = queries.changes(session, "default", since=at(7), assets=["BNB"])
    assert [(e.observed_at, e.asset, e.kind, e.previous and e.previous.balance) for e in events] == [
        (at(2), "USDT", "changed", Decimal("100")),
        (at(7), "BTC", "appeared", None),
        (at(7), "USDT", "changed", Decimal("99.5")),
    ]
    assert [(e.asset, e.kind, e.previous.balance, e.previous.observed_at) for e in late] == [
        ("BNB", "vanished", Decimal("0.5"), at(0))]


def test_an_asset_back_after_vanishing_appears_again_with_its_marker_as_previous(sessions):
    record(sessions, at(0), (USDT_100, BNB))
    record(sessions, at(1), (USDT_100,))
    record(sessions, at(2), (USDT_100, BNB))
    with sessions() as session:
        events = queries.changes(session, "default", since=at(1), assets=["BNB"])
        result = queries.diff(session, "default", at(1), at(2))
    assert [(e.kind, e.previous and e.previous.present) for e in events] == [("vanished", True), ("appeared", False)]
    assert [(row.asset, row.status) for row in result.assets] == [("BNB", "appeared"), ("USDT", "unchanged")]


# --- series ------------------------------------------------------------------------------


def test_series_carries_values_forward_and_marks_gaps_missing(scripted):
    with scripted() as session:
        points = queries.series(session, "default", "USDT", "balance", at(0), at(10), every="minute")
    assert [(p.start, p.end) for p in points[:2]] == [(at(0), at(1)), (at(1), at(2))]
    assert [(p.status, p.value) for p in points] == [
        ("ok", Decimal("100")),  # end 00:01
        ("ok", Decimal("100")),  # end 00:02: the 00:02 state is not before the end
        ("ok", Decimal("99.5")),
        ("gap", None),  # end 00:04: 120 s after 00:02, past the 90 s tolerance (one missed poll)
        ("gap", None),
        ("gap", None),
        ("gap", None),  # end 00:07: the 00:07 poll is not before the end
        ("ok", Decimal("120")),
        ("ok", Decimal("120")),
        ("ok", Decimal("120")),
    ]


def test_series_marks_unobserved_and_absent_assets(scripted):
    with scripted() as session:
        btc = queries.series(session, "default", "BTC", "balance", at(-2), at(8), every="minute")
        bnb = queries.series(session, "default", "BNB", "cross_un_pnl", at(7), at(9), every="minute")
    assert [p.status for p in btc] == ["unobserved"] * 9 + ["ok"]
    assert btc[-1].value == Decimal("0.00100000")
    assert [(p.status, p.value, p.observed_at) for p in bnb] == [("ok", Decimal(0), at(0)), ("absent", None, at(8))]


def days_script(sessions):
    # UTC                  Tokyo (+09:00)
    # 01-01 10:00 USDT 1   01-01 19:00
    # 01-01 16:00 USDT 2   01-02 01:00  <- after Tokyo's midnight, before UTC's
    # 01-02 01:00 USDT 3   01-02 10:00
    # 01-02 12:00, 23:00 unchanged
    for when, amount in [((1, 10), "1"), ((1, 16), "2"), ((2, 1), "3"), ((2, 12), "3"), ((2, 23), "3")]:
        moment = datetime(2026, 1, when[0], when[1], tzinfo=timezone.utc)
        record(sessions, moment, (asset("USDT", amount),), label="days")


def test_series_by_day_closes_days_in_utc_or_in_the_given_zone(sessions):
    from zoneinfo import ZoneInfo

    days_script(sessions)
    since, until = datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 3, tzinfo=timezone.utc)
    with sessions() as session:
        utc = queries.series(session, "days", "USDT", "balance", since, until, every="day", tolerance=timedelta(hours=12))
        tokyo = queries.series(session, "days", "USDT", "balance", since, until, every="day",
                               tolerance=timedelta(hours=12), tz=ZoneInfo("Asia/Tokyo"))
    assert [(p.start, p.end, p.value) for p in utc] == [
        (datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 2, tzinfo=timezone.utc), Decimal(2)),
        (datetime(2026, 1, 2, tzinfo=timezone.utc), datetime(2026, 1, 3, tzinfo=timezone.utc), Decimal(3)),
    ]
    assert [(p.start, p.end, p.value) for p in tokyo] == [
        (datetime(2025, 12, 31, 15, tzinfo=timezone.utc), datetime(2026, 1, 1, 15, tzinfo=timezone.utc), Decimal(1)),
        (datetime(2026, 1, 1, 15, tzinfo=timezone.utc), datetime(2026, 1, 2, 15, tzinfo=timezone.utc), Decimal(3)),
        (datetime(2026, 1, 2, 15, tzinfo=timezone.utc), datetime(2026, 1, 3, 15, tzinfo=timezone.utc), Decimal(3)),
    ]


# --- gaps --------------------------------------------------------------------------------


def test_gaps_find_the_failed_stretch_with_its_failures(scripted):
    with scripted() as session:
        (gap,) = queries.gaps(session, "default")
    assert (gap.start, gap.end, gap.seconds, gap.open_end) == (at(2), at(7), 300.0, False)
    assert gap.failures == {"ExchangeUnavailable": 3, "RateLimited": 1}


def test_gaps_include_silence_at_the_ends_of_the_range(scripted):
    with scripted() as session:
        found = queries.gaps(session, "default", since=at(-10), until=at(60))
    assert [(g.start, g.end, g.seconds, g.open_end, g.failures) for g in found] == [
        (at(-10), at(0), 600.0, False, {}),
        (at(2), at(7), 300.0, False, {"ExchangeUnavailable": 3, "RateLimited": 1}),
        (at(9), at(60), 3060.0, True, {}),
    ]


def test_a_gap_crossing_the_range_keeps_its_true_ends(scripted):
    with scripted() as session:
        found = queries.gaps(session, "default", since=at(5), until=at(6))
        none = queries.gaps(session, "default", tolerance=timedelta(minutes=10))
        other = queries.gaps(session, "other", since=at(0), until=at(10))
    assert [(g.start, g.end, sum(g.failures.values())) for g in found] == [(at(2), at(7), 4)]
    assert none == []
    assert [(g.start, g.end, g.open_end) for g in other] == [(at(0, 30), at(10), True)]
