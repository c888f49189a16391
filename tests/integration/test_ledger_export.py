"""`recorder export --what ledger` and the tax presets; `--include-derived` beside observed history."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from recorder.cli import cli
from recorder.ledger.backfill import LedgerCoverage, backfill
from recorder.ledger.imports import import_file
from recorder.models import Account, IncomeEntry
from recorder.store import ensure_account
from recorder.records import AssetBalance
from tests.integration.test_queries import record

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
BIG = 9_223_372_036_854_775_807
ENTRIES = [
    # (time, type, tranId, asset, income, symbol, trade_id, known)
    (T0 - timedelta(days=2), "TRANSFER", 0, "USDT", "100.00000000", "", "", True),
    (T0 - timedelta(days=1, seconds=-5), "REALIZED_PNL", 1234567890123456789, "USDT", "-2.50000000", "BTCUSDT", "77", True),
    (T0 - timedelta(days=1, seconds=-5), "COMMISSION", 1234567890123456789, "BNB", "-0.00000001", "BTCUSDT", "77", True),
    (T0 - timedelta(hours=8), "FUNDING_FEE", BIG, "USDT", "0.12500000", "BTCUSDT", "", True),
    (T0 - timedelta(hours=1), "COMMISSION_REBATE", 42, "USDT", "0.01000000", "", "", True),
    (T0 - timedelta(minutes=1), "NEW_TYPE_X", 43, "USDT", "1.00000000", "", "", False),
]


def asset(name: str, amount: str) -> AssetBalance:
    value = Decimal(amount)
    return AssetBalance(name, value, value, Decimal("0.00000000"), value, value, True, T0)


@pytest.fixture
def ledger(sessions):
    """Account 'default': entries above, first observed at T0 (USDT 200, BNB 1)."""
    record(sessions, T0, (asset("USDT", "200.00000000"), asset("BNB", "1.00000000")))
    with sessions.begin() as session:
        account_id = session.scalar(select(Account.id).where(Account.label == "default"))
        session.add_all(
            IncomeEntry(account_id=account_id, time=when, income_type=kind, tran_id=tran, asset=name,
                        income=Decimal(amount), symbol=symbol, info="", trade_id=trade, known_type=known,
                        source="api", recorded_at=T0)
            for when, kind, tran, name, amount, symbol, trade, known in ENTRIES
        )
    return sessions


def export(db_url: str, *args: str, expect: int = 0) -> str:
    result = CliRunner().invoke(cli, ["export", "--database-url", db_url, *args], catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result.output


def test_ledger_csv_and_jsonl_are_exact_with_text_ids(ledger, db_url, tmp_path):
    out = tmp_path / "ledger.csv"
    export(db_url, "--what", "ledger", "--out", str(out))
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["time", "account", "income_type", "asset", "income", "symbol", "info", "tran_id",
                             "trade_id", "known_type", "source"]
    assert [(r["income_type"], r["asset"], r["income"], r["tran_id"], r["known_type"]) for r in rows] == [
        ("TRANSFER", "USDT", "100.00000000", "0", "true"),
        ("COMMISSION", "BNB", "-0.00000001", "1234567890123456789", "true"),
        ("REALIZED_PNL", "USDT", "-2.50000000", "1234567890123456789", "true"),
        ("FUNDING_FEE", "USDT", "0.12500000", str(BIG), "true"),
        ("COMMISSION_REBATE", "USDT", "0.01000000", "42", "true"),
        ("NEW_TYPE_X", "USDT", "1.00000000", "43", "false"),
    ]
    assert rows[0]["time"] == "2026-02-27T12:00:00.000000Z" and rows[0]["account"] == "default"
    lines = export(db_url, "--what", "ledger", "--format", "jsonl", "--asset", "BNB").splitlines()
    assert [json.loads(line)["tran_id"] for line in lines] == ["1234567890123456789"]
    assert json.loads(lines[0])["income"] == "-0.00000001" and json.loads(lines[0])["known_type"] is True


def test_ledger_parquet_keeps_exact_amounts(ledger, db_url, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "ledger.parquet"
    export(db_url, "--what", "ledger", "--format", "parquet", "--out", str(out))
    table = pq.read_table(out).to_pylist()
    assert [row["income"] for row in table] == [Decimal(e[4]) for e in sorted(ENTRIES, key=lambda e: (e[0], e[1]))]
    assert table[3]["tran_id"] == str(BIG)


def raw_lines(text: str) -> list[str]:
    # click's runner turns CRLF into LF in .output; the file test below checks the CRLF.
    return text.splitlines()


def test_presets_have_the_documented_headers_and_quoted_ids(ledger, db_url):
    koinly = raw_lines(export(db_url, "--what", "ledger", "--format", "koinly"))
    assert koinly[0] == ("Date,Sent Amount,Sent Currency,Received Amount,Received Currency,Fee Amount,Fee Currency,"
                         "Net Worth Amount,Net Worth Currency,Label,Description,TxHash")
    assert koinly[1] == '2026-02-27 12:00 UTC,,,100.00000000,USDT,,,,,,TRANSFER,"binance-usdm:TRANSFER:0:USDT"'
    assert koinly[2] == ("2026-02-28 12:00 UTC,0.00000001,BNB,,,,,,,cost,COMMISSION BTCUSDT,"
                         '"binance-usdm:COMMISSION:1234567890123456789:BNB"')
    assert koinly[3].startswith("2026-02-28 12:00 UTC,2.50000000,USDT,,,,,,,realized gain,REALIZED_PNL BTCUSDT,")
    assert koinly[6].endswith(',NEW_TYPE_X (unknown income type),"binance-usdm:NEW_TYPE_X:43:USDT"')
    cointracking = raw_lines(export(db_url, "--what", "ledger", "--format", "cointracking"))
    assert cointracking[0] == ('"Type","Buy Amount","Buy Currency","Sell Amount","Sell Currency","Fee","Fee Currency",'
                               '"Exchange","Trade-Group","Comment","Date"')
    assert cointracking[3] == ('"Derivatives / Futures Loss","","","2.50000000","USDT","","","Binance USD-M Futures",'
                               '"default","REALIZED_PNL BTCUSDT binance-usdm:REALIZED_PNL:1234567890123456789:USDT",'
                               '"28.02.2026 12:00:05"')
    assert cointracking[4].startswith('"Derivatives / Futures Profit","0.12500000","USDT"')
    binance = raw_lines(export(db_url, "--what", "ledger", "--format", "binance-futures"))
    assert binance[0] == "Date(UTC),type,Amount,Asset,Symbol,Transaction ID"
    assert binance[4] == f'2026-03-01 04:00:00,FUNDING_FEE,0.12500000,USDT,BTCUSDT,"{BIG}"'
    assert len(binance) == len(ENTRIES) + 1


def test_a_preset_file_is_crlf_utf8_and_atomic(ledger, db_url, tmp_path):
    out = tmp_path / "koinly.csv"
    export(db_url, "--what", "ledger", "--format", "koinly", "--out", str(out))
    data = out.read_bytes()
    assert data.startswith(b"Date,Sent Amount,") and data.count(b"\r\n") == len(ENTRIES) + 1
    assert "exists" in export(db_url, "--what", "ledger", "--format", "koinly", "--out", str(out), expect=2)


def test_binance_futures_preset_imports_back_as_the_same_entries(ledger, db_url, tmp_path):
    out = tmp_path / "futures.csv"
    export(db_url, "--what", "ledger", "--format", "binance-futures", "--out", str(out))
    with ledger.begin() as session:
        ensure_account(session, "copy", "http://127.0.0.1:9", T0)
        result = import_file(session, "copy", out, recorded_at=T0)
    assert (result.added, result.already_archived) == (len(ENTRIES), 0)
    with ledger() as session:
        by_account = {}
        for label, *key in session.execute(
            select(Account.label, IncomeEntry.time, IncomeEntry.income_type, IncomeEntry.tran_id, IncomeEntry.asset,
                   IncomeEntry.income).join(Account).order_by(IncomeEntry.time, IncomeEntry.income_type)
        ):
            by_account.setdefault(label, []).append(tuple(key))
    # A Transaction ID of 0 or below keys nothing on import: that row comes back under an even synthetic id.
    def keyed(rows):
        return [(time, kind, tran if tran > 0 else None, asset, income) for time, kind, tran, asset, income in rows]

    assert keyed(by_account["copy"]) == keyed(by_account["default"])
    unkeyed = [tran for _, _, tran, _, _ in by_account["copy"] if tran <= 0]
    assert len(unkeyed) == 1 and unkeyed[0] < 0 and unkeyed[0] % 2 == 0


def test_a_preset_is_only_for_the_ledger(ledger, db_url):
    assert "--format koinly is for --what ledger" in export(db_url, "--what", "history", "--format", "koinly", expect=2)


def test_history_include_derived_labels_each_row(ledger, db_url):
    with ledger.begin() as session:
        backfill(session, "default", since=T0 - timedelta(days=3), derived_at=T0,
                 coverage=LedgerCoverage(complete_from=T0 - timedelta(days=30)))
    plain = export(db_url, "--what", "history", "--format", "jsonl").splitlines()
    assert len(plain) == 2 and all("source" not in json.loads(line) for line in plain)
    rows = [json.loads(line) for line in export(db_url, "--what", "history", "--format", "jsonl",
                                                  "--include-derived").splitlines()]
    assert [(r["source"], r["asset"], r["balance"], r["cross_wallet_balance"]) for r in rows] == [
        ("derived", "BNB", "1.00000001", None),
        ("derived", "USDT", "101.36500000", None),
        ("derived", "USDT", "201.36500000", None),
        ("derived", "BNB", "1.00000000", None),
        ("derived", "USDT", "198.86500000", None),
        ("derived", "USDT", "198.99000000", None),
        ("derived", "USDT", "199.00000000", None),
        ("derived", "USDT", "200.00000000", None),
        ("observed", "BNB", "1.00000000", "1.00000000"),
        ("observed", "USDT", "200.00000000", "200.00000000"),
    ]
    assert rows[0]["observed_at"] == "2026-02-26T12:00:00.000000Z" and rows[-1]["observed_at"] == "2026-03-01T12:00:00.000000Z"
