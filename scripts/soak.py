#!/usr/bin/env python3
"""Soak test: the real `recorder run` against the simulator, through faults and database outages.

The soak process serves an in-process ExchangeSimulator (auto_move=True: balances change on
most polls) on 127.0.0.1 and runs the service as a subprocess, exactly as a user would:

    recorder run --interval 1     (RECORDER_TIMEOUT=2, a private spool folder)

For --minutes it follows a randomised but bounded schedule, fixed by --seed:

* every 20-40 s one injected exchange fault from the simulator's FAULTS, sometimes enough of
  them in a row to exhaust the client's in-poll retries (RETRY_ATTEMPTS); the rate-limit
  faults (418, 429, -1003, WAF 403) with Retry-After 3 s and one at a time (the WAF page
  carries no Retry-After, so the client waits its documented 60 s default after it), the
  authentication faults (-2015, -1022) about once per 10 minutes, never more than 3 times;
* every 2-4 minutes a database outage of 10-30 s. PostgreSQL: ALLOW_CONNECTIONS false and
  every session of the database terminated. SQLite: another connection holds BEGIN EXCLUSIVE
  (the recorder's busy timeout is 10 s, so outages there last at least 13 s);
* the last 45 s are quiet, so the spool drains and the fault queue empties before SIGTERM.

Then it sends SIGTERM (the service must exit 0 within 5 s) and checks:

* per asset, the distinct consecutive states the simulator served with HTTP 200 (all seven
  fields, as exact strings) equal the `balances` rows, in observed_at order: nothing lost,
  nothing stored twice, nothing invented. One exception is allowed and reported: the very last
  body, if SIGTERM landed between the answer and the write (an abandoned poll stores nothing);
* polls with outcome ok == bodies served (minus that one); failed polls by error class;
* the largest spool delay, max(recorded_at - finished_at);
* simulator.bans_issued == 0 (we never earned a 418), the spool folder is empty;
* the service's RSS, sampled every 10 s: growth from the first sample after 60 s of warm-up
  to the last sample must stay under 20 MB.

It prints one table of counts and a final JSON line, and exits 1 on any failed check.
Everything is local (127.0.0.1) and it stops by itself. A PostgreSQL run creates a throwaway
database next to the admin one and drops it at the end (--keep keeps it and the temp folder).

    .venv/bin/python scripts/soak.py --minutes 3 --backend sqlite
    .venv/bin/python scripts/soak.py --minutes 30 --backend postgresql --seed 7
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import func, select

from recorder.config import normalize_database_url
from recorder.db import make_engine, make_sessions
from recorder.exchange import RETRY_ATTEMPTS
from recorder.models import POLL_OK, Account, Balance, Poll
from recorder.simulator import FAULTS, ExchangeSimulator

ACCOUNT = "default"
API_KEY = "soak-key"
CLIENT_TIMEOUT = 2.0  # RECORDER_TIMEOUT: a stalled answer costs the poll little
QUIET_SECONDS = 45.0  # no fault or outage starts this close to the end
WARM_UP_SECONDS = 60.0
RSS_EVERY_SECONDS = 10.0
RSS_GROWTH_LIMIT_KB = 20 * 1024
EXIT_DEADLINE_SECONDS = 5.0
SQLITE_MIN_OUTAGE = 13.0  # > the recorder's 10 s busy timeout, so writes really fail
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"

# They block the client for Retry-After seconds: one at a time, and a short Retry-After.
RATE_FAULTS = ("ban-418", "rate-429", "rate-1003", "waf-403", "retry-after-inf")  # the last: the 60 s default
# They make the client back off for minutes if repeated: a few per run, one at a time.
AUTH_FAULTS = ("auth-2015", "auth-1022")
COMMON_FAULTS = tuple(sorted(FAULTS - set(RATE_FAULTS) - set(AUTH_FAULTS)))
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
STATE_KEYS = ("balance", "crossWalletBalance", "crossUnPnl", "availableBalance", "maxWithdrawAmount",
              "marginAvailable", "updateTime")
AMOUNT_COLUMNS = ("balance", "cross_wallet_balance", "cross_un_pnl", "available_balance", "max_withdraw_amount")

State = tuple[str, ...]


# -- the schedule ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One inject() call: `times` consecutive balance requests answer with `name`."""

    at: float
    name: str
    times: int = 1
    seconds: float = 30.0
    retry_after: int = 60


@dataclass(frozen=True)
class Outage:
    """The database refuses the recorder from `at` for `length` seconds."""

    at: float
    length: float


def plan(duration: float, backend: str, rng: random.Random) -> tuple[list[Fault], list[Outage]]:
    """A bounded, seeded schedule of faults and outages; nothing starts in the last QUIET_SECONDS."""
    end = duration - QUIET_SECONDS
    outages: list[Outage] = []
    at = rng.uniform(40, 70)
    while True:
        length = rng.uniform(SQLITE_MIN_OUTAGE if backend == "sqlite" else 10.0, 30.0)
        if at + length > end:
            break
        outages.append(Outage(at, length))
        at += length + rng.uniform(90, 210)

    slots: list[float] = []
    at = rng.uniform(10, 20)
    while at < end:
        slots.append(at)
        at += rng.uniform(20, 40)
    auth_count = min(3, max(1, round(duration / 600)), len(slots))
    auth_slots = set(rng.sample(range(len(slots)), auth_count))
    faults: list[Fault] = []
    deck: list[str] = []
    for index, at in enumerate(slots):
        if index in auth_slots:
            faults.append(Fault(at, AUTH_FAULTS[len([f for f in faults if f.name in AUTH_FAULTS]) % 2]))
            continue
        if not deck:
            # Every common fault once per deck, the rate-limit ones slipped in among them.
            deck = [*COMMON_FAULTS, *RATE_FAULTS]
            rng.shuffle(deck)
        name = deck.pop()
        if name in RATE_FAULTS:
            faults.append(Fault(at, name, 1, retry_after=3))
        elif name == "stall":
            # Longer than the client's read timeout: the client gives up, so nothing is served.
            faults.append(Fault(at, name, rng.choice((1, 2)), seconds=CLIENT_TIMEOUT + 1.5))
        elif name == "clock-1021":
            faults.append(Fault(at, name, rng.choice((1, 1, 2))))  # 2: the retry after a resync fails too
        else:
            times = rng.choices((1, 2, RETRY_ATTEMPTS, RETRY_ATTEMPTS + 2), weights=(40, 25, 25, 10))[0]
            faults.append(Fault(at, name, times))
    return faults, outages


# -- database outages ------------------------------------------------------------------------------


class SqliteOutage:
    """Hold SQLite's write lock on another connection: the recorder's BEGIN IMMEDIATE times out."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None

    def start(self) -> None:
        """Take the write lock (waiting for a write in progress to finish)."""
        self._connection = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._connection.execute("BEGIN EXCLUSIVE")

    def end(self) -> None:
        """Let go of the lock."""
        if self._connection is not None:
            self._connection.execute("ROLLBACK")
            self._connection.close()
            self._connection = None


class PostgresOutage:
    """Refuse new sessions to the database and end the open ones, as a restart or failover would."""

    def __init__(self, admin_url: str, database: str) -> None:
        self.admin_url = admin_url
        self.database = database

    def start(self) -> None:
        """ALLOW_CONNECTIONS false, then terminate every session of the database."""
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.database,),
            )

    def end(self) -> None:
        """Accept sessions again."""
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true')


# -- memory ------------------------------------------------------------------------------------------


@dataclass
class Sampler:
    """RSS (kB) and open file descriptors of the service, every RSS_EVERY_SECONDS."""

    pid: int
    started: float
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        """Sample until stopped or the process is gone."""
        while True:
            sample = self.sample()
            if sample is None:
                return
            self.samples.append(sample)
            if self.stop.wait(RSS_EVERY_SECONDS):
                return

    def sample(self) -> tuple[float, int, int] | None:
        """(seconds since start, VmRSS kB, open fds), or None if the process has exited."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        except (FileNotFoundError, ProcessLookupError):
            return None
        rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), None)
        if rss is None:
            return None  # a zombie has no VmRSS line
        return time.monotonic() - self.started, rss, fds


# -- the run -----------------------------------------------------------------------------------------


@dataclass
class Soak:
    """One soak run's settings and the records it keeps on the way."""

    minutes: float
    backend: str
    interval: float
    seed: int
    admin_url: str
    keep: bool
    workdir: Path = field(init=False)
    database_url: str = field(init=False)
    database_name: str | None = None
    faults_done: list[Fault] = field(default_factory=list)
    outages_done: list[Outage] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def execute(self) -> int:
        """Run the soak; return the process exit code."""
        self.workdir = Path(tempfile.mkdtemp(prefix="recorder-soak-"))
        failed = True
        try:
            self._create_database()
            report = self._run()
            failed = bool(report["failures"])
            render(report)
            return 1 if failed else 0
        finally:
            # The temp folder (service log, SQLite file) is small and explains a failure: kept
            # then. A PostgreSQL database goes unless --keep, so failed runs leave no clutter.
            if self.keep:
                print(f"kept: {self.workdir}" + (f" and {self.database_url}" if self.database_name else ""),
                      file=sys.stderr)
            else:
                self._drop_database()
                if failed:
                    print(f"kept: {self.workdir}", file=sys.stderr)
                else:
                    shutil.rmtree(self.workdir, ignore_errors=True)

    def _create_database(self) -> None:
        if self.backend == "sqlite":
            self.database_url = f"sqlite:///{self.workdir / 'soak.db'}"
            return
        self.database_name = f"recorder_soak_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.database_name}"')
        base = self.admin_url.rsplit("/", 1)[0]
        self.database_url = f"{base}/{self.database_name}"

    def _drop_database(self) -> None:
        if self.database_name is None:
            return
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{self.database_name}" ALLOW_CONNECTIONS true')
            admin.execute(f'DROP DATABASE "{self.database_name}" WITH (FORCE)')

    def _run(self) -> dict[str, Any]:
        duration = self.minutes * 60
        rng = random.Random(self.seed)
        faults, outages = plan(duration, self.backend, rng)
        secret = secrets.token_hex(32)
        simulator = ExchangeSimulator(auto_move=True, seed=self.seed)
        simulator.add_account(api_key=API_KEY, api_secret=secret, account_alias="SimSoak")
        simulator.start()
        spool_root = self.workdir / "spool"
        log_path = self.workdir / "service.log"
        outage: SqliteOutage | PostgresOutage
        if self.backend == "sqlite":
            outage = SqliteOutage(self.workdir / "soak.db")
        else:
            assert self.database_name is not None
            outage = PostgresOutage(self.admin_url, self.database_name)
        # Only what the service needs, so a RECORDER_* variable of this shell cannot leak in.
        env = {name: value for name, value in os.environ.items()
               if not name.startswith(("RECORDER_", "BINANCE_"))}
        env.update(
            BINANCE_API_KEY=API_KEY,
            BINANCE_API_SECRET=secret,
            BINANCE_BASE_URL=simulator.base_url,
            RECORDER_DATABASE_URL=self.database_url,
            RECORDER_SPOOL_DIR=str(spool_root),
            RECORDER_TIMEOUT=str(CLIENT_TIMEOUT),
        )
        command = [*recorder_command(), "run", "--interval", f"{self.interval:g}"]
        with open(log_path, "w") as log:
            service = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        started = time.monotonic()
        sampler = Sampler(service.pid, started)
        sampling = threading.Thread(target=sampler.run, name="rss-sampler", daemon=True)
        sampling.start()
        exit_code: int | None = None
        exit_seconds: float | None = None
        try:
            timeline: list[tuple[float, int, str, Any]] = [(f.at, 1, "fault", f) for f in faults]
            for o in outages:
                timeline += [(o.at, 0, "outage-start", o), (o.at + o.length, 0, "outage-end", o)]
            timeline.sort(key=lambda item: (item[0], item[1]))
            for at, _, kind, item in timeline:
                wait = at - (time.monotonic() - started)
                if wait > 0:
                    time.sleep(wait)
                if service.poll() is not None:
                    break  # the service died: stop driving it, the checks will say so
                now = time.monotonic() - started
                if kind == "fault":
                    simulator.inject(item.name, item.times, seconds=item.seconds, retry_after=item.retry_after)
                    self.faults_done.append(item)
                    self.events.append(f"{now:7.1f}s fault {item.name} x{item.times}")
                elif kind == "outage-start":
                    outage.start()
                    self.events.append(f"{now:7.1f}s outage start ({item.length:.0f}s)")
                else:
                    outage.end()
                    self.outages_done.append(item)
                    self.events.append(f"{now:7.1f}s outage end")
            wait = duration - (time.monotonic() - started)
            if wait > 0 and service.poll() is None:
                time.sleep(wait)
            if service.poll() is None:
                final = sampler.sample()
                if final is not None:
                    sampler.samples.append(final)
                sigterm_at = time.monotonic()
                service.send_signal(signal.SIGTERM)
                try:
                    exit_code = service.wait(timeout=EXIT_DEADLINE_SECONDS)
                    exit_seconds = time.monotonic() - sigterm_at
                except subprocess.TimeoutExpired:
                    exit_seconds = None
            else:
                exit_code = service.returncode
        finally:
            if service.poll() is None:
                service.kill()
                service.wait(timeout=30)
            sampler.stop.set()
            sampling.join(timeout=5)
            if isinstance(outage, SqliteOutage):
                outage.end()
            simulator.stop()
        served = [s for s in simulator.served if s.api_key == API_KEY]
        return self._check(
            served=served,
            requests=simulator.requests_log,
            bans=simulator.bans_issued,
            spool_root=spool_root,
            log_path=log_path,
            samples=sampler.samples,
            exit_code=exit_code,
            exit_seconds=exit_seconds,
            duration=time.monotonic() - started,
        )

    def _check(self, *, served: list[Any], requests: list[Any], bans: int, spool_root: Path, log_path: Path,
               samples: list[tuple[float, int, int]], exit_code: int | None, exit_seconds: float | None,
               duration: float) -> dict[str, Any]:
        stored = read_database(self.database_url)
        failures: list[str] = []

        expected_all = served_states(served)
        expected_but_last = served_states(served[:-1])
        db_states = stored["states"]
        last_unstored = False
        if db_states == expected_all:
            expected = expected_all
        elif served and db_states == expected_but_last and stored["ok_polls"] == len(served) - 1:
            # SIGTERM landed between the last 200 and its write: allowed, and reported.
            expected, last_unstored = expected_but_last, True
        else:
            expected = expected_all
        missing = extra = duplicates = out_of_order = 0
        for asset in sorted(set(expected) | set(db_states)):
            want, got = expected.get(asset, []), db_states.get(asset, [])
            lost = Counter(want) - Counter(got)
            more = Counter(got) - Counter(want)
            missing += sum(lost.values())
            # A served state stored once too often is a duplicate; one never served is extra.
            duplicates += sum(n for state, n in more.items() if state in want)
            extra += sum(n for state, n in more.items() if state not in want)
            if not lost and not more and want != got:
                out_of_order += 1
        ok_expected = len(served) - (1 if last_unstored else 0)
        if missing:
            failures.append(f"{missing} served state(s) missing from the database")
        if extra:
            failures.append(f"{extra} stored state(s) the simulator never served")
        if duplicates:
            failures.append(f"{duplicates} state(s) stored more than once")
        if out_of_order:
            failures.append(f"{out_of_order} asset(s) with states stored out of order")
        if stored["vanished_rows"]:
            failures.append(f"{stored['vanished_rows']} present=false row(s): no asset ever vanished")
        if stored["ok_polls"] != ok_expected:
            failures.append(f"{stored['ok_polls']} ok polls for {len(served)} bodies served")
        if bans:
            failures.append(f"the simulator banned us {bans} time(s) (418 earned by ignoring a Retry-After)")
        leftovers = sorted(str(p.relative_to(spool_root)) for p in spool_root.rglob("*")
                           if p.is_file() and p.name != "writer.lock")
        if leftovers:
            failures.append(f"spool not empty: {', '.join(leftovers[:5])}")
        if exit_code != 0:
            failures.append(f"service exit code {exit_code} (or no exit within {EXIT_DEADLINE_SECONDS:g}s)")
        log_text = log_path.read_text(errors="replace")
        tracebacks = log_text.count("Traceback (most recent call last)")
        if tracebacks:
            failures.append(f"{tracebacks} traceback(s) in the service log")
        abandoned = "abandoned" in log_text

        warm = next((s for s in samples if s[0] >= WARM_UP_SECONDS), samples[0] if samples else None)
        last = samples[-1] if samples else None
        rss = {
            "warm_kb": warm[1] if warm else None,
            "last_kb": last[1] if last else None,
            "max_kb": max(s[1] for s in samples) if samples else None,
            "growth_kb": (last[1] - warm[1]) if warm and last else None,
            "fds_warm": warm[2] if warm else None,
            "fds_last": last[2] if last else None,
            "samples": len(samples),
        }
        if rss["growth_kb"] is None:
            failures.append("no RSS samples")
        elif rss["growth_kb"] > RSS_GROWTH_LIMIT_KB:
            failures.append(f"RSS grew {rss['growth_kb'] / 1024:.1f} MB after warm-up")

        balance_requests = [r for r in requests if r.path.endswith("/balance")]
        report = {
            "backend": self.backend,
            "minutes": self.minutes,
            "interval_s": self.interval,
            "seed": self.seed,
            "ran_s": round(duration, 1),
            "balance_requests": len(balance_requests),
            "requests_by_status": dict(sorted(Counter(r.status for r in balance_requests).items())),
            "time_requests": sum(1 for r in requests if r.path == "/fapi/v1/time"),
            "served_200": len(served),
            "faults_injected": len(self.faults_done),
            "fault_requests": sum(f.times for f in self.faults_done),
            "faults_by_name": dict(sorted(Counter(f.name for f in self.faults_done).items())),
            "retry_exhausting_faults": sum(1 for f in self.faults_done if f.times >= RETRY_ATTEMPTS),
            "db_outages": len(self.outages_done),
            "db_outage_s": round(sum(o.length for o in self.outages_done), 1),
            "polls": stored["polls"],
            "ok_polls": stored["ok_polls"],
            "failed_polls": stored["polls"] - stored["ok_polls"],
            "failed_by_class": stored["failed_by_class"],
            "not_sent_polls": stored["not_sent"],
            "states_served": sum(len(v) for v in expected.values()),
            "states_stored": sum(len(v) for v in db_states.values()),
            "missing": missing,
            "extra": extra,
            "duplicates": duplicates,
            "last_body_unstored": last_unstored,
            "abandoned_at_shutdown": abandoned,
            "replayed_polls": stored["replayed"],
            "max_spool_delay_s": stored["max_delay_s"],
            "bans_issued": bans,
            "spool_left": len(leftovers),
            "exit_code": exit_code,
            "exit_s": round(exit_seconds, 2) if exit_seconds is not None else None,
            "rss": rss,
            "tracebacks": tracebacks,
            "failures": failures,
        }
        if failures:
            print("service log (last 40 lines):", file=sys.stderr)
            print("\n".join(log_text.splitlines()[-40:]), file=sys.stderr)
            print("schedule:", *self.events, sep="\n  ", file=sys.stderr)
        return report


def recorder_command() -> list[str]:
    """The venv's `recorder` console script; `python -m recorder` if it is not beside this python."""
    script = Path(sys.executable).with_name("recorder")
    return [str(script)] if script.exists() else [sys.executable, "-m", "recorder"]


def state_of_row(row: dict[str, Any]) -> State:
    """A served row's seven fields as exact strings."""
    return tuple(str(row[key]).lower() if isinstance(row[key], bool) else str(row[key]) for key in STATE_KEYS)


def served_states(served: Iterable[Any]) -> dict[str, list[State]]:
    """Per asset, the served states with consecutive repeats collapsed (what the recorder stores)."""
    states: dict[str, list[State]] = {}
    for snapshot in served:
        for row in snapshot.rows:
            rows = states.setdefault(row["asset"], [])
            state = state_of_row(row)
            if not rows or rows[-1] != state:
                rows.append(state)
    return states


def state_of_balance(balance: Balance) -> State:
    """A stored row's seven fields as the strings Binance sent (format(Decimal, 'f'), epoch ms)."""
    amounts = [format(getattr(balance, name), "f") for name in AMOUNT_COLUMNS]
    assert balance.update_time is not None
    update_ms = (balance.update_time - EPOCH) // timedelta(milliseconds=1)
    return (*amounts, str(balance.margin_available).lower(), str(update_ms))


def read_database(url: str) -> dict[str, Any]:
    """What the service stored: per-asset states, poll counts and the spool delays."""
    engine = make_engine(normalize_database_url(url))
    try:
        with make_sessions(engine)() as session:
            account_id = session.scalars(select(Account.id).where(Account.label == ACCOUNT)).one_or_none()
            states: dict[str, list[State]] = {}
            vanished = 0
            rows = session.scalars(
                select(Balance).where(Balance.account_id == account_id).order_by(Balance.observed_at, Balance.id)
            )
            for balance in rows:
                if not balance.present:
                    vanished += 1
                    continue
                states.setdefault(balance.asset, []).append(state_of_balance(balance))
            polls = session.scalars(select(Poll).where(Poll.account_id == account_id)).all()
            # recorded_at is only kept for a poll stored late (from the spool, or after a lock wait).
            delays = [(p.recorded_at - p.finished_at).total_seconds() for p in polls if p.recorded_at is not None]
            failed = Counter(p.error_class or "?" for p in polls if p.outcome != POLL_OK)
            return {
                "states": states,
                "vanished_rows": vanished,
                "polls": len(polls),
                "ok_polls": sum(1 for p in polls if p.outcome == POLL_OK),
                "failed_by_class": dict(failed.most_common()),
                "not_sent": sum(1 for p in polls if p.error_message and "not sent" in p.error_message),
                "replayed": len(delays),
                "max_delay_s": round(max(delays, default=0.0), 1),
                "balance_rows": session.scalar(select(func.count()).select_from(Balance)),
            }
    finally:
        engine.dispose()


def render(report: dict[str, Any]) -> None:
    """One table of counts, then the whole report as one JSON line."""
    rss = report["rss"]

    def mb(kb: int | None) -> str:
        return "-" if kb is None else f"{kb / 1024:.1f} MB"

    rows = [
        ("backend / interval / seed", f"{report['backend']} / {report['interval_s']:g} s / {report['seed']}"),
        ("ran", f"{report['ran_s']:.0f} s"),
        ("balance requests by HTTP status (0: reset)", f"{report['balance_requests']} {report['requests_by_status']}"),
        ("bodies served with 200", report["served_200"]),
        ("faults injected (requests)", f"{report['faults_injected']} ({report['fault_requests']}), "
                                       f"{report['retry_exhausting_faults']} exhausting the retries"),
        ("database outages", f"{report['db_outages']}, {report['db_outage_s']:.0f} s in all"),
        ("polls: all / ok / failed", f"{report['polls']} / {report['ok_polls']} / {report['failed_polls']}"),
        *((f"  failed: {name}", count) for name, count in report["failed_by_class"].items()),
        ("  of which not sent (rate limit or auth backoff)", report["not_sent_polls"]),
        ("polls stored late from the spool", report["replayed_polls"]),
        ("max spool delay (recorded_at - finished_at)", f"{report['max_spool_delay_s']:.1f} s"),
        ("distinct states served / stored", f"{report['states_served']} / {report['states_stored']}"),
        ("missing / extra / duplicates", f"{report['missing']} / {report['extra']} / {report['duplicates']}"),
        ("last body not stored (SIGTERM)", "yes (allowed)" if report["last_body_unstored"] else "no"),
        ("bans issued by the simulator", report["bans_issued"]),
        ("spool files left", report["spool_left"]),
        ("exit code / seconds after SIGTERM", f"{report['exit_code']} / {report['exit_s']}"),
        ("RSS warm-up / last / max", f"{mb(rss['warm_kb'])} / {mb(rss['last_kb'])} / {mb(rss['max_kb'])}"),
        ("RSS growth after warm-up", mb(rss["growth_kb"])),
        ("open fds warm-up / last", f"{rss['fds_warm']} / {rss['fds_last']}"),
        ("result", "FAIL: " + "; ".join(report["failures"]) if report["failures"] else "PASS"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(json.dumps(report, sort_keys=True, default=str))


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run one soak."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to run (default 30)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--interval", type=float, default=1.0, help="the service's poll interval, s (default 1)")
    parser.add_argument("--seed", type=int, default=1, help="fixes the schedule and the simulated market")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("RECORDER_TEST_POSTGRES_URL", DEFAULT_ADMIN_URL),
        help="PostgreSQL database to create the throwaway database from "
        "[env RECORDER_TEST_POSTGRES_URL; default %(default)s]",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp folder and the database")
    args = parser.parse_args(argv)
    if args.minutes * 60 < QUIET_SECONDS + 30:
        parser.error(f"--minutes must leave more than the last {QUIET_SECONDS:g} s quiet: at least 1.25")
    admin_url = args.admin_url.replace("postgresql+psycopg://", "postgresql://")
    soak = Soak(minutes=args.minutes, backend=args.backend, interval=args.interval, seed=args.seed,
                admin_url=admin_url, keep=args.keep)
    return soak.execute()


if __name__ == "__main__":
    sys.exit(main())
