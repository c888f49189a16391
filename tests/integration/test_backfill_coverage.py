"""`recorder backfill` reads the ledger's coverage: it never derives a balance across a stretch nobody archived."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from recorder.cli import cli
from recorder.ledger.backfill import archive_coverage, backfill
from recorder.models import Account, DerivedBalance, IncomeEntry, LedgerSync
from recorder.records import AssetBalance
from tests.integration.test_queries import record

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)
# (time, amount) of USDT funding fees before the first observation at T0 (balance 200).
API_ENTRIES = [(T0 - 10 * DAY, "-1.5"), (T0 - 6 * DAY, "4"), (T0 - 3 * DAY, "-0.25"), (T0 - DAY, "10")]


def observed(amount: str) -> AssetBalance:
    value = Decimal(amount)
    return AssetBalance("USDT", value, value, Decimal(0), value, value, True, T0)


def archive(sessions, windows: list[tuple[datetime, datetime]], imported: list[tuple[datetime, str]] = ()) -> None:
    """The first observation at T0, the API entries, the sync's `ok` windows and imported statement entries."""
    record(sessions, T0, (observed("200"),))
    with sessions.begin() as session:
        account_id = session.scalar(select(Account.id).where(Account.label == "default"))
        for tran, (when, amount) in enumerate(API_ENTRIES, start=1):
            session.add(IncomeEntry(account_id=account_id, time=when, income_type="FUNDING_FEE", tran_id=tran,
                                    asset="USDT", income=Decimal(amount), symbol="BTCUSDT", info="", trade_id="",
                                    known_type=True, source="api", recorded_at=T0))
        for tran, (when, amount) in enumerate(imported, start=1):
            session.add(IncomeEntry(account_id=account_id, time=when, income_type="TRANSFER", tran_id=-tran,
                                    asset="USDT", income=Decimal(amount), symbol="", info="", trade_id="",
                                    known_type=True, source="account-statement", recorded_at=T0))
        for start, end in windows:
            session.add(LedgerSync(account_id=account_id, attempt_id=str(uuid.uuid4()), started_at=T0, finished_at=T0,
                                   window_start=start, window_end=end, outcome="ok", pages=1, requests=1,
                                   entries_fetched=0, entries_new=0))


def derive(sessions, since: datetime):
    with sessions.begin() as session:
        coverage = archive_coverage(session, "default")
        result = backfill(session, "default", since=since, derived_at=T0, coverage=coverage)
    with sessions() as session:
        rows = session.execute(select(DerivedBalance.at, DerivedBalance.balance).order_by(DerivedBalance.at)).all()
    return coverage, result.assets[0], [(at, balance) for at, balance in rows]


def test_backfill_stops_at_a_gap_in_the_middle_of_the_coverage(sessions):
    # Synced T0-12d..T0-7d and T0-5d..T0+1h: nothing archived between T0-7d and T0-5d.
    archive(sessions, [(T0 - 12 * DAY, T0 - 7 * DAY), (T0 - 5 * DAY, T0 + timedelta(hours=1))])
    coverage, asset, rows = derive(sessions, T0 - 30 * DAY)
    assert coverage.complete_from == T0 - 12 * DAY and coverage.notes == ()
    assert asset.start == T0 - 5 * DAY and asset.entries == 2
    assert asset.stopped == "the ledger archive has a gap from 2026-02-22T12:00:00.000Z to 2026-02-24T12:00:00.000Z"
    # Walked back over the two covered entries only (each row: the balance after its entry); the
    # -1.5 and +4 before the gap are never used.
    assert rows == [(T0 - 5 * DAY, Decimal("190.25")), (T0 - 3 * DAY, Decimal("190")), (T0 - DAY, Decimal("200"))]


def test_backfill_joins_an_imported_file_that_spans_the_gap_and_says_how_it_judged_it(sessions):
    archive(sessions, [(T0 - 12 * DAY, T0 - 7 * DAY), (T0 - 5 * DAY, T0 + timedelta(hours=1))],
            imported=[(T0 - 7 * DAY - timedelta(hours=1), "-20"), (T0 - 4 * DAY, "5")])
    coverage, asset, rows = derive(sessions, T0 - 30 * DAY)
    assert coverage.notes == ("entries imported from account-statement files are taken to cover "
                              "2026-02-22T11:00:00.000Z to 2026-02-25T12:00:00.000Z, their first to last entry "
                              "(an import records no file span)",)
    assert asset.start == T0 - 12 * DAY and asset.entries == 6
    assert asset.stopped == "the ledger archive is complete only from 2026-02-17T12:00:00.000Z"
    assert rows[0] == (T0 - 12 * DAY, Decimal("200") - Decimal("-1.5") - 4 - Decimal("-0.25") - 10 + 20 - 5)


def test_backfill_derives_nothing_when_coverage_ends_before_the_first_observation(sessions):
    archive(sessions, [(T0 - 12 * DAY, T0 - 2 * DAY)])
    _, asset, rows = derive(sessions, T0 - 30 * DAY)
    assert asset.start is None and rows == []
    assert asset.stopped == ("the ledger archive covers nothing after 2026-02-27T12:00:00.000Z, before the first "
                             "observation at 2026-03-01T12:00:00.000Z: a balance derived across that would be invented")


def test_backfill_command_reads_the_coverage_and_says_where_it_stopped(sessions, db_url):
    archive(sessions, [(T0 - 12 * DAY, T0 - 7 * DAY), (T0 - 5 * DAY, T0 + timedelta(hours=1))])
    result = CliRunner().invoke(cli, ["backfill", "--database-url", db_url, "--days", "3650", "--no-snapshot-check"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "USDT: 3 derived balances from 2026-02-24T12:00:00.000Z (opening 190.25, 2 entries) up to the first "
        "observation 2026-03-01T12:00:00.000Z (200); stopped early: the ledger archive has a gap from "
        "2026-02-22T12:00:00.000Z to 2026-02-24T12:00:00.000Z",
    ]
