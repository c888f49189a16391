"""`recorder sync-ledger` beside a running `recorder run` of the same account, as subprocesses.

run holds the account's writer lock throughout and its ledger lock only while its own sync runs;
sync-ledger takes the ledger lock alone, waiting while run's sync holds it.
"""

from __future__ import annotations

import subprocess

import pytest

from recorder.db import make_engine
from recorder.locks import LedgerLock, LockHeld, WriterLock
from tests.e2e.test_cli_ledger import served_keys, stored
from tests.e2e.test_cli_recording import RECORDER, recorder, stop, wait_until


def stalled_request_arrived(simulator) -> bool:
    """The stall queued for the income endpoint was taken by a request, which now waits in it.

    Read on the simulator's side: trying the ledger lock from here could take it just when run's
    job looks, and make run skip its sync.
    """
    with simulator._lock:
        return not simulator._income_faults


def test_sync_ledger_runs_beside_run_and_waits_for_runs_own_sync(simulator, cli_env, db_url):
    for _ in range(60):
        simulator.step()
    # run's first ledger request stalls, so its sync holds the ledger lock while sync-ledger starts.
    simulator.inject("stall", seconds=20, endpoint="income")
    process = subprocess.Popen([*RECORDER, "run", "--interval", "1", "--ledger-interval", "3600", "--timeout", "40"],
                               env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: stalled_request_arrived(simulator), "run's ledger sync under way")
        for _ in range(30):
            simulator.step()
        synced = recorder("sync-ledger", env=cli_env, timeout=120)
        assert synced.returncode == 0, synced.stderr
        assert "waiting for the ledger sync under way to finish" in synced.stderr
        assert "syncing the income ledger of account 'default' right now" in synced.stderr
        # run's sync finished first (13 windows), sync-ledger resumed after it: one window.
        assert "in 1 window(s)" in synced.stdout, synced.stdout
        entries, syncs, polls = stored(db_url)
        assert sorted((e.income_type, e.tran_id, e.asset) for e in entries) == served_keys(simulator)
        assert [s.outcome for s in syncs] == ["ok"] * 14
        # run keeps recording all along.
        polled = len(polls)
        wait_until(lambda: len(stored(db_url)[2]) > polled, "a poll of run after sync-ledger")
    finally:
        stderr = stop(process)
    assert process.returncode == 0, stderr
    assert "ledger sync ok account=default windows=13" in stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_ledger_lock_and_the_writer_lock_are_apart(db_url):
    engine = make_engine(db_url)
    writer, ledger, second = WriterLock(engine, "a"), LedgerLock(engine, "a"), LedgerLock(engine, "a")
    other_account = LedgerLock(engine, "b")
    try:
        writer.acquire()
        ledger.acquire()  # beside the writer lock of the same account
        other_account.acquire()
        with pytest.raises(LockHeld, match=r"another recorder \(pid \d+\) is syncing the income ledger of account 'a'"):
            second.acquire()
        ledger.release()
        second.acquire()
    finally:
        for lock in (writer, ledger, second, other_account):
            lock.release()
        engine.dispose()
