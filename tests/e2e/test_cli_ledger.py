"""`recorder sync-ledger`, `recorder ledger` and the ledger job of `recorder run`, as subprocesses."""

from __future__ import annotations

import json
import signal
import subprocess

from sqlalchemy import select

from recorder.db import make_engine, make_sessions
from recorder.models import IncomeEntry, LedgerSync, Poll
from tests.conftest import SIM_KEY
from tests.e2e.test_cli_recording import RECORDER, recorder, stop, wait_until


def stored(db_url: str) -> tuple[list[IncomeEntry], list[LedgerSync], list[Poll]]:
    """The archive, the sync log and the polls; empty while the schema is still being created."""
    engine = make_engine(db_url)
    try:
        with make_sessions(engine)() as session:
            try:
                entries = session.scalars(select(IncomeEntry)).all()
                syncs = session.scalars(select(LedgerSync).order_by(LedgerSync.id)).all()
                polls = session.scalars(select(Poll)).all()
            except Exception:  # noqa: BLE001 - the tables do not exist yet while the service migrates
                return [], [], []
            return list(entries), list(syncs), list(polls)
    finally:
        engine.dispose()


def served_keys(simulator) -> list[tuple[str, int, str]]:
    return sorted((r["incomeType"], r["tranId"], r["asset"]) for r in simulator.income_entries(SIM_KEY))


def test_sync_ledger_then_ledger_lists_every_entry_with_the_running_balance(simulator, cli_env, db_url):
    assert recorder("poll", env=cli_env).returncode == 0
    for _ in range(100):
        simulator.step()
    assert recorder("poll", env=cli_env).returncode == 0
    synced = recorder("sync-ledger", env=cli_env)
    assert synced.returncode == 0, synced.stderr
    assert synced.stdout.startswith("ledger sync ok: ") and "in 13 window(s)" in synced.stdout
    assert "ledger sync ok account=default windows=13" in synced.stderr
    wallet = {row["asset"]: row["balance"] for row in simulator.get_balances(SIM_KEY)}

    listed = recorder("ledger", "--format", "json", env=cli_env)
    assert listed.returncode == 0, listed.stderr
    documents = json.loads(listed.stdout)
    assert sorted((d["income_type"], int(d["tran_id"]), d["asset"]) for d in documents) == served_keys(simulator)
    assert all(isinstance(d["tran_id"], str) and isinstance(d["income"], str) for d in documents)
    last = {d["asset"]: d["running_balance"] for d in documents}
    assert last["USDT"] == wallet["USDT"]
    assert [d["time"] for d in documents] == sorted(d["time"] for d in documents)

    table = recorder("ledger", "--asset", "usdt", "--type", "FUNDING_FEE", "--type", "commission", env=cli_env)
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("# account default; ledger covered from ")
    assert "# running balance USDT starts at 0: 0 (a running total" in table.stdout
    assert "REALIZED_PNL" not in table.stdout and "FUNDING_FEE" in table.stdout

    coverage = json.loads(recorder("ledger", "--coverage", "--format", "json", env=cli_env).stdout)
    assert [c["kind"] for c in coverage] == ["covered"] and coverage[0]["windows"] == 13


def test_ledger_on_an_unsynced_database_says_so(simulator, cli_env):
    assert recorder("poll", env=cli_env).returncode == 0
    listed = recorder("ledger", env=cli_env)
    assert listed.returncode == 0 and "nothing synced yet" in listed.stdout
    csv_out = recorder("ledger", "--format", "csv", env=cli_env)
    assert csv_out.stdout.strip().startswith("time,income_type") and "note: ledger coverage: nothing synced" in csv_out.stderr


def test_run_syncs_the_ledger_beside_the_polls(simulator, cli_env, db_url):
    for _ in range(50):
        simulator.step()
    process = subprocess.Popen([*RECORDER, "run", "--interval", "1", "--ledger-interval", "10"], env=cli_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: [s for s in stored(db_url)[1] if s.outcome == "ok"] and len(stored(db_url)[2]) >= 2,
                   "a ledger sync and two polls")
    finally:
        stderr = stop(process)
    assert process.returncode == 0, stderr
    entries, syncs, _ = stored(db_url)
    assert sorted((e.income_type, e.tran_id, e.asset) for e in entries) == served_keys(simulator)
    assert all(s.outcome == "ok" for s in syncs)


def test_run_without_the_ledger_sends_no_income_request(simulator, cli_env, db_url):
    process = subprocess.Popen([*RECORDER, "run", "--interval", "1", "--no-ledger"], env=cli_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(stored(db_url)[2]) >= 3, "three polls")
    finally:
        stop(process, signal.SIGINT)
    assert process.returncode == 0
    assert not [r for r in simulator.requests_log if r.path == "/fapi/v1/income"]
    assert stored(db_url)[1] == []


def test_sync_ledger_failure_is_one_line_and_exit_1(simulator, cli_env, db_url):
    simulator.inject("bad-decimal", endpoint="income")
    failed = recorder("sync-ledger", env=cli_env)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1].startswith("error: BadPayload: /fapi/v1/income: ")
    _, syncs, _ = stored(db_url)
    assert [s.outcome for s in syncs] == ["failed"] and syncs[0].error_class == "BadPayload"
    assert recorder("sync-ledger", env=cli_env).returncode == 0


def test_sync_ledger_killed_mid_sync_resumes_without_duplicates(simulator, cli_env, db_url):
    """kill -9 while the fourth window's page is in flight: three windows stay covered, the fourth left nothing."""
    for _ in range(60):
        simulator.step()
    now = simulator.server_time_ms()
    simulator.add_income(SIM_KEY, [
        {"symbol": "", "incomeType": "FUNDING_FEE", "income": "-0.5", "asset": "USDT", "info": "",
         "time": now - day * 86_400_000 - 60_000, "tranId": 2**60 + day, "tradeId": ""} for day in range(89)
    ])
    # Three real answers (with a weight header past any integer column, kept as NULL), then a stall.
    simulator.inject("huge-weight", times=3, endpoint="income")
    simulator.inject("stall", seconds=120, endpoint="income")
    process = subprocess.Popen([*RECORDER, "sync-ledger", "--timeout", "60"], env=cli_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(stored(db_url)[1]) >= 3, "three committed windows")
    finally:
        process.kill()
        process.communicate()
    entries, syncs, _ = stored(db_url)
    assert [s.outcome for s in syncs] == ["ok"] * 3 and all(s.used_weight is None for s in syncs)
    assert 0 < len(entries) < len(served_keys(simulator))
    simulator.clear_faults()
    resumed = recorder("sync-ledger", env=cli_env)
    assert resumed.returncode == 0, resumed.stderr
    entries, syncs, _ = stored(db_url)
    assert sorted((e.income_type, e.tran_id, e.asset) for e in entries) == served_keys(simulator)
    coverage = json.loads(recorder("ledger", "--coverage", "--format", "json", env=cli_env).stdout)
    assert [c["kind"] for c in coverage] == ["covered"]
