"""On SQLite one scan per asset yields the count, extremes, largest moves and chart buckets
(recorder.queries.periods._scan_period); PostgreSQL keeps the per-figure queries. Both must give
the same exact values, ties included (first time of a high, earliest of equal moves), through
a vanished stretch, rows on bucket edges and amounts not in Binance's 8-decimal form.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from recorder.queries import periods
from recorder.reports.statement import build_statement
from tests.integration.test_queries import asset, at, record

BNB = asset("BNB", "1.00000000")
ETH = {0: "0.1", 1: "0.10000000001", 2: "0.3"}
# minute: (USDT balance or None for vanished, its unrealized PnL)
USDT = {
    0: ("10.00000000", "1.00000000"),
    1: ("12.00000000", "2.00000000"),
    2: ("10.00000000", "3.00000000"),
    3: ("12.00000000", "-1.00000000"),  # the high again: its first time stays 00:01
    4: ("12.00000000", "5.00000000"),  # only the PnL changes
    5: (None, None),
    6: ("7.00000000", "0.00000000"),  # back: no move from a vanished balance
}


def fill(sessions):
    for minute in range(10):
        usdt = USDT.get(minute, USDT[6])
        assets = [BNB, asset("ETH", ETH.get(minute, ETH[2]))]
        if usdt[0] is not None:
            assets.append(asset("USDT", usdt[0], unpnl=usdt[1]))
        record(sessions, at(minute), tuple(assets), label="scan")


def test_statement_figures_from_the_scan_are_exact(sessions):
    fill(sessions)
    with sessions() as session:
        statement = build_statement(session, at(0), at(10), ["scan"])
    (account,) = statement.accounts
    usdt = {a.asset: a for a in account.assets}["USDT"]
    assert usdt.changes == 7
    assert (usdt.high.value, usdt.high.at, usdt.low.value, usdt.low.at) == (Decimal("12"), at(1), Decimal("7"), at(6))
    assert [(m.asset, m.observed_at, m.delta) for m in account.largest_moves] == [
        ("USDT", at(1), Decimal("2")),
        ("USDT", at(2), Decimal("-2")),
        ("USDT", at(3), Decimal("2")),
        ("ETH", at(2), Decimal("0.19999999999")),
        ("ETH", at(1), Decimal("0.00000000001")),
    ]


def test_chart_buckets_from_the_scan_match_the_bucket_query(sessions):
    fill(sessions)
    with sessions() as session:
        connection = session.connection()
        account = periods.account_id(connection, "scan")
        activity = periods.period_activity(connection, account, at(0), at(10), chart_buckets=5)
        fields = {"balance": activity["USDT"].balance_units, "cross_un_pnl": activity["USDT"].pnl_units}
        queried = periods.buckets(connection, account, "USDT", fields, at(0), at(10), 5)[1]
        extremes = periods.range_extremes(connection, account, "ETH", at(0), at(10))
    scanned = activity["USDT"].buckets
    if connection.dialect.name == "sqlite":
        assert activity["ETH"].balance_units is False and activity["USDT"].balance_units is True
        assert activity["ETH"].extremes == extremes
        # (The SQLite bucket query, now only a fallback, places a row on a bucket edge by a
        # floating julianday() difference and can put it one bucket early; the scan compares
        # the stored time text with the edge's and places it exactly, as PostgreSQL does.)
    else:
        assert scanned is None  # PostgreSQL: the charts query for their buckets
        scanned = queried
    d = Decimal
    assert {name: [(b.index, b.low, b.high, b.last, b.last_at) for b in found] for name, found in scanned.items()} == {
        "balance": [
            (0, d("10"), d("12"), d("12"), at(1)),
            (1, d("10"), d("12"), d("12"), at(3)),
            (2, d("12"), d("12"), None, at(5)),
            (3, d("7"), d("7"), d("7"), at(6)),
        ],
        "cross_un_pnl": [
            (0, d("1"), d("2"), d("2"), at(1)),
            (1, d("-1"), d("3"), d("-1"), at(3)),
            (2, d("5"), d("5"), None, at(5)),
            (3, d("0"), d("0"), d("0"), at(6)),
        ],
    }


def test_a_period_inside_the_history_starts_from_the_state_in_force(sessions):
    """The first row of the period moves from the balance held before it; rows before are not read."""
    fill(sessions)
    with sessions() as session:
        statement = build_statement(session, at(2), at(4) + timedelta(seconds=1), ["scan"])
    usdt = {a.asset: a for a in statement.accounts[0].assets}["USDT"]
    assert usdt.changes == 3 and (usdt.opening.balance, usdt.high.at, usdt.low.at) == (Decimal("12"), at(3), at(2))
    assert [(m.asset, m.observed_at, m.delta) for m in statement.accounts[0].largest_moves] == [
        ("USDT", at(2), Decimal("-2")), ("USDT", at(3), Decimal("2")), ("ETH", at(2), Decimal("0.19999999999"))]
