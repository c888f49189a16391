"""kill -9 mid-run leaves a consistent database and a restart resumes; a second instance is refused."""

from __future__ import annotations

import signal
import subprocess

from sqlalchemy import func, select

from recorder.db import make_engine, make_sessions
from recorder.models import Balance, BalanceHead, Poll
from tests.e2e.test_cli_recording import RECORDER, stop, stored_or_none, wait_until


def start(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*RECORDER, "run", "--interval", "0.2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def assert_consistent(db_url: str) -> int:
    engine = make_engine(db_url)
    try:
        with make_sessions(engine)() as session:
            polls = session.scalars(select(Poll).where(Poll.outcome == "ok")).all()
            written = dict(
                session.execute(select(Balance.observed_at, func.count()).group_by(Balance.observed_at)).all()
            )
            for poll in polls:
                assert written.get(poll.finished_at, 0) == poll.changed_count, f"poll at {poll.finished_at} is half-written"
            latest = dict(session.execute(select(Balance.asset, func.max(Balance.id)).group_by(Balance.asset)).all())
            heads = dict(session.execute(select(BalanceHead.asset, BalanceHead.balance_id)).all())
            assert heads == latest
            return len(polls)
    finally:
        engine.dispose()


def test_kill_9_then_restart_resumes_on_a_consistent_database(simulator, cli_env, db_url):
    simulator.auto_move = True
    first = start(cli_env)
    wait_until(lambda: len(stored_or_none(db_url)) >= 3, "three polls before the kill")
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=10)
    before = assert_consistent(db_url)
    assert before >= 3
    second = start(cli_env)
    wait_until(lambda: len(stored_or_none(db_url)) >= before + 3, "three polls after the restart")
    stderr = stop(second)
    assert second.returncode == 0, stderr
    assert assert_consistent(db_url) >= before + 3


def test_second_instance_for_the_same_account_is_refused(simulator, cli_env, db_url):
    first = start(cli_env)
    try:
        wait_until(lambda: stored_or_none(db_url), "the first poll: the lock is taken")
        second = subprocess.run([*RECORDER, "run"], env=cli_env, capture_output=True, text=True, timeout=30)
        assert second.returncode == 2
        assert f"another recorder (pid {first.pid}" in second.stderr
        assert "is already recording account 'default'" in second.stderr
        once = subprocess.run([*RECORDER, "poll"], env=cli_env, capture_output=True, text=True, timeout=30)
        assert once.returncode == 2 and "already recording" in once.stderr
    finally:
        stop(first)
    assert first.returncode == 0
