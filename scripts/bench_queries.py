#!/usr/bin/env python3
"""Benchmark the query module on months of 1-minute polls, beside the naive approach.

For each backend (SQLite, PostgreSQL) and history length (default 1 and 12 months of
30 days), it builds two databases from the same synthetic history:

* ours: the recorder schema (migrated to head, views included), a polls row per minute
  per account and a balances row only when an asset changed;
* naive: one table with a full snapshot row per asset per successful poll and no index,
  the table a user would fill from a cron job or pandas' to_sql.

Two accounts of 8 assets each: "idle" never changes after its first poll, "busy" has its
USDT row change on every poll. A 20-minute outage every 10 days writes failed polls.
The history is bulk-loaded (executemany on SQLite, COPY on PostgreSQL) in large
transactions, not poll by poll, so a 12-month run takes minutes.

The recorder's own bookkeeping is loaded with it: a 60 s poll schedule per account
(tolerance 90 s) and the gap each outage leaves (poll_gaps), as the writer stores them.

Then it measures p50/p95 latency of as_of, diff, changes over one day, series over one
month by hour and gaps over the whole history (from the stored gaps; with --tolerance 75 s,
below the stored 90 s, which falls back to scanning every poll as `gaps` did before the
gaps were stored; with --tolerance 300 s, which filters the stored gaps), through the
library (recorder.queries) and
through naive SQL plus Python on the snapshot table, and prints one table and a final JSON
line. The "view ..." rows run the README's range-filtered example queries on the
`balance_changes` view, against (in the naive columns) the same SQL on the view as it was
before migration 0006, created beside it in the same database. --keep DIR keeps the SQLite files in DIR and the PostgreSQL databases (their URLs
are printed) for inspection.

    .venv/bin/python scripts/bench_queries.py                       # both backends, 1 and 12 months
    .venv/bin/python scripts/bench_queries.py --months 1 --backends sqlite
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, bindparam, text

from recorder import queries
from recorder.db import make_engine, make_sessions
from recorder.db_types import UtcDateTime
from recorder.schema import upgrade_to_head

UTC = timezone.utc
START = datetime(2025, 1, 1, tzinfo=UTC)
INTERVAL = timedelta(minutes=1)
DAY = timedelta(days=1)
MONTH = timedelta(days=30)
# The stored schedule: 60 s polls, so the tolerance is 90 s (recorder.coverage).
INTERVAL_MS, TOLERANCE_MS = 60_000, 90_000
TOLERANCE = timedelta(milliseconds=TOLERANCE_MS)
OUTAGE_EVERY = 10 * 1440  # polls
OUTAGE_POLLS = 20
ASSETS = {  # constant amounts, in units of 1e-8
    "BNB": 150_000_000,
    "BTC": 12_345_678,
    "ETH": 225_000_000,
    "FDUSD": 10_000_000_000,
    "USDC": 500_000_000_000,
    "BFUSD": 1,
    "BNFCR": 4_200_000_000,
    "USDT": 1_000_000_000_000,
}
ACCOUNTS = {1: "idle", 2: "busy"}
NAIVE_COLUMNS = ("account", "polled_at", "asset", "balance", "cross_wallet_balance", "cross_un_pnl",
                 "available_balance", "max_withdraw_amount", "margin_available", "update_time")


# --- the synthetic history ---------------------------------------------------------------


def amount(units: int) -> str:
    """Units of 1e-8 as Binance's plain 8-decimal text."""
    sign = "-" if units < 0 else ""
    units = abs(units)
    return f"{sign}{units // 100_000_000}.{units % 100_000_000:08d}"


def usdt_state(index: int) -> tuple[str, str, str, str, str]:
    """The busy account's USDT amounts after poll `index`: different after every poll."""
    balance = ASSETS["USDT"] + index * 137
    pnl = (index * 7919) % 2_000_001 - 1_000_000
    return amount(balance), amount(balance), amount(pnl), amount(balance + min(pnl, 0)), amount(balance + min(pnl, 0))


def constant_state(asset: str) -> tuple[str, str, str, str, str]:
    value = amount(ASSETS[asset])
    return value, value, amount(0), value, value


@dataclass(frozen=True)
class History:
    """The shape of one synthetic history."""

    months: int

    @property
    def polls(self) -> int:
        return self.months * 30 * 1440

    @property
    def end(self) -> datetime:
        return START + self.polls * INTERVAL

    @staticmethod
    def failed(index: int) -> bool:
        return index % OUTAGE_EVERY >= OUTAGE_EVERY - OUTAGE_POLLS

    @staticmethod
    def started(index: int) -> datetime:
        return START + index * INTERVAL

    @staticmethod
    def finished(index: int) -> datetime:
        return START + index * INTERVAL + timedelta(milliseconds=180 + (index % 7) * 10)


class Rows:
    """Every row of both databases as tuples of storage values, produced lazily."""

    def __init__(self, history: History, time_text: Callable[[datetime], str], true: Any, false: Any) -> None:
        self.history = history
        self.time_text = time_text
        self.true, self.false = true, false

    def accounts(self) -> Iterator[tuple]:
        for account_id, label in ACCOUNTS.items():
            yield account_id, label, f"bench-{label}", "local", self.time_text(START)

    def polls(self) -> Iterator[tuple]:
        first_ok = True
        for index in range(self.history.polls):
            started, finished = self.time_text(self.history.started(index)), self.time_text(self.history.finished(index))
            failed = self.history.failed(index)
            for account_id in ACCOUNTS:
                if failed:
                    error = "RateLimited" if (index // OUTAGE_EVERY) % 2 else "ExchangeUnavailable"
                    yield (account_id, finished, started, None, None, None, "failed", "v2",
                           None, error, "HTTP 503 from exchange", 503, None)
                else:
                    changed = len(ASSETS) if first_ok else (1 if account_id == 2 else 0)
                    yield (account_id, finished, started, 10, len(ASSETS), changed, "ok", "v2",
                           None, None, None, None, None)
            if not failed:
                first_ok = False

    def schedules(self) -> Iterator[tuple]:
        for account_id in ACCOUNTS:
            yield account_id, self.time_text(START), INTERVAL_MS, TOLERANCE_MS, "run"

    def gaps(self) -> Iterator[tuple]:
        """What the writer stores: consecutive ok polls further apart than the tolerance."""
        previous = None
        for index in range(self.history.polls):
            if self.history.failed(index):
                continue
            finished = self.history.finished(index)
            if previous is not None and finished - previous > TOLERANCE:
                for account_id in ACCOUNTS:
                    yield account_id, self.time_text(finished), self.time_text(previous), TOLERANCE_MS
            previous = finished

    def balances(self, heads: dict[tuple[int, str], int]) -> Iterator[tuple]:
        """State rows: every asset at the first poll, then the busy USDT at every ok poll."""
        balance_id = 0
        start_update = self.time_text(START)
        for index in range(self.history.polls):
            if self.history.failed(index):
                continue
            finished = self.time_text(self.history.finished(index))
            for account_id in ACCOUNTS:
                if index == 0:
                    names = list(ASSETS)
                elif account_id == 2:
                    names = ["USDT"]
                else:
                    names = []
                for asset in names:
                    balance_id += 1
                    heads[(account_id, asset)] = balance_id
                    busy_usdt = account_id == 2 and asset == "USDT"
                    state = usdt_state(index) if busy_usdt else constant_state(asset)
                    update = finished if busy_usdt else start_update
                    yield (balance_id, account_id, asset, finished, self.true, *state, self.true, update)

    def naive(self) -> Iterator[tuple]:
        """A full snapshot row per asset per successful poll, both accounts."""
        constant = {asset: constant_state(asset) for asset in ASSETS}
        start_update = self.time_text(START)
        for index in range(self.history.polls):
            if self.history.failed(index):
                continue
            finished = self.time_text(self.history.finished(index))
            for account_id, label in ACCOUNTS.items():
                for asset in ASSETS:
                    busy_usdt = account_id == 2 and asset == "USDT"
                    state = usdt_state(index) if busy_usdt else constant[asset]
                    yield (label, finished, asset, *state, self.true, finished if busy_usdt else start_update)


# In the tables' column order (see recorder.models).
POLL_COLUMNS = ("account_id", "finished_at", "started_at", "used_weight", "asset_count", "changed_count", "outcome",
                "endpoint", "recorded_at", "error_class", "error_message", "http_status", "error_code")
SCHEDULE_COLUMNS = ("account_id", "started_at", "interval_ms", "tolerance_ms", "source")
GAP_COLUMNS = ("account_id", "end_at", "start_at", "tolerance_ms")
BALANCE_COLUMNS = ("id", "account_id", "asset", "observed_at", "present", "balance", "cross_wallet_balance",
                   "cross_un_pnl", "available_balance", "max_withdraw_amount", "margin_available", "update_time")


# --- backends ----------------------------------------------------------------------------


class Backend:
    """Create, fill, measure and drop the two databases of one backend."""

    name = ""

    def create(self, label: str) -> str:
        raise NotImplementedError

    def load(self, url: str, rows: Rows, naive: bool) -> None:
        raise NotImplementedError

    def size(self, url: str) -> int:
        raise NotImplementedError

    def drop(self, url: str) -> None:
        raise NotImplementedError


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def create(self, label: str) -> str:
        path = self.directory / f"bench-{label}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{path}"

    def load(self, url: str, rows: Rows, naive: bool) -> None:
        engine = make_engine(url)
        try:
            if not naive:
                upgrade_to_head(engine)
            raw = engine.raw_connection()
            try:
                connection = raw.driver_connection
                # A bulk load: no fsync per page. The recorder's own connections keep synchronous=FULL.
                connection.execute("PRAGMA synchronous=OFF")
                connection.execute("BEGIN")
                if naive:
                    connection.execute(
                        "CREATE TABLE naive_snapshots (account TEXT, polled_at DATETIME, asset TEXT, balance TEXT, "
                        "cross_wallet_balance TEXT, cross_un_pnl TEXT, available_balance TEXT, max_withdraw_amount TEXT, "
                        "margin_available BOOLEAN, update_time DATETIME)"
                    )
                    connection.executemany(f"INSERT INTO naive_snapshots VALUES ({', '.join('?' * len(NAIVE_COLUMNS))})", rows.naive())
                else:
                    heads: dict[tuple[int, str], int] = {}
                    connection.executemany("INSERT INTO accounts (id, label, account_alias, environment, created_at) VALUES (?, ?, ?, ?, ?)", rows.accounts())
                    connection.executemany(f"INSERT INTO polls ({', '.join(POLL_COLUMNS)}) VALUES ({', '.join('?' * len(POLL_COLUMNS))})", rows.polls())
                    connection.executemany(f"INSERT INTO poll_schedules ({', '.join(SCHEDULE_COLUMNS)}) VALUES ({', '.join('?' * len(SCHEDULE_COLUMNS))})", rows.schedules())
                    connection.executemany(f"INSERT INTO poll_gaps ({', '.join(GAP_COLUMNS)}) VALUES ({', '.join('?' * len(GAP_COLUMNS))})", rows.gaps())
                    connection.executemany(f"INSERT INTO balances ({', '.join(BALANCE_COLUMNS)}) VALUES ({', '.join('?' * len(BALANCE_COLUMNS))})", rows.balances(heads))
                    connection.executemany("INSERT INTO balance_heads (account_id, asset, balance_id) VALUES (?, ?, ?)",
                                           [(account_id, asset, balance_id) for (account_id, asset), balance_id in heads.items()])
                connection.execute("COMMIT")
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                raw.close()
        finally:
            engine.dispose()

    def size(self, url: str) -> int:
        path = url.removeprefix("sqlite:///")
        return sum(Path(f"{path}{suffix}").stat().st_size for suffix in ("", "-wal") if Path(f"{path}{suffix}").exists())

    def drop(self, url: str) -> None:
        path = url.removeprefix("sqlite:///")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


class PostgresBackend(Backend):
    name = "postgresql"

    def __init__(self, admin_url: str) -> None:
        self.admin = admin_url.replace("postgresql+psycopg://", "postgresql://", 1)

    def _libpq(self, url: str) -> str:
        return url.replace("postgresql+psycopg://", "postgresql://", 1)

    def create(self, label: str) -> str:
        name = f"recorder_bench_{label.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(self.admin, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return "postgresql+psycopg://" + self.admin.split("://", 1)[1].rsplit("/", 1)[0] + "/" + name

    def load(self, url: str, rows: Rows, naive: bool) -> None:
        if not naive:
            engine = make_engine(url)
            try:
                upgrade_to_head(engine)
            finally:
                engine.dispose()
        with psycopg.connect(self._libpq(url)) as connection:
            with connection.cursor() as cursor:
                if naive:
                    cursor.execute(
                        "CREATE TABLE naive_snapshots (account text, polled_at timestamptz, asset text, balance numeric, "
                        "cross_wallet_balance numeric, cross_un_pnl numeric, available_balance numeric, "
                        "max_withdraw_amount numeric, margin_available boolean, update_time timestamptz)"
                    )
                    _copy(cursor, "naive_snapshots", NAIVE_COLUMNS, rows.naive())
                else:
                    heads: dict[tuple[int, str], int] = {}
                    _copy(cursor, "accounts", ("id", "label", "account_alias", "environment", "created_at"), rows.accounts())
                    _copy(cursor, "polls", POLL_COLUMNS, rows.polls())
                    _copy(cursor, "poll_schedules", SCHEDULE_COLUMNS, rows.schedules())
                    _copy(cursor, "poll_gaps", GAP_COLUMNS, rows.gaps())
                    _copy(cursor, "balances", BALANCE_COLUMNS, rows.balances(heads))
                    _copy(cursor, "balance_heads", ("account_id", "asset", "balance_id"),
                          ((account_id, asset, balance_id) for (account_id, asset), balance_id in heads.items()))
                    # Explicit ids were copied in: move the sequences past them so a kept
                    # database can go on recording.
                    for table in ("accounts", "balances"):
                        cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
            connection.commit()
        # What autovacuum would do shortly after such a load; both databases get it.
        with psycopg.connect(self._libpq(url), autocommit=True) as connection:
            connection.execute("VACUUM ANALYZE")

    def size(self, url: str) -> int:
        with psycopg.connect(self._libpq(url)) as connection:
            return connection.execute("SELECT pg_database_size(current_database())").fetchone()[0]

    def drop(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _copy(cursor: psycopg.Cursor, table: str, columns: tuple[str, ...], rows: Iterator[tuple]) -> None:
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        chunk: list[str] = []
        for row in rows:
            chunk.append("\t".join("\\N" if value is None else str(value) for value in row))
            if len(chunk) >= 50_000:
                copy.write("\n".join(chunk) + "\n")
                chunk = []
        if chunk:
            copy.write("\n".join(chunk) + "\n")


def sqlite_time(value: datetime) -> str:
    # UtcDateTime's storage on SQLite: fixed-width UTC text (SQLAlchemy's DATETIME format).
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def postgres_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f+00")


# --- the naive approach ------------------------------------------------------------------


class Naive:
    """What a user writes against the snapshot table: plain SQL, then Python (pandas-like)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        t = bindparam("t", type_=UtcDateTime())
        self._as_of = text(
            "SELECT asset, polled_at, balance, cross_wallet_balance, cross_un_pnl, available_balance, max_withdraw_amount "
            "FROM naive_snapshots WHERE account = :account AND polled_at = "
            "(SELECT max(polled_at) FROM naive_snapshots WHERE account = :account AND polled_at <= :t)"
        ).bindparams(t)
        self._range = text(
            "SELECT polled_at, asset, balance, cross_wallet_balance, cross_un_pnl, available_balance, max_withdraw_amount "
            "FROM naive_snapshots WHERE account = :account AND polled_at >= :since AND polled_at < :until "
            "ORDER BY polled_at, asset"
        ).bindparams(bindparam("since", type_=UtcDateTime()), bindparam("until", type_=UtcDateTime()))
        self._series = text(
            "SELECT polled_at, balance FROM naive_snapshots WHERE account = :account AND asset = :asset "
            "AND polled_at >= :since AND polled_at < :until ORDER BY polled_at"
        ).bindparams(bindparam("since", type_=UtcDateTime()), bindparam("until", type_=UtcDateTime()))
        self._times = text("SELECT DISTINCT polled_at FROM naive_snapshots WHERE account = :account ORDER BY polled_at")

    def as_of(self, account: str, at: datetime) -> dict[str, tuple]:
        with self.engine.connect() as connection:
            rows = connection.execute(self._as_of, {"account": account, "t": at}).all()
        return {row[0]: tuple(Decimal(str(v)) for v in row[2:]) for row in rows}

    def diff(self, account: str, start: datetime, end: datetime) -> dict[str, tuple]:
        before, after = self.as_of(account, start), self.as_of(account, end)
        return {asset: tuple(b - a for a, b in zip(before[asset], after[asset])) for asset in before.keys() & after.keys()}

    def changes(self, account: str, since: datetime, until: datetime) -> list[tuple]:
        with self.engine.connect() as connection:
            rows = connection.execute(self._range, {"account": account, "since": since, "until": until}).all()
        previous: dict[str, tuple] = {}
        events = []
        for row in rows:
            values = tuple(Decimal(str(v)) for v in row[2:])
            old = previous.get(row[1])
            if old != values:
                events.append((row[0], row[1], values, old and tuple(n - o for n, o in zip(values, old))))
                previous[row[1]] = values
        return events

    def series(self, account: str, asset: str, since: datetime, until: datetime) -> list[tuple]:
        with self.engine.connect() as connection:
            rows = connection.execute(self._series, {"account": account, "asset": asset, "since": since, "until": until}).all()
        closing: dict[str, Decimal] = {}
        for polled_at, balance in rows:
            closing[str(polled_at)[:13]] = Decimal(str(balance))  # the last value of each hour
        return sorted(closing.items())

    def gaps(self, account: str, tolerance: timedelta = TOLERANCE) -> list[tuple]:
        with self.engine.connect() as connection:
            times = [_aware(v) for (v,) in connection.execute(self._times, {"account": account})]
        return [(a, b) for a, b in zip(times, times[1:]) if b - a > tolerance]


def _aware(value: Any) -> datetime:
    if isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value.astimezone(UTC)


# --- measuring ---------------------------------------------------------------------------


def measure(function: Callable[[Any], Any], arguments: list[Any]) -> dict[str, float]:
    """p50/p95 in ms over the argument list, after one warm-up call."""
    function(arguments[0])
    timings = []
    for argument in arguments:
        started = time.perf_counter()
        function(argument)
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    p95 = timings[min(len(timings) - 1, int(round(0.95 * (len(timings) - 1))))]
    return {"p50_ms": round(statistics.median(timings), 3), "p95_ms": round(p95, 3), "runs": len(timings)}


def bench(backend: Backend, months: int, repeat: int, naive_repeat: int, keep: bool, only: str = "") -> dict[str, Any]:
    history = History(months)
    label = f"{months}m"
    is_sqlite = backend.name == "sqlite"
    time_text = sqlite_time if is_sqlite else postgres_time
    true, false = (1, 0) if is_sqlite else ("t", "f")
    result: dict[str, Any] = {"backend": backend.name, "months": months, "polls_per_account": history.polls}

    # The view queries compare two views of one database: no naive table to load for them.
    with_naive = not only.startswith("view")
    ours_url = backend.create(f"{label}-ours")
    naive_url = backend.create(f"{label}-naive") if with_naive else None
    try:
        started = time.perf_counter()
        backend.load(ours_url, Rows(history, time_text, true, false), naive=False)
        result["load_ours_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        if naive_url:
            backend.load(naive_url, Rows(history, time_text, true, false), naive=True)
        result["load_naive_s"] = round(time.perf_counter() - started, 1)
        result["size_ours_mb"] = round(backend.size(ours_url) / 1e6, 1)
        result["size_naive_mb"] = round(backend.size(naive_url) / 1e6, 1) if naive_url else 0.0
        log(f"{backend.name} {label}: loaded in {result['load_ours_s']} s (ours) + {result['load_naive_s']} s (naive)")

        engine = make_engine(ours_url)
        naive_engine = make_engine(naive_url) if naive_url else None
        try:
            create_windowed_view(engine)
            sessions = make_sessions(engine)
            naive = Naive(naive_engine) if naive_engine else None
            if naive:
                check(sessions, naive, history)
            result["queries"] = run_queries(sessions, naive, history, repeat, naive_repeat, only)
        finally:
            engine.dispose()
            if naive_engine:
                naive_engine.dispose()
        if keep:
            result["kept"] = {"ours": ours_url, "naive": naive_url}
    finally:
        if not keep:
            backend.drop(ours_url)
            if naive_url:
                backend.drop(naive_url)
    return result


def create_windowed_view(engine: Engine) -> None:
    """balance_changes as migration 0005 left it (LAG over each asset's history), beside today's: the baseline.

    The SQL is migration 0006's own copy of the old definition, under another view name.
    """
    import importlib.util

    path = next((Path(__file__).resolve().parent.parent / "migrations" / "versions").glob("0006_*.py"))
    spec = importlib.util.spec_from_file_location("migration_0006", path)
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    sqlite = engine.dialect.name == "sqlite"
    collate, subtract = (" COLLATE decimal", "decimal_sub({new}, {old})") if sqlite else ("", "({new} - {old})")
    statement = migration._windowed_changes(collate, subtract).replace("CREATE VIEW balance_changes", f"CREATE VIEW {WINDOWED}")
    with engine.begin() as connection:
        connection.exec_driver_sql(f"DROP VIEW IF EXISTS {WINDOWED}")
        connection.exec_driver_sql(statement)


WINDOWED = "balance_changes_windowed"
# The README's range-filtered example queries on balance_changes (its sqlite3 and psql sections).
VIEW_QUERIES = {
    "view USDT changes 7d": "SELECT observed_at, kind, previous_balance, balance, delta_balance FROM {view}"
                            " WHERE account = 'busy' AND asset = 'USDT' AND observed_at >= :since ORDER BY observed_at",
    "view net per asset 30d": "SELECT asset, {sum}(delta_balance) AS net FROM {view}"
                              " WHERE account = 'busy' AND observed_at >= :since GROUP BY asset ORDER BY asset",
}


def view_query(sessions, name: str, view: str, since: datetime) -> list:
    """One README example query on `view`, with --since-like bound `since`."""
    with sessions() as session:
        connection = session.connection()
        sqlite = connection.dialect.name == "sqlite"
        sql = VIEW_QUERIES[name].format(view=view, sum="decimal_sum" if sqlite else "sum")
        return connection.execute(text(sql), {"since": sqlite_time(since) if sqlite else since}).all()


def check(sessions, naive: Naive, history: History) -> None:
    """The loaded history reads back through the library as generated (else the figures mean nothing)."""
    last = history.polls - 1
    while history.failed(last):
        last -= 1
    with sessions() as session:
        state = {p.asset: p.state for p in queries.as_of(session, "busy", history.end).positions}
        events = queries.changes(session, "busy", since=history.end - DAY, until=history.end)
    expected = usdt_state(last)
    got = state["USDT"]
    assert (format(got.balance, "f"), format(got.cross_un_pnl, "f")) == (expected[0], expected[2]), (got, expected)
    assert naive.as_of("busy", history.end)["USDT"][0] == got.balance
    in_last_day = [i for i in range(max(0, last - 1500), last + 1)
                   if not history.failed(i) and history.finished(i) >= history.end - DAY]
    assert len(events) == len(in_last_day), (len(events), len(in_last_day))
    with sessions() as session:
        for tolerance in (None, timedelta(seconds=75), timedelta(seconds=300)):
            found = queries.gaps(session, "busy", since=START, until=history.end, tolerance=tolerance)
            # The history ends inside an outage: that one is still open (ongoing), naive lists closed ones.
            closed = [(g.start, g.end) for g in found if not g.open_end]
            assert closed == naive.gaps("busy", tolerance or TOLERANCE), (tolerance, len(closed))


def run_queries(sessions, naive: Naive | None, history: History, repeat: int, naive_repeat: int, only: str = "") -> dict[str, Any]:
    rng = random.Random(42)
    span = history.end - START

    def instants(count: int, margin: timedelta = timedelta(0)) -> list[datetime]:
        room = (span - margin - DAY).total_seconds()
        return [START + DAY + timedelta(seconds=rng.uniform(0, room)) for _ in range(count)]

    def ours(function: Callable[[Any, Any], Any]) -> Callable[[Any], Any]:
        def call(argument: Any) -> Any:
            with sessions() as session:
                return function(session, argument)

        return call

    month_start = history.end - MONTH
    plan: dict[str, tuple[Callable, Callable, list, list]] = {
        "as_of busy": (
            ours(lambda s, t: queries.as_of(s, "busy", t)),
            lambda t: naive.as_of("busy", t),
            instants(repeat), instants(naive_repeat),
        ),
        "as_of idle": (
            ours(lambda s, t: queries.as_of(s, "idle", t)),
            lambda t: naive.as_of("idle", t),
            instants(repeat), instants(naive_repeat),
        ),
        "diff busy 1d": (
            ours(lambda s, t: queries.diff(s, "busy", t, t + DAY)),
            lambda t: naive.diff("busy", t, t + DAY),
            instants(repeat, DAY), instants(naive_repeat, DAY),
        ),
        "changes busy 1d": (
            ours(lambda s, t: queries.changes(s, "busy", since=t, until=t + DAY)),
            lambda t: naive.changes("busy", t, t + DAY),
            instants(max(5, repeat // 10), DAY), instants(naive_repeat, DAY),
        ),
        "series busy 1mo/hour": (
            ours(lambda s, t: queries.series(s, "busy", "USDT", "balance", t, t + MONTH, every="hour")),
            lambda t: naive.series("busy", "USDT", t, t + MONTH),
            [month_start] * max(3, repeat // 50), [month_start] * max(2, naive_repeat // 2),
        ),
        "gaps busy all": (
            ours(lambda s, _: queries.gaps(s, "busy", since=START, until=history.end)),
            lambda _: naive.gaps("busy"),
            [None] * 20, [None] * max(2, naive_repeat // 2),
        ),
        "gaps busy all tol 300s": (
            ours(lambda s, _: queries.gaps(s, "busy", since=START, until=history.end, tolerance=timedelta(seconds=300))),
            lambda _: naive.gaps("busy", timedelta(seconds=300)),
            [None] * 20, [None] * max(2, naive_repeat // 2),
        ),
        "gaps busy all tol 75s": (
            ours(lambda s, _: queries.gaps(s, "busy", since=START, until=history.end, tolerance=timedelta(seconds=75))),
            lambda _: naive.gaps("busy", timedelta(seconds=75)),
            [None] * 3, [None] * max(2, naive_repeat // 2),
        ),
    }
    plan = {name: entry for name, entry in plan.items() if name.startswith(only)}
    # The view as it is (one index probe per row of the range) against the windowed one of
    # 0002-0005 (the whole history of the account), same database, same SQL: "naive" here.
    for name, span_back in (("view USDT changes 7d", 7 * DAY), ("view net per asset 30d", MONTH)):
        if not name.startswith(only):
            continue
        since = history.end - span_back
        plan[name] = (
            lambda t, name=name: view_query(sessions, name, "balance_changes", t),
            lambda t, name=name: view_query(sessions, name, WINDOWED, t),
            [since] * max(3, repeat // 30), [since] * max(2, naive_repeat // 2),
        )
        mine, theirs = view_query(sessions, name, "balance_changes", since), view_query(sessions, name, WINDOWED, since)
        assert mine == theirs and mine, (name, len(mine), len(theirs))
    results = {}
    for name, (mine, theirs, mine_args, their_args) in plan.items():
        results[name] = {"ours": measure(mine, mine_args), "naive": measure(theirs, their_args)}
        ratio = results[name]["naive"]["p50_ms"] / max(results[name]["ours"]["p50_ms"], 1e-6)
        results[name]["speedup_p50"] = round(ratio, 1)
        log(f"  {name:22s} ours p50 {results[name]['ours']['p50_ms']:9.3f} ms   naive p50 {results[name]['naive']['p50_ms']:10.3f} ms")
    return results


# --- report ------------------------------------------------------------------------------


def targets(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, evaluated on SQLite."""
    by = {(r["backend"], r["months"]): r for r in runs}
    out: dict[str, Any] = {}
    longest = max((m for b, m in by if b == "sqlite"), default=None)
    shortest = min((m for b, m in by if b == "sqlite"), default=None)
    if longest is None:
        return out
    q = by[("sqlite", longest)]["queries"]
    if "as_of busy" not in q:
        return out
    for name in ("as_of busy", "diff busy 1d"):
        out[f"sqlite {longest}m {name} p50 < 2 ms"] = q[name]["ours"]["p50_ms"] < 2.0
    out[f"sqlite {longest}m as_of >= 20x naive"] = q["as_of busy"]["speedup_p50"] >= 20
    # gaps over the whole history reads the stored gaps; the 75 s override scans every poll
    # as gaps did before they were stored: the same-run baseline.
    stored, scanned = q["gaps busy all"]["ours"]["p50_ms"], q["gaps busy all tol 75s"]["ours"]["p50_ms"]
    out[f"sqlite {longest}m gaps all p50 < 50 ms (scan/stored {scanned / stored:.0f}x)"] = stored < 50
    if shortest != longest:
        short = by[("sqlite", shortest)]["queries"]
        for name in ("as_of busy", "diff busy 1d"):
            ratio = q[name]["ours"]["p50_ms"] / short[name]["ours"]["p50_ms"]
            out[f"sqlite {longest}m/{shortest}m {name} ratio {ratio:.2f} < 1.5"] = ratio < 1.5
    return out


def print_table(runs: list[dict[str, Any]]) -> None:
    header = f"{'backend':10} {'hist':>4} {'query':22} {'ours p50':>10} {'ours p95':>10} {'naive p50':>11} {'naive p95':>11} {'speedup':>8}"
    print(header)
    print("-" * len(header))
    for run in runs:
        for name, figures in run["queries"].items():
            print(f"{run['backend']:10} {str(run['months']) + 'm':>4} {name:22} {figures['ours']['p50_ms']:10.3f} "
                  f"{figures['ours']['p95_ms']:10.3f} {figures['naive']['p50_ms']:11.2f} {figures['naive']['p95_ms']:11.2f} "
                  f"{figures['speedup_p50']:7.0f}x")
        print(f"{run['backend']:10} {str(run['months']) + 'm':>4} {'database size (MB)':22} {run['size_ours_mb']:10.1f} "
              f"{'':10} {run['size_naive_mb']:11.1f}")
    print("(latencies in ms; speedup = naive p50 / ours p50)")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--months", default="1,12", help="history lengths in 30-day months, comma separated [1,12]")
    parser.add_argument("--backends", default="sqlite,postgresql", help="sqlite and/or postgresql [both]")
    parser.add_argument("--repeat", type=int, default=300, help="calls per fast query (as_of, diff) [300]")
    parser.add_argument("--naive-repeat", type=int, default=5, help="calls per naive query [5]")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="an admin URL of the PostgreSQL server; databases are created beside it")
    parser.add_argument("--only", default="", metavar="PREFIX",
                        help="only the queries whose name starts with PREFIX ('view' skips loading the naive table)")
    parser.add_argument("--keep", metavar="DIR", type=Path,
                        help="keep the databases: SQLite files go to DIR, PostgreSQL databases stay (URLs printed)")
    args = parser.parse_args()
    months = [int(m) for m in args.months.split(",") if m.strip()]
    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="recorder-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    runs = []
    try:
        for name in names:
            backend: Backend = SqliteBackend(workdir) if name == "sqlite" else PostgresBackend(args.postgres_url)
            for count in months:
                runs.append(bench(backend, count, args.repeat, args.naive_repeat, keep=args.keep is not None, only=args.only))
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(runs)
    met = targets(runs)
    for target, ok in met.items():
        print(f"target {'met    ' if ok else 'MISSED '} {target}")
    for run in runs:
        if "kept" in run:
            print(f"kept {run['backend']} {run['months']}m: {run['kept']['ours']} (ours), {run['kept']['naive']} (naive)")
    elapsed = round(time.perf_counter() - began, 1)
    print(f"total {elapsed} s")
    print(json.dumps({"runs": runs, "targets": met, "elapsed_s": elapsed}, separators=(",", ":")))


if __name__ == "__main__":
    main()
