"""Income entries that share Binance's key are never dropped silently, on SQLite and PostgreSQL.

Entries without a usable tranId (TRANSFER rows with tranId 0, third parties report) get a
synthetic key from their content and occurrence; a real key arriving with other content fails
the window. Every case goes through the simulator's GET /fapi/v1/income over real HTTP.
"""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from alembic import command
from click.testing import CliRunner
from sqlalchemy import select, text

from recorder.cli import cli
from recorder.errors import BadPayload
from recorder.ledger.imports import import_file
from recorder.ledger.keys import api_tran_id, is_api_synthetic
from recorder.ledger.reconcile import reconcile, roll_forward
from recorder.ledger.sync import LedgerSync, from_ms
from recorder.models import IncomeEntry, LedgerSync as LedgerSyncRow
from recorder.queries.ledger import LedgerListing
from recorder.records import IncomeRecord
from recorder.schema import alembic_config
from tests.conftest import SIM_KEY
from tests.integration.test_ledger_sync import make_client, make_sync, sync_rows, trade


def transfer(time_ms: int, income: str, *, tran_id: int = 0, info: str = "TRANSFER") -> dict:
    return {"symbol": "", "incomeType": "TRANSFER", "income": income, "asset": "USDT", "info": info,
            "time": time_ms, "tranId": tran_id, "tradeId": ""}


def stored(sessions, income_type: str = "TRANSFER") -> list[tuple[int, Decimal, int]]:
    """(time in ms, income, tran_id) of every stored entry of one type, in time and id order."""
    with sessions() as session:
        rows = session.execute(select(IncomeEntry).where(IncomeEntry.income_type == income_type)
                               .order_by(IncomeEntry.time, IncomeEntry.tran_id)).scalars().all()
        return [(round(r.time.timestamp() * 1000), r.income, r.tran_id) for r in rows]


def record(row: dict) -> IncomeRecord:
    """A served wire row as the sync reads it."""
    return IncomeRecord(time=from_ms(row["time"]), time_ms=row["time"], income_type=row["incomeType"],
                        tran_id=row["tranId"], asset=row["asset"], income=Decimal(row["income"]),
                        symbol=row["symbol"], info=row["info"], trade_id=row["tradeId"])


def test_two_tran_id_zero_transfers_are_two_rows_and_stay_two(simulator, sessions):
    now = simulator.server_time_ms()
    first, second = transfer(now - 20, "10"), transfer(now - 10, "-4.5")
    simulator.add_income(SIM_KEY, [first, second])
    result = make_sync(simulator, sessions).sync_once()
    assert result.entries_new == 2
    expected = sorted([(now - 20, Decimal("10"), api_tran_id(record(first), 0)),
                       (now - 10, Decimal("-4.5"), api_tran_id(record(second), 0))])
    assert stored(sessions) == expected and all(is_api_synthetic(tran) for _, _, tran in expected)
    # The next sync reads both again (its OVERLAP): still two, nothing new.
    again = make_sync(simulator, sessions).sync_once()
    assert (again.entries_fetched, again.entries_new) == (2, 0)
    assert stored(sessions) == expected
    assert [r.entries_fetched for r in sync_rows(sessions)][-1] == 2


def test_identical_twins_are_two_movements_and_a_late_third_is_added(simulator, sessions):
    now = simulator.server_time_ms()
    twin = transfer(now - 30, "7")
    simulator.add_income(SIM_KEY, [twin, twin])
    assert make_sync(simulator, sessions).sync_once().entries_new == 2
    assert make_sync(simulator, sessions).sync_once().entries_new == 0
    ids = [api_tran_id(record(twin), n) for n in range(3)]
    assert sorted(tran for _, _, tran in stored(sessions)) == sorted(ids[:2])
    # Binance books one more identical transfer in that millisecond later: the next sync adds it alone.
    simulator.add_income(SIM_KEY, [twin])
    assert make_sync(simulator, sessions).sync_once().entries_new == 1
    assert sorted(tran for _, _, tran in stored(sessions)) == sorted(ids)
    assert len(set(ids)) == 3


def test_paging_across_a_millisecond_with_twins_counts_each_once(simulator, sessions):
    """A page ends among twins; the millisecond asked again shows them all: the most, not the sum."""
    now = simulator.server_time_ms()
    t1, t2, t3 = now - 300, now - 200, now - 100
    twin = transfer(t2, "3")
    commissions = [{"symbol": "BTCUSDT", "incomeType": "COMMISSION", "income": "-0.1", "asset": "USDT", "info": "",
                    "time": t1, "tranId": 500 + i, "tradeId": str(i)} for i in range(2)]
    simulator.add_income(SIM_KEY, [*commissions, twin, twin, twin, transfer(t3, "1")])
    # Pages of 4: [c, c, z, z] ends inside t2 (its window ends before t2); [z, z, z, t3] is full
    # again (the next window ends before t3); [t3] ends the sync.
    result = make_sync(simulator, sessions, page_limit=4).sync_once()
    assert [row.requests for row in sync_rows(sessions)][-3:] == [1, 1, 1] and result.entries_new == 6
    assert [row.entries_fetched for row in sync_rows(sessions)][-3:] == [2, 3, 1]
    assert [(time, income) for time, income, _ in stored(sessions)] == [
        (t2, Decimal("3")), (t2, Decimal("3")), (t2, Decimal("3")), (t3, Decimal("1"))]
    # The same millisecond read again by the next sync, with other page cuts: nothing more.
    assert make_sync(simulator, sessions, page_limit=2).sync_once().entries_new == 0
    assert len(stored(sessions)) == 4


def test_a_crowded_millisecond_read_by_page_adds_its_pages_twins(simulator, sessions):
    """Pages 2, 3... of one millisecond are one answer cut in parts: their twins add up."""
    now = simulator.server_time_ms()
    crowded = now - 100
    twin = transfer(crowded, "2")
    realized = [{"symbol": "BTCUSDT", "incomeType": "REALIZED_PNL", "income": "1", "asset": "USDT", "info": "",
                 "time": crowded, "tranId": 900 + i, "tradeId": ""} for i in range(3)]
    simulator.add_income(SIM_KEY, [realized[0], twin, twin, realized[1], twin, realized[2], twin, twin])
    result = make_sync(simulator, sessions, page_limit=2).sync_once()
    assert result.entries_new == 8
    assert len(stored(sessions)) == 5 and len(stored(sessions, "REALIZED_PNL")) == 3
    assert make_sync(simulator, sessions, page_limit=3).sync_once().entries_new == 0


def test_reconciliation_and_export_count_every_tran_id_zero_transfer(simulator, sessions, db_url, tmp_path):
    from recorder.service import Recorder

    simulator.set_transfer_tran_id(SIM_KEY, 0)
    recorder = Recorder(client=make_client(simulator), sessions=sessions, account="default")
    recorder.poll_once()
    since = datetime.now(timezone.utc)
    # The simulator transfers on about one step in fifty; trade until it has made three.
    steps = 0
    while sum(row["incomeType"] == "TRANSFER" for row in simulator.income_entries(SIM_KEY)) < 3:
        trade(simulator, 20)
        steps += 20
        assert steps < 5000, "the simulator made fewer than three transfers"
    recorder.poll_once()
    LedgerSync(client=recorder.client, sessions=sessions, account="default").sync_once()
    transfers = [row for row in simulator.income_entries(SIM_KEY) if row["incomeType"] == "TRANSFER"]
    assert {row["tranId"] for row in transfers} == {0}
    assert len(stored(sessions)) == len(transfers)
    wallet = Decimal(next(row["balance"] for row in simulator.get_balances(SIM_KEY) if row["asset"] == "USDT"))
    with sessions() as session:
        listing = list(LedgerListing(session, "default", since=None, until=None))
        intervals = list(reconcile(session, ["default"], assets=["USDT"]))
        rolled = roll_forward(session, "default", "USDT", since, datetime.now(timezone.utc))
    assert [line.running_balance for line in listing if line.asset == "USDT"][-1] == wallet
    assert intervals and all(i.residual in (None, Decimal(0)) and "residual" not in i.flags for i in intervals)
    assert sum(i.explained.get("TRANSFER", Decimal(0)) for i in intervals) == sum(Decimal(r["income"]) for r in transfers)
    assert rolled is not None and rolled.residual == 0
    assert rolled.groups["transfers"] == sum(Decimal(r["income"]) for r in transfers)
    out = tmp_path / "ledger.csv"
    result = CliRunner().invoke(cli, ["export", "--database-url", db_url, "--what", "ledger", "--out", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8") as handle:
        exported = [row for row in csv.DictReader(handle) if row["income_type"] == "TRANSFER"]
    assert sorted(int(row["tran_id"]) for row in exported) == sorted(tran for _, _, tran in stored(sessions))
    assert sum(Decimal(row["income"]) for row in exported) == sum(Decimal(r["income"]) for r in transfers)


def test_a_real_key_twice_in_one_window_with_other_amounts_fails_the_window(simulator, sessions):
    now = simulator.server_time_ms()
    simulator.add_income(SIM_KEY, [transfer(now - 50, "1", tran_id=0),
                                   transfer(now - 40, "10", tran_id=77), transfer(now - 40, "11", tran_id=77)])
    with pytest.raises(BadPayload) as caught:
        make_sync(simulator, sessions).sync_once()
    line = "/fapi/v1/income: TRANSFER tranId 77 USDT came twice in this window with income 10 and 11; not stored"
    assert str(caught.value) == line
    assert stored(sessions) == []
    *earlier, row = sync_rows(sessions)
    assert all(r.outcome == "ok" and r.entries_new == 0 for r in earlier)
    assert (row.outcome, row.error_class, row.error_message) == ("failed", "BadPayload", line)


def test_a_real_key_arriving_again_with_another_time_fails_against_the_archive(simulator, sessions):
    now = simulator.server_time_ms()
    simulator.add_income(SIM_KEY, [transfer(now - 600_000, "10", tran_id=77)])
    make_sync(simulator, sessions).sync_once()
    before = stored(sessions)
    # The same key again inside the next sync's overlap, ten minutes later, beside a new entry.
    simulator.add_income(SIM_KEY, [transfer(now - 100, "10", tran_id=77), transfer(now - 90, "5", tran_id=78)])
    for _ in range(2):  # every later sync refuses it again, never half-stores the window
        with pytest.raises(BadPayload) as caught:
            make_sync(simulator, sessions).sync_once()
        assert str(caught.value) == (
            f"/fapi/v1/income: TRANSFER tranId 77 USDT arrived again with time {now - 100} where the archive "
            f"holds {now - 600_000} (from api); window not stored")
        assert stored(sessions) == before
    assert [r.outcome for r in sync_rows(sessions)][-2:] == ["failed", "failed"]


def test_a_futures_export_row_is_compared_on_what_it_holds(simulator, sessions, tmp_path):
    now = simulator.server_time_ms()
    when = from_ms(now - 5_000)
    path = Path(tmp_path / "export.csv")
    path.write_text("Date(UTC),type,Amount,Asset,Symbol,Transaction ID\n"
                    f"{when:%Y-%m-%d %H:%M:%S},TRANSFER,10,USDT,,77\n"
                    f"{when:%Y-%m-%d %H:%M:%S},TRANSFER,3,USDT,,78\n")
    with sessions.begin() as session:
        import_file(session, "default", path, recorded_at=when, base_url=simulator.base_url)
    # 77 matches within the second and on the amount (info and ms are not in the file); 78's amount differs.
    simulator.add_income(SIM_KEY, [transfer(now - 5_000, "10", tran_id=77), transfer(now - 5_000, "4", tran_id=78)])
    with pytest.raises(BadPayload, match=r"TRANSFER tranId 78 USDT arrived again with income 4 where the archive "
                                         r"holds 3\S* \(from futures-export\)"):
        make_sync(simulator, sessions).sync_once()
    assert [income for _, income, _ in stored(sessions)] == [Decimal(10), Decimal(3)]


def test_migration_0012_rekeys_stored_zero_ids_so_the_next_sync_meets_them(db_url, simulator):
    from recorder.db import make_engine, make_sessions

    engine = make_engine(db_url)
    try:
        config = alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0011")
        now = simulator.server_time_ms()
        old = transfer(now - 100, "10.50000000")
        simulator.add_income(SIM_KEY, [old, transfer(now - 50, "2")])
        odd_statement, even_statement = -(2**63 - 1), -12
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO accounts (id, label, environment, created_at) VALUES (1, 'default', 'local', :at)"
            ), {"at": from_ms(now - 1000)})
            for tran, income, source, time_ms in ((0, "10.50000000", "api", now - 100),
                                                  (odd_statement, "1", "account-statement", now - 86_400_000),
                                                  (even_statement, "2", "account-statement", now - 86_400_000)):
                connection.execute(text(
                    "INSERT INTO income_entries (account_id, time, income_type, tran_id, asset, income, symbol, info, "
                    "trade_id, known_type, source, recorded_at) VALUES (1, :time, 'TRANSFER', :tran, 'USDT', :income, "
                    "'', :info, '', true, :source, :time)"
                ), {"time": from_ms(time_ms), "tran": tran, "income": income, "source": source,
                    "info": "TRANSFER" if source == "api" else ""})
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        sessions = make_sessions(engine, write=True)
        assert sorted(tran for _, _, tran in stored(sessions)) == sorted(
            [api_tran_id(record(old), 0), -(2**63), even_statement])
        # The API row stored before the upgrade is the occurrence the sync computes: met, not doubled.
        result = make_sync(simulator, sessions).sync_once()
        assert result.entries_new == 1
        assert len(stored(sessions)) == 4
    finally:
        engine.dispose()


def test_a_futures_export_time_is_met_within_a_second_either_way(simulator, sessions, tmp_path):
    """Whether the export truncates or rounds the milliseconds is unknown: a second either way is one time."""
    now = simulator.server_time_ms()
    second = (now - 10_000) // 1000 * 1000
    path = Path(tmp_path / "export.csv")
    path.write_text("Date(UTC),type,Amount,Asset,Symbol,Transaction ID\n"
                    f"{from_ms(second):%Y-%m-%d %H:%M:%S},TRANSFER,10,USDT,,79\n"
                    f"{from_ms(second):%Y-%m-%d %H:%M:%S},TRANSFER,2,USDT,,80\n")
    with sessions.begin() as session:
        import_file(session, "default", path, recorded_at=from_ms(now), base_url=simulator.base_url)
    simulator.add_income(SIM_KEY, [transfer(second - 400, "10", tran_id=79)])  # the file rounded up
    assert make_sync(simulator, sessions).sync_once().entries_new == 0
    simulator.add_income(SIM_KEY, [transfer(second + 1_000, "2", tran_id=80)])
    with pytest.raises(BadPayload) as caught:
        make_sync(simulator, sessions).sync_once()
    assert str(caught.value).startswith("/fapi/v1/income: TRANSFER tranId 80 USDT arrived again with time ")
    assert "(from futures-export); window not stored" in str(caught.value)
    assert len(stored(sessions)) == 2
