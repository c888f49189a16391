"""recorder import: Binance's downloaded files into the income archive, once, merged with API entries."""

from __future__ import annotations

import zipfile
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from recorder.ledger.imports import ImportFileError, import_file, read_file, statement_tran_id
from recorder.models import Account, IncomeEntry
from recorder.store import ensure_account

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
FUTURES_EXPORT = (
    "Date(UTC),type,Amount,Asset,Symbol,Transaction ID\r\n"
    "2026-01-02 08:00:00,FUNDING_FEE,-0.01234567,USDT,BTCUSDT,9223372036854775801\r\n"
    "2026-01-02 09:15:01,REALIZED_PNL,12.5,USDT,BTCUSDT,77001\r\n"
    "2026-01-02 09:15:01,COMMISSION,-0.00000001,BNB,BTCUSDT,77001\r\n"
    "2026-01-03 10:00:00,COIN_SWAP_WITHDRAW,-100,USDT,,88001\r\n"
    "2026-01-03 10:00:00,COIN_SWAP_DEPOSIT,99.9,USDC,,88001\r\n"
    "2026-01-04 00:00:00,NEW_TYPE_2027,1,USDT,,99001\r\n"
)
STATEMENT_HEADER = "User_ID,UTC_Time,Account,Operation,Coin,Change,Remark\n"


@pytest.fixture
def account(sessions) -> str:
    with sessions.begin() as session:
        ensure_account(session, "main", "http://127.0.0.1:9", NOW)
    return "main"


def write(tmp_path: Path, name: str, text: str, *, zipped: bool = False) -> Path:
    if not zipped:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path
    path = tmp_path / (name + ".zip")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(name, text)
    return path


def do_import(sessions, account, path):
    with sessions.begin() as session:
        return import_file(session, account, path, recorded_at=NOW)


def stored(sessions):
    with sessions() as session:
        return session.execute(
            select(IncomeEntry.time, IncomeEntry.income_type, IncomeEntry.tran_id, IncomeEntry.asset,
                   IncomeEntry.income, IncomeEntry.known_type, IncomeEntry.source, IncomeEntry.trade_id)
            .order_by(IncomeEntry.time, IncomeEntry.income_type, IncomeEntry.asset)
        ).all()


@pytest.mark.parametrize("zipped", [False, True], ids=["bare", "zipped"])
def test_futures_export_imported_once_whether_zipped_or_not(sessions, account, tmp_path, zipped):
    path = write(tmp_path, "futures.csv", FUTURES_EXPORT, zipped=zipped)
    first = do_import(sessions, account, path)
    assert (first.kind, first.rows, first.added, first.already_archived) == ("futures-export", 6, 6, 0)
    assert first.unknown_types == ("NEW_TYPE_2027",)
    rows = stored(sessions)
    assert rows[0] == (datetime(2026, 1, 2, 8, tzinfo=timezone.utc), "FUNDING_FEE", 9223372036854775801, "USDT",
                       Decimal("-0.01234567"), True, "futures-export", "")
    assert [r[4] for r in rows] == [Decimal(v) for v in ("-0.01234567", "-0.00000001", "12.5", "99.9", "-100", "1")]
    assert rows[-1][5] is False  # unknown type: stored, flagged
    # The same file again, and its other packing, add nothing.
    again = do_import(sessions, account, path)
    other = do_import(sessions, account, write(tmp_path, "again.csv", FUTURES_EXPORT, zipped=not zipped))
    assert (again.added, again.already_archived, other.added) == (0, 6, 0)
    assert stored(sessions) == rows


def test_statement_merges_with_api_entries_without_duplicates(sessions, account, tmp_path):
    with sessions.begin() as session:
        account_id = session.scalar(select(Account.id).where(Account.label == account))
        # Two funding fees in the same second with the same amount: two entries, and the API has one of them.
        for tran, ms in ((501, 250), (502, 900)):
            session.add(IncomeEntry(account_id=account_id, time=datetime(2026, 2, 1, 8, 0, 0, ms * 1000, tzinfo=timezone.utc),
                                    income_type="FUNDING_FEE", tran_id=tran, asset="USDT", income=Decimal("-0.5"),
                                    symbol="ETHUSDT", info="", trade_id="", known_type=True, source="api",
                                    recorded_at=NOW))
        session.add(IncomeEntry(account_id=account_id, time=datetime(2026, 2, 1, 9, 30, 5, 123000, tzinfo=timezone.utc),
                                income_type="REALIZED_PNL", tran_id=601, asset="USDT", income=Decimal("3.25"),
                                symbol="ETHUSDT", info="", trade_id="601", known_type=True, source="api",
                                recorded_at=NOW))
    statement = STATEMENT_HEADER + (
        "111,2026-02-01 08:00:00,USD-MFutures,Funding Fee,USDT,-0.50000000,\n"
        "111,2026-02-01 08:00:00,USD-MFutures,Funding Fee,USDT,-0.50000000,\n"
        "111,2026-02-01 08:00:00,USD-MFutures,Funding Fee,USDT,-0.50000000,\n"
        "111,2026-02-01 09:30:05,USD-MFutures,Realized Profit and Loss,USDT,3.25,TradeID - 601\n"
        "111,2026-02-01 09:30:05,USD-MFutures,Fee,USDT,-0.01,TradeID - 601\n"
        "111,2026-02-01 09:31:00,Spot,Buy,BTC,0.001,\n"
        "111,2026-02-02 00:00:00,USDT-Futures,Asset Conversion Transfer,USDT,-10,\n"
        "111,2026-02-02 00:00:00,USD-M Futures,Asset Conversion Transfer,USDC,9.99,\n"
        "111,2026-02-03 00:00:00,USD-MFutures,Mystery Bonus,USDT,1,\n"
    )
    path = write(tmp_path, "statement.csv", statement)
    first = do_import(sessions, account, path)
    assert (first.kind, first.rows, first.added, first.already_archived, first.other_accounts) == (
        "account-statement", 8, 5, 3, 1)
    added = [r for r in stored(sessions) if r[6] == "account-statement"]
    assert [(r[1], r[3], r[4], r[7]) for r in added] == [
        ("FUNDING_FEE", "USDT", Decimal("-0.5"), ""),
        ("COMMISSION", "USDT", Decimal("-0.01"), "601"),
        ("COIN_SWAP_DEPOSIT", "USDC", Decimal("9.99"), ""),
        ("COIN_SWAP_WITHDRAW", "USDT", Decimal("-10"), ""),
        ("Mystery Bonus", "USDT", Decimal("1"), ""),
    ]
    assert all(r[2] < 0 for r in added) and added[-1][5] is False
    before = stored(sessions)
    again = do_import(sessions, account, write(tmp_path, "statement-again.csv", statement, zipped=True))
    assert (again.added, again.already_archived) == (0, 8)
    assert stored(sessions) == before


def test_statement_tran_id_is_deterministic_and_never_a_binance_id():
    from recorder.ledger.imports import ParsedEntry

    entry = ParsedEntry(2, datetime(2026, 2, 1, tzinfo=timezone.utc), "FEE", None, "USDT", Decimal("-1.0"), "", "")
    same = ParsedEntry(9, entry.time, "FEE", None, "USDT", Decimal("-1.00"), "", "")
    assert statement_tran_id(entry, 0) == statement_tran_id(same, 0) < 0
    assert statement_tran_id(entry, 0) != statement_tran_id(entry, 1)


def test_statement_and_api_synthetic_ids_never_meet():
    """Statement ids are even, API ids for entries without a tranId odd: apart whatever the hashes."""
    from recorder.ledger.imports import ParsedEntry
    from recorder.ledger.keys import api_tran_id, is_api_synthetic
    from recorder.records import IncomeRecord

    when = datetime(2026, 2, 1, tzinfo=timezone.utc)
    statement = [statement_tran_id(ParsedEntry(2, when, "TRANSFER", None, "USDT", Decimal(n), "", ""), k)
                 for n in range(1, 200) for k in range(2)]
    api = [api_tran_id(IncomeRecord(when, 1_769_904_000_000, "TRANSFER", 0, "USDT", Decimal(n), "", "", ""), k)
           for n in range(1, 200) for k in range(2)]
    assert all(i < 0 and i % 2 == 0 and not is_api_synthetic(i) for i in statement)
    assert all(i < 0 and i % 2 == 1 and is_api_synthetic(i) for i in api)
    assert len(set(statement)) == len(set(api)) == 398
    # The content, amount normalized, and the occurrence make the id: the same entry gives the same one.
    record = IncomeRecord(when, 1_769_904_000_000, "TRANSFER", 0, "USDT", Decimal("5.10"), "", "TRANSFER", "")
    again = IncomeRecord(when, 1_769_904_000_000, "TRANSFER", 0, "USDT", Decimal("5.1000"), "", "TRANSFER", "")
    assert api_tran_id(record, 0) == api_tran_id(again, 0) != api_tran_id(record, 1)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (FUTURES_EXPORT + "2026-01-05 00:00:00,FUNDING_FEE,1e,USDT,BTCUSDT,5\n", "line 8: Amount '1e' is not a number"),
        (FUTURES_EXPORT.replace("77001\r\n2026-01-02 09:15:01,COMMISSION", "77001\r\n2026-13-02 09:15:01,COMMISSION"),
         "line 4: Date(UTC) '2026-13-02 09:15:01' is not a valid date and time"),
        (FUTURES_EXPORT + "2026-01-05 00:00:00,FUNDING_FEE,1,USDT,BTCUSDT,1.5\n", "line 8: Transaction ID '1.5'"),
        (FUTURES_EXPORT + "2026-01-05 00:00:00,FUNDING_FEE,1,USDT\n", "line 8: 4 fields, the header has 6"),
        (STATEMENT_HEADER + "1,2026-02-01 08:00:00,USD-MFutures,Fee,US DT,-1,\n", "line 2: asset 'US DT'"),
        ("Date,Amount\n2026-01-01,1\n", "line 1: not a Binance futures transaction history"),
        ("", "the file is empty"),
    ],
    ids=["amount", "date", "tran-id", "fields", "asset", "header", "empty"],
)
def test_a_bad_file_is_named_with_its_line_and_problem(tmp_path, text, problem):
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(ImportFileError) as raised:
        read_file(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message


def test_a_bad_file_stores_nothing(sessions, account, tmp_path):
    """Good rows before the bad one are not stored either: the file is one transaction."""
    path = write(tmp_path, "bad.csv", FUTURES_EXPORT + "2026-01-05 00:00:00,FUNDING_FEE,1e,USDT,BTCUSDT,5\n")
    with pytest.raises(ImportFileError, match="line 8: Amount '1e' is not a number"):
        do_import(sessions, account, path)
    assert stored(sessions) == []


def test_a_zip_with_two_files_is_refused(sessions, account, tmp_path):
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.csv", FUTURES_EXPORT)
        archive.writestr("b.csv", FUTURES_EXPORT)
    with pytest.raises(ImportFileError, match="exactly one CSV file, this one holds a.csv, b.csv"):
        do_import(sessions, account, path)
    assert stored(sessions) == []


def test_api_entries_arriving_after_a_statement_supersede_its_twins(sessions, account, tmp_path):
    from recorder.ledger.imports import supersede_statement_entries

    statement = STATEMENT_HEADER + (
        "1,2026-02-01 08:00:00,USD-MFutures,Funding Fee,USDT,-0.5,\n"
        "1,2026-02-01 08:00:00,USD-MFutures,Funding Fee,USDT,-0.5,\n"
        "1,2026-02-01 09:00:00,USD-MFutures,Fee,USDT,-0.1,\n"
    )
    assert do_import(sessions, account, write(tmp_path, "s.csv", statement)).added == 3
    with sessions.begin() as session:
        account_id = session.scalar(select(Account.id).where(Account.label == account))
        # The sync later stores one of the two funding fees, with its real id and milliseconds.
        session.add(IncomeEntry(account_id=account_id, time=datetime(2026, 2, 1, 8, 0, 0, 400000, tzinfo=timezone.utc),
                                income_type="FUNDING_FEE", tran_id=9001, asset="USDT", income=Decimal("-0.50000000"),
                                symbol="BTCUSDT", info="", trade_id="", known_type=True, source="api",
                                recorded_at=NOW))
        session.flush()
        dropped = supersede_statement_entries(session, account_id, datetime(2026, 2, 1, 8, 0, 0, 400000, tzinfo=timezone.utc),
                                              datetime(2026, 2, 1, 8, 0, 1, tzinfo=timezone.utc))
    assert dropped == 1
    assert sorted((r[1], r[6]) for r in stored(sessions)) == [
        ("COMMISSION", "account-statement"), ("FUNDING_FEE", "account-statement"), ("FUNDING_FEE", "api")]
