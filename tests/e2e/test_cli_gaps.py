"""A real `recorder run --interval 1` through an outage and a failed poll; `recorder gaps` from a clean shell.

The gaps are stored by the writer, so the reader's environment (no RECORDER_INTERVAL at all,
or a misleading one) changes nothing. Every wait polls a condition with a generous deadline;
a poll at a 1 s interval on a busy machine may also be late by itself, so the assertions
look for the gaps we caused, not for the absence of any other.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from recorder.db import make_engine, make_sessions
from recorder.exchange import RETRY_ATTEMPTS
from recorder.models import Poll, PollSchedule
from tests.inprocess import run_recorder

RECORDER = [sys.executable, "-m", "recorder"]
DEADLINE_SECONDS = 60


def poll_log(db_url: str) -> list[tuple[datetime, str]]:
    """(finished_at, outcome) of every stored poll, oldest first; empty while the schema is not there yet."""
    engine = make_engine(db_url)
    try:
        with make_sessions(engine)() as session:
            return [tuple(row) for row in session.execute(select(Poll.finished_at, Poll.outcome).order_by(Poll.finished_at))]
    except SQLAlchemyError:  # the service is still creating the schema
        return []
    finally:
        engine.dispose()


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {DEADLINE_SECONDS} s waiting for {what}")
        time.sleep(0.2)


def ok_after(db_url: str, moment: datetime, count: int) -> bool:
    return sum(1 for at, outcome in poll_log(db_url) if outcome == "ok" and at > moment) >= count


def failed_count(db_url: str) -> int:
    return sum(1 for _, outcome in poll_log(db_url) if outcome == "failed")


def read(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """A read command in this process with exactly `env` as its environment (tests/inprocess.py)."""
    result = run_recorder(*args, env=env)
    assert result.returncode == 0, result.stderr
    return result


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_run_at_one_second_through_an_outage_and_a_failed_poll_shows_both_gaps_from_any_shell(simulator, cli_env, db_url):
    assert not any(name.startswith("RECORDER_INTERVAL") for name in cli_env)
    service = subprocess.Popen(
        [*RECORDER, "run", "--interval", "1"], env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: ok_after(db_url, datetime.min.replace(tzinfo=timezone.utc), 3), "three successful polls")
        simulator.inject("http-503", times=RETRY_ATTEMPTS)  # one poll, retried to exhaustion
        wait_for(lambda: failed_count(db_url) == 1, "the single failed poll")
        single_failure = poll_log(db_url)[-1][0]
        wait_for(lambda: ok_after(db_url, single_failure, 3), "successful polls after the failed one")
        simulator.inject("http-503", times=5 * RETRY_ATTEMPTS)  # the exchange is down for five polls
        wait_for(lambda: failed_count(db_url) == 6, "five failed polls of the outage")
        outage_end = poll_log(db_url)[-1][0]
        wait_for(lambda: ok_after(db_url, outage_end, 2), "successful polls after the outage")
    finally:
        service.send_signal(signal.SIGTERM)
        stderr = service.communicate(timeout=30)[1]
    assert service.returncode == 0, stderr
    log = poll_log(db_url)
    failures = [at for at, outcome in log if outcome == "failed"]
    # From the first poll to the last: no silence after the service stopped is reported.
    span = ("--since", log[0][0].isoformat(), "--until", log[-1][0].isoformat())

    # The reader's shell: no RECORDER_INTERVAL, a misleading one (an hour), a malformed one.
    reader = {name: value for name, value in cli_env.items() if not name.startswith("BINANCE_")}
    # The service's own settings in a shared environment file, even malformed, change no answer either.
    run_only = {"RECORDER_METRICS_ADDR": "not an address", "RECORDER_REQUIRE_READ_ONLY_KEY": "maybe",
                "RECORDER_METRICS_ALLOW_REMOTE": "perhaps", "BINANCE_SPOT_BASE_URL": "ftp://nowhere"}
    for env in (reader, {**reader, "RECORDER_INTERVAL": "3600"}, {**reader, "RECORDER_INTERVAL": "every minute"},
                {**reader, **run_only}):
        gaps = json.loads(read(env, "gaps", *span, "--format", "json").stdout)
        with_failures = [gap for gap in gaps if gap["failures"]]
        assert [sum(gap["failures"].values()) for gap in with_failures] == [1, 5], gaps
        assert all(set(gap["failures"]) == {"ExchangeUnavailable"} for gap in with_failures)
        single, outage = with_failures
        assert parse(single["start"]) < failures[0] < parse(single["end"])
        assert parse(outage["start"]) < failures[1] and failures[-1] < parse(outage["end"])
        assert outage["seconds"] > 4 and not outage["ongoing"]
        # Inside the outage, 1.5 s after its last success, balances --at says stale.
        inside = parse(outage["start"]) + timedelta(seconds=2)
        balances = read(env, "balances", "--at", inside.isoformat(), "--format", "json")
        assert {row["status"] for row in json.loads(balances.stdout)} == {"stale"}
        assert "inside a gap" in balances.stderr
        # --tolerance still overrides: a whole minute hides both.
        assert json.loads(read(env, "gaps", *span, "--tolerance", "60", "--format", "json").stdout) == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_locked_database_that_stalls_the_service_is_a_gap(simulator, cli_env, db_url):
    """A write that waits for a locked SQLite file stalls the loop: the polls it missed are a gap.

    (A database that refuses connections instead is bridged by the spool: those polls were
    taken on time and are stored late, so they are no gap; tests/integration/test_gaps.py.)
    """
    service = subprocess.Popen(
        [*RECORDER, "run", "--interval", "1"], env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: ok_after(db_url, datetime.min.replace(tzinfo=timezone.utc), 3), "three successful polls")
        blocker = sqlite3.connect(make_url(db_url).database, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        locked_at = datetime.now(timezone.utc)
        # The outage itself lasts 5 s (the service's busy timeout is 10 s, so its write waits it out).
        time.sleep(5)
        released_at = datetime.now(timezone.utc)
        blocker.execute("ROLLBACK")
        blocker.close()
        wait_for(lambda: ok_after(db_url, released_at, 2), "successful polls after the lock was released")
    finally:
        service.send_signal(signal.SIGTERM)
        stderr = service.communicate(timeout=30)[1]
    assert service.returncode == 0, stderr
    reader = {name: value for name, value in cli_env.items() if not name.startswith("BINANCE_")}
    gaps = json.loads(read(reader, "gaps", "--format", "json", "--since", "2000-01-01").stdout)
    assert any(parse(g["start"]) <= locked_at + timedelta(seconds=2) and parse(g["end"]) >= released_at for g in gaps), gaps


def schedules(db_url: str) -> list[tuple[int, str]]:
    engine = make_engine(db_url)
    try:
        with make_sessions(engine)() as session:
            rows = session.execute(select(PollSchedule.interval_ms, PollSchedule.source).order_by(PollSchedule.started_at))
            return [tuple(row) for row in rows]
    finally:
        engine.dispose()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_one_shot_poll_declares_its_cadence_only_when_told(simulator, cli_env, db_url):
    def poll(*args: str, **env: str) -> None:
        result = subprocess.run([*RECORDER, "poll", *args], env={**cli_env, **env}, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr

    poll()
    assert schedules(db_url) == []  # nothing declared: readers use the default 60 s
    poll("--interval", "300")
    poll(RECORDER_INTERVAL="300")  # the same cadence again, from a cron job's environment: no new row
    poll()  # declares nothing: the 300 s schedule stays in force
    poll(RECORDER_INTERVAL="30")
    assert schedules(db_url) == [(300_000, "poll"), (30_000, "poll")]
