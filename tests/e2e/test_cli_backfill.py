"""`recorder backfill` and `recorder import` as subprocesses against the simulator.

On SQLite only: what they store is tested on both databases in tests/integration/test_ledger_*.py;
here it is the commands' output, exit status and errors, which do not depend on the database.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select

from recorder.db import make_engine, make_sessions
from recorder.models import Account, DerivedBalance, IncomeEntry
from recorder.schema import upgrade_to_head
from recorder.store import ensure_account
from tests.conftest import SIM_KEY, recorder_env
from tests.integration.test_ledger_backfill import DAY_MS, OPENING, at_ms, ledger_history, states_after

RECORDER = [sys.executable, "-m", "recorder"]


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'recorder.db'}"


@pytest.fixture
def cli_env(simulator, db_url, tmp_path) -> dict[str, str]:
    return recorder_env(simulator, db_url, tmp_path / "spool")


def recorder(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RECORDER, *args], env=env, capture_output=True, text=True, timeout=120)


def test_backfill_cli_checks_the_snapshot_and_exits_3_on_a_disagreement(simulator, cli_env, db_url):
    now_ms = simulator.server_time_ms()
    entries = ledger_history(now_ms, count=30)
    states = states_after(entries)
    history = [(now_ms - 22 * DAY_MS, "USDT", str(OPENING))] + [(t, "USDT", str(b)) for t, b in states]
    simulator.set_wallet_history(SIM_KEY, history)
    final = format(states[-1][1], "f")
    simulator.set_balances(SIM_KEY, [{"asset": "USDT", "balance": final, "crossWalletBalance": final,
                                      "crossUnPnl": "0.00000000", "availableBalance": final,
                                      "maxWithdrawAmount": final, "marginAvailable": True,
                                      "updateTime": states[-1][0]}])
    assert recorder("poll", env=cli_env).returncode == 0
    engine = make_engine(db_url)
    try:
        with make_sessions(engine, write=True).begin() as session:
            account_id = session.scalar(select(Account.id))
            session.add_all(
                IncomeEntry(account_id=account_id, time=at_ms(e["time"]), income_type=e["type"], tran_id=e["tran"],
                            asset="USDT", income=e["income"], symbol="BTCUSDT", info="", trade_id="",
                            known_type=True, source="api", recorded_at=datetime.now(timezone.utc))
                for e in entries
            )
        agreed = recorder("backfill", env=cli_env)
        assert agreed.returncode == 0, agreed.stderr
        assert f"USDT: {len(entries)} derived balances from " in agreed.stdout
        assert "stopped early: the archived income entries start at" in agreed.stdout
        assert " 0 disagree" in agreed.stdout and "snapshot disagrees" not in agreed.stdout
        # The exchange says the wallet held 5 USDT more from the last entry on: the newest derived day disagrees.
        simulator.set_wallet_history(SIM_KEY, history + [(states[-1][0], "USDT", str(states[-1][1] + 5))])
        simulator.set_balances(SIM_KEY, [])
        disagreed = recorder("backfill", env=cli_env)
        assert disagreed.returncode == 3, disagreed.stderr
        assert "snapshot disagrees: USDT" in disagreed.stdout and "difference -5.00000000" in disagreed.stdout
        with make_sessions(engine)() as session:
            assert session.scalar(select(func.count()).select_from(DerivedBalance)) == len(entries)
        skipped = recorder("backfill", "--no-snapshot-check", env=cli_env)
        assert skipped.returncode == 0 and "snapshot" not in skipped.stdout
        unknown = recorder("backfill", "--asset", "DOGE", "--no-snapshot-check", env=cli_env)
        assert unknown.returncode == 2 and "no recorded balance of DOGE in account 'default'" in unknown.stderr
        both = recorder("history", "--format", "csv", "--include-derived", env=cli_env).stdout.splitlines()
        assert both[0].endswith(",source") and len(both) == len(entries) + 2
        assert [line.rsplit(",", 1)[1] for line in both[1:]] == ["derived"] * len(entries) + ["observed"]
        assert [line.split(",")[4] for line in both[1:-1]] == [format(b, "f") for _, b in states]
    finally:
        engine.dispose()


def test_import_cli_reports_counts_and_a_bad_line_in_one_line(cli_env, db_url, tmp_path):
    engine = make_engine(db_url)
    upgrade_to_head(engine)
    with make_sessions(engine, write=True).begin() as session:
        ensure_account(session, "default", "http://127.0.0.1:9", datetime.now(timezone.utc))
    engine.dispose()
    good = tmp_path / "futures.csv"
    good.write_text("Date(UTC),type,Amount,Asset,Symbol,Transaction ID\n"
                    "2026-01-02 08:00:00,FUNDING_FEE,-0.5,USDT,BTCUSDT,11\n", encoding="utf-8")
    first = recorder("import", str(good), env=cli_env)
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"imported {good} (futures-export): 1 entries, 1 added, 0 already archived\n"
    bad = tmp_path / "bad.csv"
    bad.write_text("Date(UTC),type,Amount,Asset,Symbol,Transaction ID\n"
                   "2026-01-02 09:00:00,FUNDING_FEE,-0.5,USDT,BTCUSDT,12\n"
                   "2026-01-02 10:00:00,FUNDING_FEE,lots,USDT,BTCUSDT,13\n", encoding="utf-8")
    failed = recorder("import", str(bad), env=cli_env)
    assert failed.returncode == 1
    assert failed.stderr == f"error: ImportFileError: {bad}: line 3: Amount 'lots' is not a number\n"
    # A key already archived with another amount: refused the same way, naming the line, the key and the field.
    conflict = tmp_path / "conflict.csv"
    conflict.write_text("Date(UTC),type,Amount,Asset,Symbol,Transaction ID\n"
                        "2026-01-02 08:00:00,FUNDING_FEE,-0.6,USDT,BTCUSDT,11\n", encoding="utf-8")
    refused = recorder("import", str(conflict), env=cli_env)
    assert refused.returncode == 1
    assert refused.stderr == (f"error: ImportFileError: {conflict}: line 2: FUNDING_FEE tranId 11 USDT has Amount -0.6 "
                              "where the archive holds -0.5 (from futures-export); nothing of the file is stored\n")
