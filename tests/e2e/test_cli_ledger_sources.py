"""One movement, two sources: a statement imported before the API sync, then the sync, as subprocesses.

The API entry supersedes its statement twin in the window's own transaction, so `ledger`,
`reconcile` and `export --what ledger` each see every movement exactly once.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from decimal import Decimal

from tests.conftest import SIM_KEY
from tests.e2e.test_cli_recording import recorder

# The statement's Operation name for each income type the simulator books.
OPERATIONS = {"REALIZED_PNL": "Realized Profit and Loss", "COMMISSION": "Fee", "FUNDING_FEE": "Funding Fee",
              "TRANSFER": "Transfer Between Main and Futures Account"}


def statement_of(rows: list[dict]) -> str:
    """Binance's account statement CSV of `rows` (seconds only, no transaction id), as a user downloads it."""
    lines = ["User_ID,UTC_Time,Account,Operation,Coin,Change,Remark"]
    for row in sorted(rows, key=lambda r: r["time"]):
        at = datetime.fromtimestamp(row["time"] // 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        remark = f"TradeID - {row['tradeId']}" if row["tradeId"] else ""
        lines.append(f"1,{at},USD-MFutures,{OPERATIONS[row['incomeType']]},{row['asset']},{row['income']},{remark}")
    return "\n".join(lines) + "\n"


def movements(rows: list[dict]) -> list[tuple[str, str, Decimal]]:
    return sorted((r["incomeType"], r["asset"], Decimal(r["income"])) for r in rows)


def test_api_sync_supersedes_an_imported_statement_everywhere(simulator, cli_env, tmp_path):
    assert recorder("poll", env=cli_env).returncode == 0
    for round_ in range(3):
        for _ in range(40):
            simulator.step()
        assert recorder("poll", env=cli_env).returncode == 0
    served = simulator.income_entries(SIM_KEY)
    assert {r["incomeType"] for r in served} <= set(OPERATIONS) and len(served) > 20
    statement = tmp_path / "statement.csv"
    statement.write_text(statement_of(served), encoding="utf-8")

    imported = recorder("import", str(statement), env=cli_env)
    assert imported.returncode == 0, imported.stderr
    assert f"{len(served)} added" in imported.stdout
    synced = recorder("sync-ledger", env=cli_env)
    assert synced.returncode == 0, synced.stderr
    assert f"{len(served)} file-imported entries without Binance's id superseded" in synced.stderr

    listed = json.loads(recorder("ledger", "--format", "json", env=cli_env).stdout)
    assert movements([{"incomeType": d["income_type"], "asset": d["asset"], "income": d["income"]}
                      for d in listed]) == movements(served)
    assert {d["source"] for d in listed} == {"api"}
    wallet = {row["asset"]: row["balance"] for row in simulator.get_balances(SIM_KEY)}
    assert {d["asset"]: d["running_balance"] for d in listed}["USDT"] == wallet["USDT"]

    exported = recorder("export", "--what", "ledger", "--format", "csv", env=cli_env)
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert len(rows) == len(served)
    assert movements([{"incomeType": r["income_type"], "asset": r["asset"], "income": r["income"]} for r in rows]) \
        == movements(served)

    reconciled = recorder("reconcile", "--format", "json", env=cli_env)
    assert reconciled.returncode == 0, reconciled.stderr
    intervals = [r for r in json.loads(reconciled.stdout) if r["kind"] == "interval"]
    assert len(intervals) >= 3 and any(Decimal(r["change"]) != 0 for r in intervals)
    assert all(Decimal(r["residual"]) == 0 and not r["flags"] for r in intervals)

    # The statement again after the sync: every row is already archived, nothing comes back twice.
    again = recorder("import", str(statement), env=cli_env)
    assert again.returncode == 0 and "0 added" in again.stdout
    assert len(json.loads(recorder("ledger", "--format", "json", env=cli_env).stdout)) == len(served)


def accounts_of(db_url: str) -> list[tuple[str, str]]:
    from sqlalchemy import select

    from recorder.db import make_engine, make_sessions
    from recorder.models import Account

    engine = make_engine(db_url)
    try:
        with make_sessions(engine)() as session:
            try:
                return [tuple(row) for row in session.execute(select(Account.label, Account.environment))]
            except Exception:  # noqa: BLE001 - no schema yet: no account either
                return []
    finally:
        engine.dispose()


def test_import_archives_a_statement_for_an_account_never_polled(simulator, cli_env, db_url, tmp_path):
    old = [{"time": 1_700_000_000_000 + i * 3_600_000, "incomeType": kind, "asset": "USDT", "income": amount,
            "tradeId": ""} for i, (kind, amount) in enumerate([("TRANSFER", "500"), ("FUNDING_FEE", "-0.125"),
                                                               ("COMMISSION", "-0.02")])]
    bad = tmp_path / "bad.csv"
    bad.write_text(statement_of(old) + "1,2023-11-15 00:00:00,USD-MFutures,Fee,USDT,1e,\n", encoding="utf-8")
    refused = recorder("import", str(bad), "--account", "archive", env=cli_env)
    assert refused.returncode != 0 and "line 5" in refused.stderr
    assert accounts_of(db_url) == []  # a bad file creates no account either

    statement = tmp_path / "old.csv"
    statement.write_text(statement_of(old), encoding="utf-8")
    imported = recorder("import", str(statement), "--account", "archive", env=cli_env)
    assert imported.returncode == 0, imported.stderr
    assert "3 entries, 3 added" in imported.stdout
    assert [label for label, _ in accounts_of(db_url)] == ["archive"]
    listed = json.loads(recorder("ledger", "--account", "archive", "--format", "json", env=cli_env).stdout)
    assert [(d["income_type"], d["income"], d["source"]) for d in listed] == [
        ("TRANSFER", "500", "account-statement"), ("FUNDING_FEE", "-0.125", "account-statement"),
        ("COMMISSION", "-0.02", "account-statement")]
    # The first poll later records into the same account: the environment came from the configured URL.
    polled = recorder("poll", "--account", "archive", env=cli_env)
    assert polled.returncode == 0, polled.stderr
    assert [label for label, _ in accounts_of(db_url)] == ["archive"]
