#!/usr/bin/env python3
"""Benchmark `recorder statement` and `recorder report` over a year of minute polls, 8 assets, SQLite.

The year is synthetic and bulk-loaded straight into a migrated SQLite file: the INSERTs are
compiled from the models' tables (recorder.models) and every value goes through the models'
own column types (ExactDecimal, UtcDateTime), so the file holds exactly what the recorder
writes, without polling for a year. Shape (one account, 525,600 polls):

* USDT, BTC, ETH, BNB hold positions: their unrealized PnL moves on every poll and their
  wallet balance every 5th poll (a state row per asset per poll: ~2.1 M rows);
* FDUSD, USDC, BNFCR change once a day; BFUSD vanishes on day 200 and is back on day 250;
* a 20-minute outage every 10 days (failed polls, and the gap the writer stores).

Measured in the same run:
* statement over the year, over one month (cost must follow the period), and the naive way
  (load the year's states with queries.history and compute the same figures in Python);
* report over the year: time to build and write the HTML file, and its size.
Each run is a fresh interpreter: times are the best of --repeat runs, memory the peak RSS.

    .venv/bin/python scripts/bench_report.py                 # generate into a temp dir, measure, delete
    .venv/bin/python scripts/bench_report.py --keep /tmp/b   # keep (and reuse) /tmp/b/bench-report.db
    .venv/bin/python scripts/bench_report.py --before f42ab67   # also measure that commit's code, same run
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import shutil
import sys
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from sqlalchemy.dialects import sqlite

from recorder import queries
from recorder.db import make_engine, make_read_engine, make_sessions
from recorder.db_types import ExactDecimal, UtcDateTime
from recorder.models import Account, Balance, BalanceHead, Poll, PollGap, PollSchedule
from recorder.reports.html import build_report, write_report
from recorder.reports.statement import build_statement
from recorder.schema import upgrade_to_head

UTC = timezone.utc
START = datetime(2025, 1, 1, tzinfo=UTC)
POLLS = 365 * 1440
ACTIVE = ("USDT", "BTC", "ETH", "BNB")
DAILY = ("FDUSD", "USDC", "BNFCR")
FLICKER = "BFUSD"
OUTAGE_EVERY, OUTAGE_POLLS = 10 * 1440, 20
VANISH_DAY, RETURN_DAY = 200, 250
LABEL = "bench"

_DIALECT = sqlite.dialect()
_DECIMAL, _TIME = ExactDecimal(), UtcDateTime()


def money(units: int) -> Decimal:
    """Units of 1e-8 as an 8-decimal Decimal, as Binance sends them."""
    return Decimal(units).scaleb(-8)


def dec(value: Decimal | None) -> Any:
    return _DECIMAL.process_bind_param(value, _DIALECT)


def when(value: datetime | None) -> Any:
    return _TIME.process_bind_param(value, _DIALECT)


def finished(index: int) -> datetime:
    return START + timedelta(minutes=index, milliseconds=180 + (index % 7) * 10)


def failed(index: int) -> bool:
    return index % OUTAGE_EVERY >= OUTAGE_EVERY - OUTAGE_POLLS


def _insert_sql(table) -> tuple[str, list[str]]:
    statement = insert(table).compile(dialect=_DIALECT, compile_kwargs={})
    sql = str(statement)
    # Positional parameters in the compiled order, for the driver's executemany.
    return sql, list(statement.positiontup)


class Year:
    """The synthetic year's rows, as dicts keyed by column name, produced lazily."""

    def __init__(self) -> None:
        self.heads: dict[str, int] = {}

    def polls(self) -> Iterator[dict[str, Any]]:
        for index in range(POLLS):
            done = finished(index)
            row = dict(account_id=1, finished_at=when(done), started_at=when(done - timedelta(milliseconds=150)),
                       used_weight=10, asset_count=8, changed_count=None, outcome="ok", endpoint="v3", recorded_at=None,
                       error_class=None, error_message=None, http_status=None, error_code=None)
            if failed(index):
                row.update(outcome="failed", used_weight=None, asset_count=None, error_class="ExchangeUnavailable",
                           error_message="HTTP 503 from the exchange", http_status=503)
            yield row

    def gaps(self) -> Iterator[dict[str, Any]]:
        previous = None
        for index in range(POLLS):
            if failed(index):
                continue
            done = finished(index)
            if previous is not None and done - previous > timedelta(seconds=90):
                yield dict(account_id=1, end_at=when(done), start_at=when(previous), tolerance_ms=90_000)
            previous = done

    def balances(self) -> Iterator[dict[str, Any]]:
        rng = random.Random(20260101)
        wallet = {"USDT": 1_000_000_00000000, "BTC": 1_50000000, "ETH": 20_00000000, "BNB": 300_00000000,
                  "FDUSD": 50_000_00000000, "USDC": 25_000_00000000, "BNFCR": 1_234_00000000, FLICKER: 10_00000000}
        pnl = {asset: 0 for asset in wallet}
        balance_id = 0
        update = START
        for index in range(POLLS):
            if failed(index):
                continue
            done = finished(index)
            changed: list[tuple[str, bool]] = []
            for asset in ACTIVE:
                pnl[asset] += rng.randint(-5_000_000, 5_000_000) * (100 if asset == "USDT" else 1)
                if index % 5 == 0:
                    wallet[asset] += rng.randint(-2_000_000, 2_000_000) * (100 if asset == "USDT" else 1)
                changed.append((asset, True))
            if index == 0 or index % 1440 == 0:
                for asset in DAILY:
                    wallet[asset] += rng.randint(-1_000_000_00, 1_000_000_00)
                    changed.append((asset, True))
            if index == 0 or index == RETURN_DAY * 1440:
                changed.append((FLICKER, True))
            elif index == VANISH_DAY * 1440:
                changed.append((FLICKER, False))
            for asset, present in changed:
                balance_id += 1
                self.heads[asset] = balance_id
                value = money(wallet[asset])
                if present:
                    amounts = dict(balance=dec(value), cross_wallet_balance=dec(value), cross_un_pnl=dec(money(pnl[asset])),
                                   available_balance=dec(value), max_withdraw_amount=dec(value), margin_available=1,
                                   update_time=when(update))
                else:
                    amounts = dict(balance=None, cross_wallet_balance=None, cross_un_pnl=None, available_balance=None,
                                   max_withdraw_amount=None, margin_available=None, update_time=None)
                yield dict(id=balance_id, account_id=1, asset=asset, observed_at=when(done), present=1 if present else 0, **amounts)


def generate(path: Path) -> float:
    """Create and fill the SQLite file; seconds taken."""
    started = time.perf_counter()
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    engine.dispose()
    engine = make_engine(url)
    raw = engine.raw_connection()
    year = Year()
    try:
        connection = raw.driver_connection
        # A bulk load: no fsync per page. The recorder's own connections keep synchronous=FULL.
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("BEGIN")

        def load(table, rows: Iterator[dict[str, Any]]) -> None:
            sql, order = _insert_sql(table)
            connection.executemany(sql, ([row[name] for name in order] for row in rows))

        load(Account.__table__, iter([dict(id=1, label=LABEL, account_alias="bench", environment="local", created_at=when(START))]))
        load(PollSchedule.__table__, iter([dict(account_id=1, started_at=when(START), interval_ms=60_000, tolerance_ms=90_000, source="run")]))
        load(Poll.__table__, year.polls())
        load(PollGap.__table__, year.gaps())
        load(Balance.__table__, year.balances())
        load(BalanceHead.__table__, iter([dict(account_id=1, asset=asset, balance_id=balance_id) for asset, balance_id in year.heads.items()]))
        connection.execute("COMMIT")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()
        engine.dispose()
    return time.perf_counter() - started


def naive_statement(session, since: datetime, until: datetime) -> dict[str, tuple]:
    """The same opening/closing/high/low/changes, the way a script would: every state into Python."""
    opening = {p.asset: p.state for p in queries.as_of(session, LABEL, since - timedelta(microseconds=1)).positions}
    states = queries.history(session, LABEL, since=since, until=until)
    figures: dict[str, list] = {}
    for asset, state in opening.items():
        value = state.balance if state is not None and state.present else None
        figures[asset] = [value, value, value, value, 0]
    for state in states:
        row = figures.setdefault(state.asset, [None, None, None, None, 0])
        row[4] += 1
        row[1] = state.balance
        if state.balance is not None:
            row[2] = state.balance if row[2] is None else max(row[2], state.balance)
            row[3] = state.balance if row[3] is None else min(row[3], state.balance)
    return {asset: tuple(row) for asset, row in figures.items()}


def run_measurement(name: str, path: Path, out: Path) -> tuple[float, float, Any]:
    """Run one measurement in this process; its wall time, CPU time (this process) and result."""
    since, until = START, START + timedelta(days=365)
    month = (START + timedelta(days=180), START + timedelta(days=210))
    read = make_read_engine(f"sqlite:///{path}")
    try:
        with make_sessions(read.engine)() as session:
            session.connection()  # open the file before the clock starts
            started = time.perf_counter()
            cpu = time.process_time()
            if name == "naive":
                result: Any = naive_statement(session, since, until)
            elif name == "year":
                result = build_statement(session, since, until, [LABEL])
            elif name == "month":
                result = build_statement(session, *month, [LABEL])
            elif name == "report":
                result = write_report(build_report(session, since, until, [LABEL]), out, force=True)
            else:
                raise ValueError(name)
            return time.perf_counter() - started, time.process_time() - cpu, result
    finally:
        read.close()


def measure(name: str, path: Path, out: Path, repeat: int, code: Path | None = None) -> tuple[float, float, float]:
    """Best wall and CPU time of `repeat` runs, each in a fresh interpreter, and the largest peak RSS (MB).

    CPU time counts this process only (SQLite runs inside it): on a machine shared with other
    work it moves far less than the wall time.
    """
    best, best_cpu, peak = float("inf"), float("inf"), 0.0
    environment = dict(os.environ)
    if code is not None:
        # The older recorder package shadows the installed one in the measuring interpreter.
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), environment.get("PYTHONPATH")]))
    for _ in range(repeat):
        result = subprocess.run(
            [sys.executable, __file__, "--measure", name, "--database", str(path), "--out", str(out)],
            capture_output=True, text=True, check=True, env=environment,
        )
        seconds, cpu, rss = json.loads(result.stdout.strip().splitlines()[-1])
        best, best_cpu, peak = min(best, seconds), min(best_cpu, cpu), max(peak, rss)
    return best, best_cpu, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="Keep (and reuse) the generated database in this folder.")
    parser.add_argument("--repeat", type=int, default=3, help="Runs per measurement; the best counts.")
    parser.add_argument("--before", metavar="REV",
                        help="Also measure the statement and report with the recorder package of this git revision.")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--database", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        seconds, cpu, result = run_measurement(args.measure, args.database, args.out)
        if args.measure in ("year", "naive"):
            # The two must agree, or the comparison means nothing: checked in the main process.
            (args.out.parent / f"{args.measure}.figures").write_text(repr(_figures(result)), encoding="utf-8")
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps([seconds, cpu, rss_mb]))
        return 0
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-report-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench-report.db"
    out = folder / "bench-report.html"
    try:
        if path.exists():
            print(f"reusing {path}", file=sys.stderr)
        else:
            seconds = generate(path)
            print(f"generated {path} in {seconds:.1f} s ({path.stat().st_size / 1e6:.0f} MB)", file=sys.stderr)
        engine = make_engine(f"sqlite:///{path}")
        with engine.connect() as connection:
            rows_total = connection.exec_driver_sql("SELECT count(*) FROM balances").scalar()
        engine.dispose()
        naive_time, naive_cpu, naive_peak = measure("naive", path, out, 1)
        year_time, year_cpu, year_peak = measure("year", path, out, args.repeat)
        month_time, month_cpu, month_peak = measure("month", path, out, args.repeat)
        report_time, report_cpu, report_peak = measure("report", path, out, args.repeat)
        naive, year = ((folder / f"{name}.figures").read_text(encoding="utf-8") for name in ("naive", "year"))
        assert naive == year, f"the statement and the naive figures differ:\n{year}\n{naive}"
        before_rows = []
        if args.before:
            code = _checkout(args.before, folder / "before")
            for name, title in (("year", "statement, one year"), ("report", "report, one year (build + write HTML)")):
                before_rows.append((f"{title}, at {args.before}", *measure(name, path, folder / "before.html", args.repeat, code)))
        size = out.stat().st_size
        rows = [
            ("naive: the year's states into Python (baseline)", naive_time, naive_cpu, naive_peak),
            ("statement, one year", year_time, year_cpu, year_peak),
            ("statement, one month (30 days)", month_time, month_cpu, month_peak),
            ("report, one year (build + write HTML)", report_time, report_cpu, report_peak),
            *before_rows,
        ]
        print(f"\nOne account, 8 assets, a year of minute polls ({POLLS:,} polls, {rows_total:,} balance rows), SQLite; "
              f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
        print(f"| {'measurement':<50} | {'wall':>10} | {'CPU':>10} | {'peak RSS':>9} | {'wall vs baseline':>16} | {'CPU vs baseline':>15} |")
        print(f"|{'-' * 52}|{'-' * 11}:|{'-' * 11}:|{'-' * 10}:|{'-' * 17}:|{'-' * 16}:|")
        for name, seconds, cpu, peak in rows:
            print(f"| {name:<50} | {seconds:>8.2f} s | {cpu:>8.2f} s | {peak:>6.0f} MB | {seconds / naive_time:>16.3f} | {cpu / naive_cpu:>15.3f} |")
        print(f"\nreport file: {size:,} bytes ({size / 1024:.0f} KiB); statement month/year time: {month_time / year_time:.2f}")
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def _checkout(revision: str, folder: Path) -> Path:
    """The recorder package as it was at `revision`, extracted into `folder` (for PYTHONPATH)."""
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(root), "archive", "--format=tar", revision, "recorder"],
                             capture_output=True, check=True).stdout
    shutil.rmtree(folder, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def _figures(result: Any) -> dict[str, tuple]:
    """Opening, closing, high, low and changes per asset held in the period, from either method."""
    if isinstance(result, dict):
        return {asset: row for asset, row in sorted(result.items()) if row[0] is not None or row[1] is not None or row[4]}
    return {
        asset.asset: (asset.opening.balance, asset.closing.balance, asset.high.value if asset.high else None,
                      asset.low.value if asset.low else None, asset.changes)
        for asset in result.accounts[0].assets
    }


if __name__ == "__main__":
    sys.exit(main())
