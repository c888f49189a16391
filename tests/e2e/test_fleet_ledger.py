"""`recorder run --config FILE` syncs every account's income ledger beside the polls, as subprocesses."""

from __future__ import annotations

import re
import subprocess

from sqlalchemy import select

from recorder.db import make_engine, make_sessions
from recorder.models import Account, IncomeEntry, LedgerSync, PollSchedule
from tests.e2e.test_cli_recording import RECORDER, stop, wait_until
from tests.e2e.test_fleet import ACCOUNTS, fleet, polls_by_label


def archive(db_url: str) -> tuple[dict[str, set], dict[str, list[str]]]:
    """Per account: the archived entry keys, and the outcomes of its ledger windows."""
    try:
        engine = make_engine(db_url)
    except Exception:  # noqa: BLE001 - SQLite file not there yet
        return {}, {}
    try:
        with make_sessions(engine)() as session:
            entries = session.execute(select(Account.label, IncomeEntry.income_type, IncomeEntry.tran_id,
                                             IncomeEntry.asset).join(Account, Account.id == IncomeEntry.account_id)).all()
            syncs = session.execute(select(Account.label, LedgerSync.outcome)
                                    .join(Account, Account.id == LedgerSync.account_id)
                                    .order_by(LedgerSync.id)).all()
    except Exception:  # noqa: BLE001 - no schema yet, or SQLite busy for a moment
        return {}, {}
    finally:
        engine.dispose()
    keys: dict[str, set] = {}
    for label, *key in entries:
        keys.setdefault(label, set()).add(tuple(key))
    outcomes: dict[str, list[str]] = {}
    for label, outcome in syncs:
        outcomes.setdefault(label, []).append(outcome)
    return keys, outcomes


def served(simulator, label: str) -> set:
    return served_key(simulator, f"api-key-{label}")


def served_key(simulator, api_key: str) -> set:
    return {(r["incomeType"], r["tranId"], r["asset"]) for r in simulator.income_entries(api_key)}


def trade_every_account(simulator, steps: int = 40) -> None:
    for label, _, _ in ACCOUNTS:
        for _ in range(steps):
            simulator.step(f"api-key-{label}")


def test_run_config_syncs_every_accounts_ledger(simulator, db_url, tmp_path):
    path, env = fleet(simulator, db_url, tmp_path)
    trade_every_account(simulator)
    assert all(served(simulator, label) for label, _, _ in ACCOUNTS)
    process = subprocess.Popen([*RECORDER, "run", "--config", path, "--ledger-interval", "10"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: all(archive(db_url)[0].get(label) == served(simulator, label) for label, _, _ in ACCOUNTS),
                   "every account's served ledger archived", 90)
        # More income later: the next sync of each account, an interval on, stores it too.
        trade_every_account(simulator, 20)
        wait_until(lambda: all(archive(db_url)[0].get(label) == served(simulator, label) for label, _, _ in ACCOUNTS),
                   "every account's newer entries archived", 90)
    finally:
        stderr = stop(process)
    assert process.returncode == 0, stderr
    _, outcomes = archive(db_url)
    assert sorted(outcomes) == ["alpha", "beta", "gamma"]
    assert all(set(found) == {"ok"} for found in outcomes.values()), outcomes
    # 13 windows for the first 90 days, then at least one more sync each.
    assert all(len(found) >= 14 for found in outcomes.values()), outcomes
    assert "RateLimited" not in stderr and " 429" not in stderr
    assert all(len(polls_by_label(db_url)[label]) >= 3 for label, _, _ in ACCOUNTS)


def test_run_config_no_ledger_syncs_nothing(simulator, db_url, tmp_path):
    path, env = fleet(simulator, db_url, tmp_path)
    trade_every_account(simulator, 10)
    process = subprocess.Popen([*RECORDER, "run", "--config", path, "--no-ledger", "--ledger-interval", "10"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Longer than the ledger's first slot (within 10 s) would take: 15 polls of each account at 1 s.
        wait_until(lambda: all(len(polls_by_label(db_url).get(label, [])) >= 15 for label, _, _ in ACCOUNTS),
                   "fifteen polls of every account", 90)
    finally:
        stderr = stop(process)
    assert process.returncode == 0, stderr
    assert archive(db_url) == ({}, {}) and "ledger sync" not in stderr


def test_two_processes_sync_only_the_ledgers_they_hold(simulator, postgres_db_url, tmp_path):
    db_url = postgres_db_url
    path, env = fleet(simulator, db_url, tmp_path)
    trade_every_account(simulator)
    processes = [subprocess.Popen([*RECORDER, "run", "--config", path, "--ledger-interval", "10"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        wait_until(lambda: all(archive(db_url)[0].get(label) == served(simulator, label) for label, _, _ in ACCOUNTS),
                   "every account's served ledger archived", 90)
    finally:
        stderrs = [stop(process) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], stderrs
    synced_anywhere = set()
    for stderr in stderrs:
        # In log order: a sync ends "ok" only while its account is held (the handover waits for its
        # last write and its line), and "stopped" only for an account this process took (handed over
        # since, or its lease not renewed in time on a busy machine, which stops a sync too).
        held: set[str] = set()
        taken_ever: set[str] = set()
        for line in stderr.splitlines():
            if taken := re.search(r"account (\w+) taken", line):
                held.add(taken.group(1))
                taken_ever.add(taken.group(1))
            elif given := re.search(r"account (\w+) handed to another recorder", line):
                held.discard(given.group(1))
            elif synced := re.search(r"ledger sync ok account=(\w+) ", line):
                assert synced.group(1) in held, f"synced {synced.group(1)} without its lease:\n{stderr}"
                synced_anywhere.add(synced.group(1))
            elif stopped := re.search(r"ledger sync stopped account=(\w+) ", line):
                assert stopped.group(1) in taken_ever, f"stopped {stopped.group(1)}, never taken:\n{stderr}"
    assert synced_anywhere == {"alpha", "beta", "gamma"}
    # No window failed, e.g. on two syncs of one account writing at once.
    _, outcomes = archive(db_url)
    assert all(set(found) == {"ok"} for found in outcomes.values()), outcomes


def test_polls_that_fit_keep_their_interval_and_the_ledger_gives_way(db_url, tmp_path):
    from recorder.simulator import ExchangeSimulator

    # A strict server at 1,200 a minute: 3 accounts polled every 1 s on v3 ask 900, their ledgers every
    # 10 s another 540; 90% of 1,200 is 1,080, so the ledgers get the 180 the polls leave: x3, every 30 s.
    with ExchangeSimulator(weight_limit=1200) as simulator:
        path, env = fleet(simulator, db_url, tmp_path, extra="weight_limit = 1200")
        trade_every_account(simulator, 10)
        # From an hour ago: one request a first sync, so each account's fits the 180 (a 90-day catch-up
        # of the three, 39 requests, would take the ledger's share six minutes).
        process = subprocess.Popen([*RECORDER, "run", "--config", path, "--ledger-interval", "10",
                                    "--ledger-since", "1h"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # Each account's first sync comes up within one stretched interval (30 s), and is let
            # through wherever in the minute it lands.
            wait_until(lambda: all(archive(db_url)[0].get(label) == served(simulator, label)
                                   for label, _, _ in ACCOUNTS),
                       "every account's ledger synced", 120)
            wait_until(lambda: all(len(polls_by_label(db_url).get(label, [])) >= 10 for label, _, _ in ACCOUNTS),
                       "ten polls of every account", 60)
        finally:
            stderr = stop(process)
        refused = [record for record in simulator.requests_log if record.status in (418, 429)]
    assert process.returncode == 0, stderr
    assert refused == []
    warnings = [line for line in stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, stderr
    assert warnings[0].endswith(
        "ledger syncs every 30 s instead of 10 s (x3.000) so 3 accounts keep their 1 s polls inside this IP's "
        "budget: polls 900 + ledger 540 request weight a minute asked, 1080 (90% of 1200) allowed, the ledger "
        "takes the 180 the polls leave"
    )
    engine = make_engine(db_url)
    try:
        with make_sessions(engine)() as session:
            schedules = session.execute(select(Account.label, PollSchedule.interval_ms)
                                        .join(PollSchedule, PollSchedule.account_id == Account.id)).all()
    finally:
        engine.dispose()
    # The schedule the readers judge gaps by is the one asked for, not a stretched one.
    assert sorted(schedules) == [("alpha", 1000), ("beta", 1000), ("gamma", 1000)]
    polls = polls_by_label(db_url)
    assert all(poll.outcome == "ok" for label in polls for poll in polls[label])


def test_one_account_run_follows_the_same_plan(simulator, db_url, tmp_path):
    from tests.conftest import SIM_KEY, recorder_env

    # Polls every 1 s on v3 ask 300 a minute, the ledger every 10 s 180; 90% of 400 is 360: the
    # polls keep their second and the ledger takes the 60 left, every 30 s.
    env = recorder_env(simulator, db_url, tmp_path / "spool", RECORDER_INTERVAL="1", RECORDER_WEIGHT_LIMIT="400",
                       RECORDER_BALANCE_ENDPOINT="v3", RECORDER_LEDGER_INTERVAL="10", RECORDER_ACCOUNT="main")
    for _ in range(10):
        simulator.step(SIM_KEY)
    process = subprocess.Popen([*RECORDER, "run", "--ledger-since", "1h"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: archive(db_url)[0].get("main") == served_key(simulator, SIM_KEY), "the ledger synced", 60)
        wait_until(lambda: len(polls_by_label(db_url).get("main", [])) >= 5, "five polls", 60)
    finally:
        stderr = stop(process)
    assert process.returncode == 0, stderr
    warnings = [line for line in stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1 and warnings[0].endswith(
        "ledger syncs every 30 s instead of 10 s (x3.000) so 1 account keeps its 1 s polls inside this IP's "
        "budget: polls 300 + ledger 180 request weight a minute asked, 360 (90% of 400) allowed, the ledger takes "
        "the 60 the polls leave"
    ), stderr
    engine = make_engine(db_url)
    try:
        with make_sessions(engine)() as session:
            assert set(session.scalars(select(PollSchedule.interval_ms))) == {1000}
    finally:
        engine.dispose()
