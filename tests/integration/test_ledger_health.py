"""The ledger rule of recorder.health: `recorder status` from ledger_syncs rows, and the service's
/healthz and /metrics from the ledger job's results, on real databases and the simulator."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import insert, select

from recorder.cli.ledger_job import ledger_jobs
from recorder.errors import BadPayload
from recorder.health import LEDGER_STALE, read_ledger_of
from recorder.ledger.sync import SyncResult
from recorder.metrics import MetricsServer, PollMetrics
from recorder.service import declare_schedule, watch_ledger
from recorder.tables import accounts, ledger_syncs
from tests.inprocess import run_recorder
from tests.integration.test_metrics import get, metric
from tests.integration.test_outages import make_recorder

DAY = timedelta(days=1)


def polled(simulator, engine, tmp_path, account: str = "default"):
    """A recorder of `account` after one good poll on a daily schedule: the poll rule stays quiet for a day."""
    recorder = make_recorder(simulator, engine, tmp_path / "spool")
    recorder.account = account
    recorder.spool = None
    assert declare_schedule(recorder, 86400.0, source="poll", at=recorder.clock())
    recorder.poll_once()
    return recorder


def sync_row(engine, account: str, *, attempt: str, started_at: datetime, window_end: datetime, outcome: str,
             error: tuple[str, str] | None = None) -> None:
    """One ledger_syncs row as LedgerSync writes it, for an attempt of `account`."""
    with engine.begin() as connection:
        account_id = connection.execute(select(accounts.c.id).where(accounts.c.label == account)).scalar_one()
        connection.execute(insert(ledger_syncs).values(
            account_id=account_id, attempt_id=attempt, started_at=started_at, finished_at=started_at + timedelta(seconds=1),
            window_start=window_end - DAY, window_end=window_end, outcome=outcome, pages=1, requests=1,
            entries_fetched=0, entries_new=0, error_class=error[0] if error else None,
            error_message=error[1] if error else None,
        ))


def covered_then_stuck(engine, account: str, covered_until: datetime, failed_at: list[datetime]) -> None:
    """An attempt covering up to `covered_until` in two windows, then one failed attempt at each of `failed_at`."""
    attempt = str(uuid.uuid4())
    sync_row(engine, account, attempt=attempt, started_at=covered_until, window_end=covered_until - DAY, outcome="ok")
    sync_row(engine, account, attempt=attempt, started_at=covered_until, window_end=covered_until, outcome="ok")
    for at in failed_at:
        sync_row(engine, account, attempt=str(uuid.uuid4()), started_at=at, window_end=at, outcome="failed",
                 error=("BadPayload", "income entry INSURANCE_CLEAR 7 USDT came back with other content\nsecond line"))


def status(cli_env, *args: str) -> tuple[int, dict]:
    result = run_recorder("status", "--format", "json", *args, env=cli_env)
    return result.returncode, json.loads(result.stdout)


def test_status_a_ledger_not_covered_for_4_days_is_unhealthy_with_the_phrase(simulator, engine, cli_env, tmp_path):
    polled(simulator, engine, tmp_path).client.close()
    now = datetime.now(timezone.utc)
    covered_until = (now - 4 * DAY).replace(microsecond=0)
    covered_then_stuck(engine, "default", covered_until, [now - 3 * DAY, now - 2 * DAY, now - DAY])
    exit_code, document = status(cli_env)
    assert exit_code == 1 and document["failing"] == ["default"]
    (account,) = document["accounts"]
    assert account["ledger_covered_until"] == covered_until.isoformat()
    assert account["ledger_failures"] == 3
    assert account["problems"] == [
        f"ledger not covered since {covered_until.isoformat()}: 3 attempts failed since, last: "
        "BadPayload: income entry INSURANCE_CLEAR 7 USDT came back with other content"
    ]
    table = run_recorder("status", env=cli_env)
    assert table.returncode == 1
    header, _, row = table.stdout.splitlines()[:3]
    assert header.split()[7:9] == ["ledger_covered_until", "ledger_failures"]
    assert row.split()[:2] == ["default", "UNHEALTHY"] and row.split()[7:9] == [covered_until.isoformat(), "3"]


def test_status_a_ledger_covered_2_days_ago_is_healthy(simulator, engine, cli_env, tmp_path):
    polled(simulator, engine, tmp_path).client.close()
    now = datetime.now(timezone.utc)
    covered_until = (now - 2 * DAY).replace(microsecond=0)
    covered_then_stuck(engine, "default", covered_until, [now - DAY])
    exit_code, document = status(cli_env)
    assert exit_code == 0 and document["status"] == "healthy"
    (account,) = document["accounts"]
    assert account["ledger_covered_until"] == covered_until.isoformat()
    assert account["ledger_failures"] == 1 and account["problems"] == []
    assert account["ledger_last_error"].startswith("BadPayload: income entry INSURANCE_CLEAR")


def test_status_a_ledger_never_covered_counts_from_its_first_attempt(simulator, engine, cli_env, tmp_path):
    polled(simulator, engine, tmp_path).client.close()
    now = datetime.now(timezone.utc)
    first = (now - 4 * DAY).replace(microsecond=0)
    sync_row(engine, "default", attempt=str(uuid.uuid4()), started_at=first, window_end=first, outcome="failed",
             error=("ExchangeUnavailable", "HTTP 503"))
    exit_code, document = status(cli_env)
    assert exit_code == 1
    assert document["accounts"][0]["problems"] == [
        f"ledger never covered since its first sync attempt at {first.isoformat()}: 1 attempt failed since, "
        "last: ExchangeUnavailable: HTTP 503"
    ]
    assert document["accounts"][0]["ledger_covered_until"] is None


def test_status_an_account_without_ledger_syncs_is_not_judged_on_its_ledger(simulator, engine, cli_env, tmp_path):
    """Run with --no-ledger, an account has no ledger_syncs rows: healthy beside one whose ledger is stuck."""
    for label in ("default", "noledger"):
        polled(simulator, engine, tmp_path, label).client.close()
    now = datetime.now(timezone.utc)
    covered_then_stuck(engine, "default", now - 5 * DAY, [now - DAY])
    exit_code, document = status(cli_env)
    assert exit_code == 1 and document["failing"] == ["default"]
    no_ledger = document["accounts"][1]
    assert no_ledger["account"] == "noledger" and no_ledger["healthy"]
    assert no_ledger["ledger_covered_until"] is None and no_ledger["ledger_failures"] is None
    assert status(cli_env, "--account", "noledger")[0] == 0


class ShiftedClock:
    """Now, moved forward by `ahead`: /healthz judged as days later, while the syncs run in real time."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(timezone.utc) + self.ahead


@pytest.fixture
def served_at():
    clock = ShiftedClock()
    metrics = PollMetrics(clock=clock)
    server = MetricsServer(metrics, "127.0.0.1:0").start()
    yield metrics, server, clock
    server.stop()


def healthz(server) -> tuple[int, dict]:
    code, body = get(server.url + "/healthz")
    return code, json.loads(body)


def test_healthz_and_metrics_follow_a_failing_then_an_ok_ledger_sync(simulator, engine, tmp_path, served_at):
    metrics, server, clock = served_at
    recorder = make_recorder(simulator, engine, tmp_path / "spool")
    # A ten-day poll schedule keeps the poll rule quiet over the days this test skips ahead.
    metrics.watch("default", 10 * 86400.0)
    watch_ledger(metrics, recorder)
    (job,) = ledger_jobs(recorder, None, enabled=True, since=None, interval=300.0)  # type: ignore[arg-type]
    _, text = get(server.url + "/metrics")
    assert metric(text, 'recorder_ledger_consecutive_failures{account="default"}') == 0
    assert 'recorder_ledger_covered_until_seconds{account="default"}' not in text.decode()
    assert healthz(server)[1]["accounts"][0]["ledger_failures"] is None

    simulator.inject("malformed-json", endpoint="income")
    with pytest.raises(BadPayload):
        job.call()
    _, text = get(server.url + "/metrics")
    assert metric(text, 'recorder_ledger_consecutive_failures{account="default"}') == 1
    code, document = healthz(server)
    assert code == 200 and document["accounts"][0]["ledger_failures"] == 1
    assert document["accounts"][0]["ledger_last_error"].startswith("BadPayload: ")
    clock.ahead = LEDGER_STALE + timedelta(seconds=1)
    code, document = healthz(server)
    assert code == 503 and document["failing"] == ["default"]
    (problem,) = document["accounts"][0]["problems"]
    assert problem.startswith("ledger never covered since its first sync attempt at ")
    assert ": 1 attempt failed since, last: BadPayload: " in problem
    _, text = get(server.url + "/metrics")
    assert metric(text, 'recorder_healthy{account="default"}') == 0

    clock.ahead = timedelta(0)
    result = job.call()
    assert result.covered_until is not None
    _, text = get(server.url + "/metrics")
    assert metric(text, 'recorder_ledger_consecutive_failures{account="default"}') == 0
    assert metric(text, 'recorder_ledger_covered_until_seconds{account="default"}') == result.covered_until.timestamp()
    clock.ahead = 2 * DAY
    code, document = healthz(server)
    assert code == 200 and document["accounts"][0]["ledger_covered_until"] == result.covered_until.isoformat()
    assert document["accounts"][0]["ledger_failures"] == 0
    clock.ahead = LEDGER_STALE + timedelta(seconds=1)
    code, document = healthz(server)
    assert code == 503
    assert document["accounts"][0]["problems"] == [
        f"ledger not covered since {result.covered_until.isoformat()}: no attempt failed since (is the ledger sync running?)"
    ]
    recorder.client.close()


def test_healthz_is_seeded_from_the_database_at_start(simulator, engine, tmp_path, served_at):
    """A ledger stuck before a restart is reported from the start, with the database's figures."""
    metrics, server, clock = served_at
    recorder = polled(simulator, engine, tmp_path)
    now = datetime.now(timezone.utc)
    covered_until = (now - 4 * DAY).replace(microsecond=0)
    covered_then_stuck(engine, "default", covered_until, [now - 2 * DAY, now - DAY])
    metrics.watch("default", 10 * 86400.0)
    watch_ledger(metrics, recorder)
    code, document = healthz(server)
    assert code == 503
    with engine.connect() as connection:
        stored = read_ledger_of(connection, "default")
    assert document["accounts"][0]["ledger_failures"] == stored.failures == 2
    assert document["accounts"][0]["problems"] == [
        f"ledger not covered since {covered_until.isoformat()}: 2 attempts failed since, last: "
        "BadPayload: income entry INSURANCE_CLEAR 7 USDT came back with other content"
    ]
    _, text = get(server.url + "/metrics")
    assert metric(text, 'recorder_ledger_covered_until_seconds{account="default"}') == covered_until.timestamp()
    assert metric(text, 'recorder_ledger_consecutive_failures{account="default"}') == 2
    recorder.client.close()


def test_status_a_ledger_catching_up_is_healthy_until_it_stops_moving(simulator, engine, cli_env, tmp_path):
    """A first sync of 90 days paused between attempts for the weight budget is far behind but moving:
    healthy while a window was stored within LEDGER_STALE, flagged once none was for longer."""
    polled(simulator, engine, tmp_path).client.close()
    now = datetime.now(timezone.utc)
    covered_until = (now - 60 * DAY).replace(microsecond=0)
    attempt = str(uuid.uuid4())
    sync_row(engine, "default", attempt=attempt, started_at=now - timedelta(hours=1), window_end=covered_until, outcome="ok")
    exit_code, document = status(cli_env)
    assert exit_code == 0 and document["status"] == "healthy"
    assert document["accounts"][0]["ledger_covered_until"] == covered_until.isoformat()

    with engine.begin() as connection:
        connection.execute(ledger_syncs.update().values(started_at=now - 4 * DAY, finished_at=now - 4 * DAY))
    exit_code, document = status(cli_env)
    assert exit_code == 1 and document["accounts"][0]["problems"] == [
        f"ledger not covered since {covered_until.isoformat()}: no attempt failed since (is the ledger sync running?)"
    ]


def test_healthz_a_ledger_catching_up_is_healthy_until_it_stops_moving(served_at):
    metrics, server, clock = served_at
    metrics.watch("default", 10 * 86400.0)
    metrics.watch_ledger("default", None)
    behind = (datetime.now(timezone.utc) - 60 * DAY).replace(microsecond=0)
    metrics.observe_ledger("default", SyncResult("a", 1, 1, 0, 0, behind, paused=True), None)
    code, document = healthz(server)
    assert code == 200 and document["accounts"][0]["ledger_covered_until"] == behind.isoformat()

    # Two days on, an attempt that covered nothing new: the ledger last moved two days ago.
    clock.ahead = 2 * DAY
    metrics.observe_ledger("default", SyncResult("b", 0, 0, 0, 0, behind, paused=True), None)
    assert healthz(server)[0] == 200
    clock.ahead = LEDGER_STALE + timedelta(seconds=1)
    code, document = healthz(server)
    assert code == 503 and document["accounts"][0]["problems"] == [
        f"ledger not covered since {behind.isoformat()}: no attempt failed since (is the ledger sync running?)"
    ]
