"""A futures export never drops nor merges an entry silently.

Rows without a usable id are matched like statement rows; a key met with other content refuses the file.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest
from sqlalchemy import select

from recorder.ledger.imports import ImportFileError, import_file
from recorder.ledger.keys import is_api_synthetic
from recorder.ledger.sync import from_ms
from recorder.models import Account, IncomeEntry
from tests.conftest import SIM_KEY
from tests.integration.test_ledger_import import FUTURES_EXPORT, NOW, account, do_import, stored, write  # noqa: F401
from tests.integration.test_ledger_sync import make_sync
from tests.integration.test_ledger_tranid import transfer

HEADER = "Date(UTC),type,Amount,Asset,Symbol,Transaction ID\n"


def transfers(sessions) -> list[tuple[Decimal, int, str]]:
    """(income, tran_id, source) of every stored TRANSFER, in time, amount and id order."""
    with sessions() as session:
        return [tuple(row) for row in session.execute(
            select(IncomeEntry.income, IncomeEntry.tran_id, IncomeEntry.source).where(IncomeEntry.income_type == "TRANSFER")
            .order_by(IncomeEntry.time, IncomeEntry.income, IncomeEntry.tran_id))]


def test_tran_id_zero_rows_are_each_an_entry_and_a_second_import_adds_nothing(sessions, account, tmp_path):
    text = HEADER + (
        "2026-03-01 10:00:00,TRANSFER,50,USDT,,0\n"
        "2026-03-01 10:00:00,TRANSFER,50,USDT,,0\n"
        "2026-03-01 10:00:00,TRANSFER,-20,USDT,,0\n"
        "2026-03-01 11:00:00,TRANSFER,7.5,USDT,,-3\n"
        "2026-03-01 12:00:00,TRANSFER,50,USDT,,4401\n"
    )
    path = write(tmp_path, "export.csv", text)
    first = do_import(sessions, account, path)
    assert (first.rows, first.added, first.already_archived) == (5, 5, 0)
    rows = transfers(sessions)
    assert [(income, source) for income, _, source in rows] == [
        (Decimal("-20"), "futures-export"), (Decimal("50"), "futures-export"), (Decimal("50"), "futures-export"),
        (Decimal("7.5"), "futures-export"), (Decimal("50"), "futures-export")]
    synthetic = [tran for _, tran, _ in rows[:4]]
    assert len(set(synthetic)) == 4 and all(tran < 0 and tran % 2 == 0 for tran in synthetic)
    assert rows[4][1] == 4401
    # Again, zipped, with the amounts re-saved by a spreadsheet: the same ids, nothing added.
    again = do_import(sessions, account, write(tmp_path, "again.csv", text.replace(",50,", ",50.00,"), zipped=True))
    assert (again.added, again.already_archived) == (0, 5)
    assert transfers(sessions) == rows
    # A later export that shows a third identical transfer in that second adds it alone.
    more = do_import(sessions, account, write(tmp_path, "more.csv", text + "2026-03-01 10:00:00,TRANSFER,50,USDT,,0\n"))
    assert (more.added, more.already_archived) == (1, 5)
    assert len(transfers(sessions)) == 6


def test_a_row_without_an_id_is_not_taken_for_the_files_own_keyed_entry(sessions, account, tmp_path):
    """The file lists a keyed transfer and an unkeyed one alike: two movements, though the archive holds one."""
    with sessions.begin() as session:
        account_id = session.scalar(select(Account.id).where(Account.label == account))
        session.add(IncomeEntry(account_id=account_id, time=datetime(2026, 3, 2, 9, 0, 0, 300000, tzinfo=timezone.utc),
                                income_type="TRANSFER", tran_id=4501, asset="USDT", income=Decimal("5"), symbol="",
                                info="TRANSFER", trade_id="", known_type=True, source="api", recorded_at=NOW))
    text = HEADER + "2026-03-02 09:00:00,TRANSFER,5,USDT,,4501\n2026-03-02 09:00:00,TRANSFER,5,USDT,,0\n"
    result = do_import(sessions, account, write(tmp_path, "export.csv", text))
    assert (result.added, result.already_archived) == (1, 1)
    assert [(income, source) for income, _, source in transfers(sessions)] == [
        (Decimal("5"), "futures-export"), (Decimal("5"), "api")]
    # Without its keyed row, a later file's unkeyed row is the API's entry: already archived.
    alone = do_import(sessions, account, write(tmp_path, "alone.csv", HEADER + "2026-03-02 09:00:00,TRANSFER,5,USDT,,0\n"))
    assert (alone.added, alone.already_archived) == (0, 1)


def test_api_sync_after_the_export_counts_each_tran_id_zero_movement_once(simulator, sessions, tmp_path):
    now = simulator.server_time_ms()
    second = (now - 60_000) // 1000 * 1000
    twin, other = transfer(second + 250, "10"), transfer(second + 700, "-4.5")
    served = [twin, twin, other, transfer(second - 5_000, "1", tran_id=4601)]
    simulator.add_income(SIM_KEY, served)
    text = HEADER + "".join(f"{from_ms(row['time']):%Y-%m-%d %H:%M:%S},TRANSFER,{row['income']},USDT,,{row['tranId']}\n"
                            for row in served)
    path = write(tmp_path, "export.csv", text)
    with sessions.begin() as session:
        imported = import_file(session, "default", path, recorded_at=from_ms(now), base_url=simulator.base_url)
    assert (imported.added, imported.already_archived) == (4, 0)
    assert [source for _, _, source in transfers(sessions)] == ["futures-export"] * 4

    result = make_sync(simulator, sessions).sync_once()
    # The three unkeyed movements are the API's now (its synthetic ids); the keyed one met its key.
    assert result.entries_new == 3
    rows = transfers(sessions)
    assert [(income, source) for income, _, source in rows] == [
        (Decimal("1"), "futures-export"), (Decimal("10"), "api"), (Decimal("10"), "api"), (Decimal("-4.5"), "api")]
    assert all(is_api_synthetic(tran) for _, tran, _ in rows[1:])
    assert sum(income for income, _, _ in rows) == sum(Decimal(row["income"]) for row in served)
    # The file again, after the API: every row is archived, nothing added.
    with sessions.begin() as session:
        again = import_file(session, "default", path, recorded_at=from_ms(now))
    assert (again.added, again.already_archived) == (0, 4)
    assert make_sync(simulator, sessions).sync_once().entries_new == 0
    assert transfers(sessions) == rows


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("2026-01-02 09:15:01,REALIZED_PNL,12.6,USDT,BTCUSDT,77001",
         "line 3: REALIZED_PNL tranId 77001 USDT has Amount 12.6 where the archive holds 12.5 (from futures-export); "
         "nothing of the file is stored"),
        ("2026-01-02 09:15:02,REALIZED_PNL,12.5,USDT,BTCUSDT,77001",
         "line 3: REALIZED_PNL tranId 77001 USDT has Date(UTC) 2026-01-02 09:15:02 where the archive holds "
         "2026-01-02 09:15:01 (from futures-export); nothing of the file is stored"),
    ],
    ids=["amount", "time"],
)
def test_a_key_archived_with_other_content_refuses_the_file(sessions, account, tmp_path, line, problem):
    do_import(sessions, account, write(tmp_path, "export.csv", FUTURES_EXPORT))
    before = stored(sessions)
    text = HEADER + ("2026-01-05 00:00:00,FUNDING_FEE,-1,USDT,BTCUSDT,99101\n"  # new: not stored either
                     f"{line}\n"
                     "2026-01-05 00:00:00,TRANSFER,3,USDT,,0\n")
    path = write(tmp_path, "conflict.csv", text)
    with pytest.raises(ImportFileError) as raised:
        do_import(sessions, account, path)
    assert str(raised.value) == f"{path}: {problem}"
    assert stored(sessions) == before


def test_an_api_entrys_milliseconds_are_the_files_second(sessions, account, tmp_path):
    """The export truncates or rounds milliseconds (unknown which): less than a second either way is the same time."""
    with sessions.begin() as session:
        account_id = session.scalar(select(Account.id).where(Account.label == account))
        for tran, second, ms in ((4701, 59, 200), (4702, 58, 900)):
            session.add(IncomeEntry(account_id=account_id, time=datetime(2026, 3, 3, 7, 59, second, ms * 1000, tzinfo=timezone.utc),
                                    income_type="FUNDING_FEE", tran_id=tran, asset="USDT", income=Decimal("-0.25"),
                                    symbol="BTCUSDT", info="", trade_id="", known_type=True, source="api",
                                    recorded_at=NOW))
    rounded = HEADER + "2026-03-03 08:00:00,FUNDING_FEE,-0.25000000,USDT,BTCUSDT,4701\n"
    assert do_import(sessions, account, write(tmp_path, "rounded.csv", rounded)).already_archived == 1
    late = HEADER + "2026-03-03 08:00:00,FUNDING_FEE,-0.25,USDT,BTCUSDT,4702\n"
    path = write(tmp_path, "late.csv", late)
    with pytest.raises(ImportFileError) as raised:
        do_import(sessions, account, path)
    assert str(raised.value) == (
        f"{path}: line 2: FUNDING_FEE tranId 4702 USDT has Date(UTC) 2026-03-03 08:00:00 where the archive holds "
        "2026-03-03 07:59:58.900 (from api); nothing of the file is stored")


def test_a_key_twice_in_one_file_with_other_content_refuses_it(sessions, account, tmp_path):
    text = HEADER + ("2026-03-04 00:00:00,TRANSFER,8,USDT,,4801\n"
                     "2026-03-04 00:00:00,TRANSFER,8,USDT,,4801\n"  # listed twice: one entry
                     "2026-03-04 00:00:00,TRANSFER,9,USDT,,4801\n")
    path = write(tmp_path, "twice.csv", text)
    with pytest.raises(ImportFileError) as raised:
        do_import(sessions, account, path)
    assert str(raised.value) == (f"{path}: line 4: TRANSFER tranId 4801 USDT has Amount 9 where line 2 has 8; "
                                 "nothing of the file is stored")
    assert stored(sessions) == []
    result = do_import(sessions, account, write(tmp_path, "once.csv", text.rsplit("2026", 1)[0]))
    assert (result.added, result.already_archived) == (1, 1)


def test_the_simulators_tran_id_zero_transfers_imported_then_synced_are_counted_once(simulator, sessions, tmp_path):
    """The simulator books TRANSFERs with tranId 0 among trades: the whole export, then the API, sum to the ledger."""
    simulator.set_transfer_tran_id(SIM_KEY, 0)
    steps = 0
    while sum(row["incomeType"] == "TRANSFER" for row in simulator.income_entries(SIM_KEY)) < 3:
        simulator.step()
        steps += 1
        assert steps < 5000, "the simulator made fewer than three transfers"
    served = simulator.income_entries(SIM_KEY)
    assert {row["tranId"] for row in served if row["incomeType"] == "TRANSFER"} == {0}
    text = HEADER + "".join(f"{from_ms(row['time']):%Y-%m-%d %H:%M:%S},{row['incomeType']},{row['income']},"
                            f"{row['asset']},{row['symbol']},{row['tranId']}\n" for row in served)
    with sessions.begin() as session:
        imported = import_file(session, "default", write(tmp_path, "export.csv", text),
                               recorded_at=from_ms(simulator.server_time_ms()), base_url=simulator.base_url)
    assert imported.added == len(served)
    make_sync(simulator, sessions).sync_once()
    with sessions() as session:
        entries = session.execute(select(IncomeEntry.income_type, IncomeEntry.income, IncomeEntry.source)).all()
    assert len(entries) == len(served)
    assert sum(income for _, income, _ in entries) == sum(Decimal(row["income"]) for row in served)
    assert sorted(source for income_type, _, source in entries if income_type == "TRANSFER") == ["api"] * sum(
        row["incomeType"] == "TRANSFER" for row in served)
