"""The period statement agrees with `balances --at` (queries.as_of) and `gaps` (queries.gaps), on both backends.

Uses the scripted account of test_queries (polls each minute from 00:00; USDT 100 -> 99.5 at
00:02 -> 120 at 00:07; BNB vanishes at 00:08; BTC appears at 00:07; failed polls 00:03-00:06,
so a gap from 00:02 to 00:07) and its unrelated account 'other' (one poll at 00:00:30).
"""

from __future__ import annotations

from datetime import timedelta, timezone
from decimal import Decimal

import pytest

from recorder import queries
from recorder.errors import ConfigError
from recorder.reports.statement import build_statement
from tests.integration.test_queries import SCRIPT, asset, at, record


@pytest.fixture
def scripted(sessions):
    for minute, outcome in SCRIPT:
        record(sessions, at(minute), outcome)
    record(sessions, at(0, 30), (asset("USDT", "5.00000000"),), label="other")
    return sessions


def statement_of(sessions, since, until, accounts=("default",), tz=timezone.utc):
    with sessions() as session:
        return build_statement(session, since, until, list(accounts), tz)


def by_asset(account_statement):
    return {a.asset: a for a in account_statement.assets}


def assert_agrees_with_balances_and_gaps(sessions, since, until, label="default"):
    """Opening, closing, change and coverage of every asset equal what as_of and gaps say."""
    statement = statement_of(sessions, since, until, [label])
    (account,) = statement.accounts
    with sessions() as session:
        opening = {p.asset: p for p in queries.as_of(session, label, since).positions}
        closing = {p.asset: p for p in queries.as_of(session, label, until).positions}
        found_gaps = queries.gaps(session, label, since=since, until=until)
    for name, row in by_asset(account).items():
        for mark, position in ((row.opening, opening[name]), (row.closing, closing[name])):
            assert mark.status == position.status
            expected = position.state.balance if position.state is not None else None
            assert mark.balance == expected
            assert mark.observed_at == (position.state.observed_at if position.state else None)
            if position.state is not None and position.state.present:
                assert mark.unrealized_pnl == position.state.cross_un_pnl
                assert mark.margin_balance == position.state.balance + position.state.cross_un_pnl
    assert [(g.start, g.end, dict(g.failures)) for g in account.coverage.gaps] == [
        (g.start, g.end, dict(g.failures)) for g in found_gaps
    ]
    blind = sum((min(g.end, until) - max(g.start, since)).total_seconds() for g in found_gaps)
    assert account.coverage.blind_seconds == blind
    assert account.coverage.observed_seconds == (until - since).total_seconds() - blind
    return account


def test_statement_over_a_gap_agrees_with_balances_and_gaps(scripted):
    account = assert_agrees_with_balances_and_gaps(scripted, at(0, 30), at(9, 30))
    assets = by_asset(account)
    usdt = assets["USDT"]
    assert (usdt.opening.balance, usdt.closing.balance, usdt.net_change) == (
        Decimal("100.00000000"), Decimal("120.00000000"), Decimal("20.00000000"))
    assert (usdt.high.value, usdt.high.at, usdt.low.value, usdt.low.at) == (
        Decimal("120.00000000"), at(7), Decimal("99.50000000"), at(2))
    assert usdt.changes == 2
    # No income entry in this history: the roll-forward leaves the whole net change as residual.
    assert (usdt.roll_forward.opening, usdt.roll_forward.closing, usdt.roll_forward.residual) == (
        Decimal("100.00000000"), Decimal("120.00000000"), Decimal("20.00000000"))
    assert [(g.start, g.end) for g in account.coverage.gaps] == [(at(2), at(7))]
    assert (account.coverage.blind_seconds, account.coverage.observed_seconds) == (300, 240)
    assert (account.coverage.polls.ok, account.coverage.polls.failed) == (5, 4)
    assert account.coverage.polls.failures == {"ExchangeUnavailable": 3, "RateLimited": 1}
    assert [(m.asset, m.observed_at, m.delta) for m in account.largest_moves] == [
        ("USDT", at(7), Decimal("20.50000000")), ("USDT", at(2), Decimal("-0.50000000"))]


def test_assets_appearing_and_vanishing_mid_period(scripted):
    assets = by_asset(assert_agrees_with_balances_and_gaps(scripted, at(1, 30), at(8, 30)))
    assert sorted(assets) == ["BNB", "BTC", "USDT"]
    bnb, btc = assets["BNB"], assets["BTC"]
    assert (bnb.opening.status, bnb.closing.status, bnb.closing.balance, bnb.net_change) == (
        "ok", "vanished", None, Decimal("-0.50000000"))
    assert (btc.opening.status, btc.opening.balance, btc.closing.status, btc.net_change, btc.changes) == (
        "unobserved", None, "ok", Decimal("0.00100000"), 1)


def test_opening_inside_a_gap_is_stale(scripted):
    assets = by_asset(assert_agrees_with_balances_and_gaps(scripted, at(4), at(9, 30)))
    usdt = assets["USDT"]
    assert (usdt.opening.status, usdt.opening.balance, usdt.opening.observed_at) == ("stale", Decimal("99.50000000"), at(2))
    assert usdt.opening.last_poll_at == at(2)


def test_period_starting_before_the_first_observation(scripted):
    account = assert_agrees_with_balances_and_gaps(scripted, at(-5), at(1, 30))
    usdt = by_asset(account)["USDT"]
    assert (usdt.opening.status, usdt.opening.balance, usdt.net_change) == ("before_first_poll", None, None)
    assert usdt.closing.balance == Decimal("100.00000000")
    assert [(g.start, g.end) for g in account.coverage.gaps] == [(at(-5), at(0))]
    assert account.coverage.blind_seconds == 300


def test_empty_period_holds_no_asset_and_is_blind(scripted):
    account = assert_agrees_with_balances_and_gaps(scripted, at(-20), at(-10))
    assert account.assets == ()
    assert (account.coverage.blind_seconds, account.coverage.observed_seconds) == (600, 0)
    assert (account.coverage.polls.ok, account.coverage.polls.failed) == (0, 0)
    (zero,) = statement_of(scripted, at(3), at(3)).accounts
    assert zero.coverage.blind_seconds == 0 and zero.coverage.gaps == () and zero.largest_moves == ()


def test_change_observed_exactly_at_since_belongs_to_the_period(scripted):
    """Half-open [since, until): the opening is the state just before since, so periods chain."""
    first = by_asset(statement_of(scripted, at(0, 30), at(2)).accounts[0])["USDT"]
    second = by_asset(statement_of(scripted, at(2), at(9)).accounts[0])["USDT"]
    assert first.closing.balance == second.opening.balance == Decimal("100.00000000")
    assert (second.changes, second.net_change) == (2, Decimal("20.00000000"))
    with scripted() as session:
        just_before = {p.asset: p for p in queries.as_of(session, "default", at(2) - timedelta(microseconds=1)).positions}
    assert second.opening.balance == just_before["USDT"].state.balance


def test_days_are_cut_at_midnight_in_the_zone(scripted):
    # At UTC-00:05 local midnight is 00:05 UTC: the first day runs 23:55-00:05 UTC.
    zone = timezone(-timedelta(minutes=5))
    usdt = by_asset(statement_of(scripted, at(-5), at(9, 30), tz=zone).accounts[0])["USDT"]
    assert [(d.day.isoformat(), d.start, d.end, d.open, d.close, d.change, d.blind_seconds) for d in usdt.days] == [
        ("2025-12-31", at(-5), at(5), None, Decimal("99.50000000"), None, 300 + 180),
        ("2026-01-01", at(5), at(9, 30), Decimal("99.50000000"), Decimal("120.00000000"), Decimal("20.50000000"), 120),
    ]


def test_accounts_stay_apart_and_unknown_ones_are_refused(scripted):
    statement = statement_of(scripted, at(0), at(10), ["other", "default"])
    assert [a.account for a in statement.accounts] == ["other", "default"]
    assert [(a.asset, a.closing.balance) for a in statement.accounts[0].assets] == [("USDT", Decimal("5.00000000"))]
    with pytest.raises(ConfigError, match="no account 'nope'"):
        statement_of(scripted, at(0), at(10), ["nope"])


def test_a_period_of_more_days_than_one_query_takes(scripted):
    """Day edges go to the database in chunks (SQLite caps a compound SELECT at 500 terms)."""
    usdt = by_asset(statement_of(scripted, at(0, 30) - timedelta(days=900), at(9, 30)).accounts[0])["USDT"]
    assert len(usdt.days) == 901
    assert all(day.open is None and day.close is None for day in usdt.days[:899])
    assert (usdt.days[899].close, usdt.days[900].open, usdt.days[900].close) == (
        None, None, Decimal("120.00000000"))
    assert usdt.net_change is None and usdt.closing.balance == Decimal("120.00000000")


def test_integer_comparison_and_exact_collation_agree(scripted):
    """On SQLite amounts of <= 8 decimals compare as integers of 1e-8; the decimal collation gives the same."""
    from recorder.queries import periods

    # Binance's form: 8 decimals, which SQLite may compare as integers of 1e-8.
    for minute, amount in enumerate(("-1.50000000", "-1.45000000", "0.00000001", "-0.50000000", "12.50000000")):
        record(scripted, at(20 + minute), (asset("USDT", amount, unpnl=amount),), label="signs")
    with scripted() as session:
        connection = session.connection()
        account = periods.account_id(connection, "signs")
        activity = periods.period_activity(connection, account, at(0), at(60))
        assert activity["USDT"].changes == 5
        if connection.dialect.name == "sqlite":
            assert activity["USDT"].balance_units and activity["USDT"].pnl_units
        results = [
            (
                periods.range_extremes(connection, account, "USDT", at(0), at(60), units=units),
                periods.largest_moves(connection, account, at(0), at(60),
                                      {"USDT": periods.Activity(5, units, units)}),
                periods.buckets(connection, account, "USDT", {"cross_un_pnl": units}, at(0), at(60), 2)[1]["cross_un_pnl"],
            )
            for units in (True, False)
        ]
    assert results[0] == results[1]
    (high, low), moves, found = results[0]
    assert (high.value, low.value) == (Decimal("12.5"), Decimal("-1.5"))
    assert [m.delta for m in moves] == [Decimal("13.0"), Decimal("1.45000001"), Decimal("-0.50000001"), Decimal("0.05")]
    assert [(b.low, b.high, b.last) for b in found] == [(Decimal("-1.5"), Decimal("12.5"), Decimal("12.5"))]


def test_amounts_not_in_binance_form_stay_exact(scripted):
    """More than 8 decimals, or fewer: compared by the exact decimal collation instead of as integers."""
    from recorder.queries import periods

    record(scripted, at(20), (asset("USDT", "0.123456789012"),), label="fine")
    record(scripted, at(21), (asset("USDT", "0.123456789013"),), label="fine")
    record(scripted, at(22), (asset("USDT", "0.123456789011"),), label="fine")
    record(scripted, at(23), (asset("USDT", "0.2"),), label="fine")
    record(scripted, at(24), (asset("USDT", "0.12345678901"),), label="fine")
    with scripted() as session:
        connection = session.connection()
        activity = periods.period_activity(connection, periods.account_id(connection, "fine"), at(20), at(30))
    assert activity["USDT"].changes == 5 and activity["USDT"].balance_units is False
    usdt = statement_of(scripted, at(20), at(30), ["fine"]).accounts[0].assets[0]
    assert [m.delta for m in statement_of(scripted, at(20), at(30), ["fine"]).accounts[0].largest_moves][:2] == [
        Decimal("-0.07654321099"), Decimal("0.076543210989")]
    assert (usdt.high.value, usdt.high.at, usdt.low.value, usdt.low.at) == (
        Decimal("0.2"), at(23), Decimal("0.12345678901"), at(24))
