"""Reconciliation on the hand-built scenario of tests/reconcile_scenario.py, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D

from sqlalchemy import inspect

import pytest

from recorder.errors import ConfigError
from recorder.ledger.reconcile import FLAG_LEDGER_GAP, PENDING, reconcile, roll_forward
from tests.reconcile_scenario import at, build


@pytest.fixture
def scenario(sessions):
    build(sessions)
    return sessions


def summary(intervals):
    """(asset, kind, from, to, change, explained, residual, flags) per interval."""
    return [
        (i.asset, i.kind, i.start, i.end, i.change, dict(i.explained), i.residual, i.flags)
        for i in intervals
    ]


def test_reconcile_matches_entries_by_update_time(scenario):
    """Each wallet change is explained per type; boundary, in-between-poll, withheld, unknown and vanish cases."""
    with scenario() as session:
        got = summary(reconcile(session, ["main"]))
    assert got == [
        ("BNB", "interval", at(-5), at(0, 20), D("-0.001"), {"COMMISSION": D("-0.001")}, D("0"), ()),
        ("USDT", "interval", at(0, -30), at(0, 30), D("-12.3"),
         {"COMMISSION": D("-0.2"), "FUNDING_FEE": D("-2.1"), "REALIZED_PNL": D("-10")}, D("0"), ()),
        ("USDT", "interval", at(0, 30), at(2, 50), D("50.0"), {"TRANSFER": D("50")}, D("0"), ()),
        ("USDT", "interval", at(2, 50), at(2, 55), D("-0.5"), {"COMMISSION": D("-0.5")}, D("0"), ()),
        ("USDT", "interval", at(2, 55), at(4, 30), D("-1.5"), {"FUNDING_FEE": D("-1")}, D("-0.5"), ("residual",)),
        ("USDT", "interval", at(4, 30), at(5, 30), D("0.5"), {"NEW_TYPE_X": D("0.5")}, D("0"), ("unknown-type",)),
        ("USDT", "interval", at(5, 30), at(7, 30), D("4.0"), {"TRANSFER": D("4")}, D("0"), ()),
        ("USDT", "pending", at(7, 30), None, None, {"FUNDING_FEE": D("-0.3")}, None, ()),
    ]


def test_reconcile_interval_sides_are_the_observed_states(scenario):
    """The vanished poll is skipped: the interval after it opens at the state before it."""
    with scenario() as session:
        usdt = [i for i in reconcile(session, ["main"], assets=["USDT"])]
    after_vanish = usdt[-2]
    assert (after_vanish.opened_at, after_vanish.observed_at) == (at(6), at(8))
    assert (after_vanish.opening, after_vanish.closing) == (D("136.2"), D("140.2"))
    assert usdt[-1].kind == PENDING and usdt[-1].opened_at == at(8)
    # The cross-wallet-only change at 2:00 is no wallet state: the interval runs 1:00 -> 3:00.
    assert (usdt[1].opened_at, usdt[1].observed_at) == (at(1), at(3))


def test_reconcile_multi_asset_exchange_and_unmoved_update_time(scenario):
    """An automatic exchange explains both assets; a balance move with no update_time move is all residual."""
    with scenario() as session:
        got = summary(reconcile(session, ["multi"]))
    assert got == [
        ("BTC", "interval", at(-1), at(0, 30), D("-0.0002"), {"AUTO_EXCHANGE": D("-0.0002")}, D("0"), ()),
        ("USDT", "interval", at(-1), at(0, 30), D("10"), {"AUTO_EXCHANGE": D("10")}, D("0"), ()),
        ("USDT", "interval", at(0, 30), at(0, 30), D("1"), {}, D("1"), ("residual",)),
        ("USDT", "interval", at(0, 30), at(1, 50), D("0"), {"TRANSFER": D("1")}, D("-1"), ("residual",)),
    ]


def test_reconcile_range_tolerance_and_flagged_only(scenario):
    with scenario() as session:
        window = summary(reconcile(session, ["main"], assets=["USDT"], since=at(4), until=at(6)))
        tolerant = list(reconcile(session, ["main"], assets=["USDT"], tolerance=D("0.5"), flagged_only=True))
        flagged = list(reconcile(session, ["main", "multi"], flagged_only=True))
        tail = list(reconcile(session, ["main"], assets=["USDT"], since=at(8), until=at(8, 30)))
    # Closing states observed in [4:00, 6:00); the opening of the first is the 3:00 state. No
    # pending row: a state observed after --until exists.
    assert [(row[2], row[3], row[6]) for row in window] == [(at(2, 50), at(2, 55), D("0")), (at(2, 55), at(4, 30), D("-0.5"))]
    assert [i.end for i in tolerant] == [at(5, 30)]
    assert [(i.account, i.end, i.flags) for i in flagged] == [
        ("main", at(4, 30), ("residual",)), ("main", at(5, 30), ("unknown-type",)),
        ("multi", at(0, 30), ("residual",)), ("multi", at(1, 50), ("residual",)),
    ]
    # The pending entry at 9:00 is after --until 8:30: not counted.
    assert [(i.kind, i.end) for i in tail] == [("interval", at(7, 30))]


def test_reconcile_ledger_gap_seam_flags_crossing_intervals(scenario):
    """A coverage callable (the ledger sync's) flags exactly the intervals crossing its hole."""
    calls = []

    def crosses_gap(account_id, start, end):
        calls.append((start, end))
        return start < at(3) <= end

    with scenario() as session:
        flagged = [(i.asset, i.end) for i in reconcile(session, ["main"], flagged_only=True, ledger_gaps=crosses_gap)
                   if FLAG_LEDGER_GAP in i.flags]
    assert flagged == [("USDT", at(4, 30))]
    assert (at(2, 55), at(4, 30)) in calls


def test_reconcile_ledger_gaps_from_coverage_stretches(scenario):
    """Covered stretches (the ledger sync's coverage) flag exactly the intervals not held whole by one."""
    from recorder.ledger.reconcile import ledger_coverage_gaps, ledger_gaps_from

    with scenario() as session:
        main = session.execute(text_account("main")).scalar_one()
        # Covered from 1 ms after -0:30 up to 2:50, and again from 4:00 on.
        gaps = ledger_gaps_from({main: [(at(0, -30) + timedelta(milliseconds=1), at(2, 50)), (at(4), at(10))]})
        flagged = [(i.asset, i.end) for i in reconcile(session, ["main"], ledger_gaps=gaps) if FLAG_LEDGER_GAP in i.flags]
        views = inspect(session.connection()).get_view_names()
        from_view = ledger_coverage_gaps(session)
    # BNB's only interval starts at -5:00, before any coverage; USDT's 2:50-2:55 and 2:55-4:30 cross the hole.
    assert flagged == [("BNB", at(0, 20)), ("USDT", at(2, 55)), ("USDT", at(4, 30))]
    # The ledger sync's migration adds the view; without it no interval is flagged for coverage.
    assert (from_view is None) == ("ledger_coverage" not in views)


def text_account(label):
    from sqlalchemy import select

    from recorder.models import Account

    return select(Account.id).where(Account.label == label)


def test_reconcile_refuses_unknown_account_and_naive_times(scenario):
    with scenario() as session:
        with pytest.raises(ConfigError, match="no account 'nope'"):
            list(reconcile(session, ["nope"]))
        with pytest.raises(ValueError, match="aware"):
            list(reconcile(session, ["main"], since=at(0).replace(tzinfo=None)))


def test_roll_forward_equals_reconcile_sums(scenario):
    """The statement's roll-forward over a period equals the sum of the period's intervals."""
    with scenario() as session:
        rolled = roll_forward(session, "main", "USDT", at(1), at(8))
        intervals = list(reconcile(session, ["main"], assets=["USDT"], since=at(1), until=at(8)))
        to_end = roll_forward(session, "main", "USDT", at(1), at(10))
    assert (rolled.opening, rolled.closing) == (D("100"), D("136.2"))
    assert dict(rolled.groups) == {"transfers": D("50"), "realized_pnl": D("-10"), "fees": D("-0.7"),
                                   "rebates": D("0"), "funding": D("-3.1"), "other": D("0.5")}
    assert rolled.unknown_types == ("NEW_TYPE_X",)
    assert rolled.expected_closing == D("136.7") and rolled.residual == D("-0.5")
    assert rolled.flags == ("residual", "unknown-type")
    assert rolled.pending == D("0")
    by_type: dict = {}
    for interval in intervals:
        for income_type, amount in interval.explained.items():
            by_type[income_type] = by_type.get(income_type, D(0)) + amount
    assert dict(rolled.by_type) == by_type
    assert rolled.residual == sum(i.residual for i in intervals)
    # Up to 10:00 the last state is 8:00's, and the 9:00 entry is pending.
    assert (to_end.closing, to_end.pending, to_end.residual) == (D("140.2"), D("-0.3"), D("-0.5"))


def test_view_agrees_with_the_library(scenario):
    """balance_reconciliation (migration 0010) holds the same intervals, sums and residuals as reconcile()."""
    from sqlalchemy import text

    from recorder.db_types import UtcDateTime

    times = {name: UtcDateTime() for name in ("opened_at", "observed_at", "from_time", "to_time")}
    query = text(
        "SELECT account, asset, opened_at, observed_at, from_time, to_time, opening, closing, change, line,"
        " income_type, amount, known_type FROM balance_reconciliation ORDER BY account, asset, observed_at, line,"
        " income_type"
    ).columns(**times)
    with scenario() as session:
        rows = session.execute(query).all()
        library = [i for i in reconcile(session, ["main", "multi"]) if i.kind == "interval"]
    from_view: dict = {}
    for row in rows:
        key = (row.account, row.asset, row.opened_at, row.observed_at, row.from_time, row.to_time,
               D(str(row.opening)), D(str(row.closing)), D(str(row.change)))
        lines = from_view.setdefault(key, {"explained": {}, "residual": None, "unknown": set()})
        if row.line == "residual":
            lines["residual"] = D(str(row.amount))
        else:
            lines["explained"][row.income_type] = D(str(row.amount))
            if not row.known_type:
                lines["unknown"].add(row.income_type)
    expected = {
        (i.account, i.asset, i.opened_at, i.observed_at, i.start, i.end, i.opening, i.closing, i.change):
            {"explained": dict(i.explained), "residual": i.residual, "unknown": set(i.unknown_types)}
        for i in library
    }
    assert len(library) == 11
    assert from_view == expected


def test_statement_roll_forward_equals_reconcile_sums(scenario):
    """The statement's roll-forward (JSON, CSV, text) carries the reconcile sums, the unknown type named."""
    import csv
    import io

    from recorder.reports.statement import build_statement, statement_document, write_statement

    with scenario() as session:
        built = build_statement(session, at(1), at(8), ["main"])
        intervals = list(reconcile(session, ["main"], since=at(1), until=at(8)))
    assets = {asset.asset: asset for asset in built.accounts[0].assets}
    for name in ("USDT", "BNB"):
        rolled = assets[name].roll_forward
        mine = [i for i in intervals if i.asset == name]
        assert rolled.expected_closing - rolled.opening == sum(i.explained_total for i in mine)
        assert rolled.residual == sum(i.residual for i in mine)
    usdt = statement_document(built)["accounts"][0]["assets"]
    usdt = next(a for a in usdt if a["asset"] == "USDT")["roll_forward"]
    assert (usdt["transfers"], usdt["fees"], usdt["other"], usdt["residual"]) == (D("50"), D("-0.7"), D("0.5"), D("-0.5"))
    assert usdt["unknown_types"] == ["NEW_TYPE_X"] and usdt["flags"] == ["residual", "unknown-type"]
    out = io.StringIO()
    write_statement(built, "csv", out)
    period = {row["asset"]: row for row in csv.DictReader(io.StringIO(out.getvalue())) if row["row"] == "period"}
    assert (period["USDT"]["rf_expected_closing"], period["USDT"]["rf_closing"], period["USDT"]["rf_residual"]) == (
        "136.7", "136.2", "-0.5")
    assert (period["BNB"]["rf_fees"], period["BNB"]["rf_residual"]) == ("-0.001", "0.000")
    out = io.StringIO()
    write_statement(built, "table", out)
    assert "USDT: unknown income type (counted under other, flagged): NEW_TYPE_X 0.5" in out.getvalue()


def test_html_report_renders_the_roll_forward(scenario):
    import re

    from recorder.reports.html import build_report, render_report

    with scenario() as session:
        page = render_report(build_report(session, at(1), at(8), ["main"]))
    table = page.split('<table class="rollforward">', 1)[1].split("</table>", 1)[0]
    usdt = next(row for row in table.split("<tr>") if row.startswith("<td>USDT</td>"))
    cells = re.findall(r'<td class="n[^"]*">([^<]*)</td>', usdt)
    # opening, transfers, realized PnL, fees, rebates, funding, other, expected closing, closing, residual
    assert cells == ["100", "50", "-10", "-0.7", "0", "-3.1", "0.5", "136.7", "136.2", "-0.5"]
    assert '<span class="warn">unknown type NEW_TYPE_X 0.5 (in other)</span>' in usdt
