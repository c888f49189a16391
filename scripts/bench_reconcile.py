#!/usr/bin/env python3
"""Benchmark reconciliation on one year of minute polls with 200,000 income entries.

Synthetic history, written straight into a SQLite file migrated to head (and, with
--postgres, COPYed into a throwaway PostgreSQL database): one account, USDT polled every
minute for 365 days; the unrealized PnL moves on every poll, so every poll stores a state
(525,600 balances rows), and the wallet balance moves only by the income entries (random
types and amounts, booked before the poll that sees them; the state's update_time is the
last entry's time). WITHHELD entries are left out of the ledger, so exactly that many
intervals carry a residual. BNB sits still beside it.

Each measurement runs in its own child process, so its peak RSS (ru_maxrss) is its own:

    floor       the raw rows read with sqlite3/psycopg and nothing done with them: the baseline
    library     recorder.ledger.reconcile.reconcile() consumed to the end
    flagged     the same with flagged_only (what `reconcile --flagged-only` reads)
    cli-csv     `recorder reconcile --format csv > /dev/null`, the whole command
    view        every row of the balance_reconciliation view
    rollforward recorder.ledger.reconcile.roll_forward() over the whole year (the statement's path)

    .venv/bin/python scripts/bench_reconcile.py             # SQLite
    .venv/bin/python scripts/bench_reconcile.py --postgres  # and PostgreSQL
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

UTC = timezone.utc
START = datetime(2025, 1, 1, tzinfo=UTC)
POLLS = 365 * 1440
ENTRIES = 200_000
WITHHELD = 25
TYPES = ("REALIZED_PNL", "COMMISSION", "FUNDING_FEE", "TRANSFER", "COMMISSION_REBATE")
POSTGRES_ADMIN = os.environ.get("RECORDER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def sqlite_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def amount(units: int) -> str:
    return format(Decimal(units).scaleb(-8), "f")


def poll_time(index: int) -> datetime:
    return START + timedelta(minutes=index, milliseconds=300)


def history(seed: int = 7):
    """(polls, balances, entries) rows in recorder column order, times as datetimes."""
    rng = random.Random(seed)
    minutes = sorted(rng.randrange(1, POLLS) for _ in range(ENTRIES))
    withheld = set(rng.sample(range(ENTRIES), WITHHELD))
    entries, by_minute = [], {}
    for n, minute in enumerate(minutes):
        # Booked within the minute before the poll that first sees it.
        when = START + timedelta(minutes=minute - 1, milliseconds=400 + rng.randrange(59_000))
        income_type = rng.choice(TYPES)
        units = rng.randrange(1, 5_000_000_000) * (1 if income_type in ("REALIZED_PNL", "TRANSFER", "COMMISSION_REBATE") else -1)
        if income_type == "REALIZED_PNL" and rng.random() < 0.5:
            units = -units
        by_minute.setdefault(minute, []).append((when, units))
        if n not in withheld:
            entries.append((when, income_type, 10_000_000_000 + n, units))
    polls, states = [], []
    balance, update = 1_000_000_000_000, START - timedelta(days=1)
    for index in range(POLLS):
        for when, units in sorted(by_minute.get(index, ())):
            balance += units
            update = max(update, when)
        finished = poll_time(index)
        polls.append(finished)
        states.append((finished, balance, update, index % 997 - 498))
    return polls, states, entries


def build_sqlite(path: Path) -> None:
    from recorder.db import make_engine
    from recorder.schema import upgrade_to_head

    engine = make_engine(f"sqlite:///{path}")
    upgrade_to_head(engine)
    engine.dispose()
    polls, states, entries = history()
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("INSERT INTO accounts (id, label, account_alias, environment, created_at) VALUES "
                           "(1, 'bench', 'bench', 'local', ?)", (sqlite_time(START),))
        connection.executemany(
            "INSERT INTO polls (finished_at, started_at, account_id, used_weight, asset_count, changed_count, outcome,"
            " endpoint) VALUES (?, ?, 1, 5, 2, 1, 'ok', 'v3')",
            ((sqlite_time(f), sqlite_time(f - timedelta(milliseconds=200))) for f in polls))
        connection.execute(
            "INSERT INTO balances (id, account_id, asset, observed_at, present, balance, cross_wallet_balance,"
            " cross_un_pnl, available_balance, max_withdraw_amount, margin_available, update_time)"
            " VALUES (1, 1, 'BNB', ?, 1, '1.50000000', '1.50000000', '0', '1.50000000', '1.50000000', 1, ?)",
            (sqlite_time(polls[0]), sqlite_time(START - timedelta(days=3))))
        connection.executemany(
            "INSERT INTO balances (id, account_id, asset, observed_at, present, balance, cross_wallet_balance,"
            " cross_un_pnl, available_balance, max_withdraw_amount, margin_available, update_time)"
            " VALUES (?, 1, 'USDT', ?, 1, ?, ?, ?, ?, ?, 1, ?)",
            ((n + 2, sqlite_time(f), amount(b), amount(b), amount(u * 1_000_000), amount(b), amount(b), sqlite_time(t))
             for n, (f, b, t, u) in enumerate(states)))
        connection.execute("INSERT INTO balance_heads (account_id, asset, balance_id) VALUES (1, 'BNB', 1), (1, 'USDT', ?)",
                           (len(states) + 1,))
        connection.executemany(
            "INSERT INTO income_entries (account_id, time, income_type, tran_id, asset, income, symbol, info, trade_id,"
            " known_type, source, recorded_at) VALUES (1, ?, ?, ?, 'USDT', ?, 'BTCUSDT', '', '', 1, 'api', ?)",
            ((sqlite_time(w), t, tran, amount(u), sqlite_time(w)) for w, t, tran, u in entries))
    connection.execute("ANALYZE")
    connection.close()


def build_postgres(sqlite_path: Path) -> str:
    """Copy the SQLite history into a fresh PostgreSQL database migrated to head."""
    import psycopg

    from recorder.db import make_engine
    from recorder.schema import upgrade_to_head

    name = f"recorder_bench_{uuid.uuid4().hex[:10]}"
    libpq = POSTGRES_ADMIN.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(libpq, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_ADMIN.rsplit("/", 1)[0] + "/" + name
    engine = make_engine(url)
    upgrade_to_head(engine)
    engine.dispose()
    source = sqlite3.connect(sqlite_path)
    tables = {
        "accounts": "id, label, account_alias, environment, created_at",
        "polls": "finished_at, started_at, account_id, used_weight, asset_count, changed_count, outcome, endpoint",
        "balances": "id, account_id, asset, observed_at, present, balance, cross_wallet_balance, cross_un_pnl,"
                    " available_balance, max_withdraw_amount, margin_available, update_time",
        "balance_heads": "account_id, asset, balance_id",
        "income_entries": "account_id, time, income_type, tran_id, asset, income, symbol, info, trade_id, known_type,"
                          " source, recorded_at",
    }
    booleans = {"present", "margin_available", "known_type"}
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as target:
        with target.cursor() as cursor:
            for table, columns in tables.items():
                names = [c.strip() for c in columns.split(",")]
                with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for row in source.execute(f"SELECT {columns} FROM {table}"):
                        copy.write_row([bool(v) if n in booleans else (v + "+00" if isinstance(v, str) and n.endswith(("_at", "time")) else v)
                                        for n, v in zip(names, row)])
            cursor.execute("SELECT setval(pg_get_serial_sequence('balances', 'id'), (SELECT max(id) FROM balances))")
        target.commit()
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True) as target:
        target.execute("VACUUM ANALYZE")
    source.close()
    return url


def drop_postgres(url: str) -> None:
    import psycopg

    libpq = POSTGRES_ADMIN.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(libpq, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


# --- measurements, one per child process ------------------------------------------------------


def measure(name: str, url: str) -> dict:
    started = time.perf_counter()
    rows = flagged = 0
    if name == "floor":
        if url.startswith("sqlite"):
            connection = sqlite3.connect(url.removeprefix("sqlite:///"))
            queries = ("SELECT observed_at, balance, update_time FROM balances WHERE account_id = 1 AND asset = 'USDT'"
                       " AND present ORDER BY observed_at",
                       "SELECT time, income_type, income, known_type FROM income_entries WHERE account_id = 1"
                       " AND asset = 'USDT' ORDER BY time")
            for sql in queries:
                for _ in connection.execute(sql):
                    rows += 1
        else:
            import psycopg

            with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as connection:
                for sql in ("SELECT observed_at, balance, update_time FROM balances WHERE account_id = 1"
                            " AND asset = 'USDT' AND present ORDER BY observed_at",
                            "SELECT time, income_type, income, known_type FROM income_entries WHERE account_id = 1"
                            " AND asset = 'USDT' ORDER BY time"):
                    with connection.cursor(name="floor") as cursor:
                        cursor.execute(sql)
                        for _ in cursor:
                            rows += 1
    elif name == "cli-csv":
        import resource

        recorder = Path(sys.executable).with_name("recorder")
        with open(os.devnull, "w") as sink:
            subprocess.run([str(recorder), "reconcile", "--database-url", url, "--format", "csv"], stdout=sink, check=True)
        # The command's own peak (Linux: ru_maxrss of the largest waited-for child, in KiB).
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        return {"seconds": time.perf_counter() - started, "rows": rows, "flagged": flagged, "peak_mib": peak}
    else:
        from recorder.db import make_read_engine, make_sessions
        from recorder.ledger.reconcile import reconcile, roll_forward

        read_engine = make_read_engine(url)
        with make_sessions(read_engine.engine)() as session:
            if name in ("library", "flagged"):
                for interval in reconcile(session, ["bench"], flagged_only=name == "flagged"):
                    rows += 1
                    flagged += interval.flagged
            elif name == "view":
                from sqlalchemy import text

                for _ in session.execute(text("SELECT * FROM balance_reconciliation WHERE account_id = 1")):
                    rows += 1
            elif name == "rollforward":
                rolled = roll_forward(session, "bench", "USDT", START, START + timedelta(days=366))
                rows, flagged = len(rolled.by_type), int(bool(rolled.flags))
        read_engine.close()
    return {"seconds": time.perf_counter() - started, "rows": rows, "flagged": flagged, "peak_mib": _high_water_mib()}


def _high_water_mib() -> float:
    # VmHWM is this process image's own peak RSS (reset by exec); ru_maxrss would carry the
    # parent's RSS at fork over to the child.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_child(name: str, url: str) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", name, url], stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(result.stdout)


MEASURES = ("floor", "library", "flagged", "cli-csv", "view", "rollforward")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--postgres", action="store_true", help="Measure PostgreSQL too.")
    parser.add_argument("--keep", type=Path, help="Write the SQLite file here and keep it.")
    args = parser.parse_args()
    if args.child:
        if args.child[0] == "build":
            build_sqlite(Path(args.child[1]))
        else:
            print(json.dumps(measure(*args.child)))
        return
    directory = Path(tempfile.mkdtemp(prefix="bench-reconcile-")) if args.keep is None else args.keep
    path = directory / "reconcile.db"
    path.unlink(missing_ok=True)
    started = time.perf_counter()
    # Built in a child process too: this one stays small while the others measure.
    subprocess.run([sys.executable, __file__, "--child", "build", str(path)], check=True)
    print(f"built {path} ({path.stat().st_size / 2**20:.0f} MiB: {POLLS} polls, {POLLS + 1} states, "
          f"{ENTRIES - WITHHELD} entries, {WITHHELD} withheld) in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    backends = [("sqlite", f"sqlite:///{path}")]
    postgres_url = None
    if args.postgres:
        started = time.perf_counter()
        postgres_url = build_postgres(path)
        print(f"copied into PostgreSQL in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        backends.append(("postgresql", postgres_url))
    results = []
    try:
        for backend, url in backends:
            floor = None
            for name in MEASURES:
                result = run_child(name, url)
                floor = floor or result
                results.append({"backend": backend, "measure": name, **result,
                                "x_floor": result["seconds"] / floor["seconds"]})
    finally:
        if postgres_url:
            drop_postgres(postgres_url)
        if args.keep is None:
            path.unlink(missing_ok=True)
            for suffix in ("-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            directory.rmdir()
    print(f"{'backend':<11} {'measure':<12} {'seconds':>8} {'x floor':>8} {'peak MiB':>9} {'rows':>8} {'flagged':>8}")
    for r in results:
        print(f"{r['backend']:<11} {r['measure']:<12} {r['seconds']:8.2f} {r['x_floor']:8.1f} {r['peak_mib']:9.0f} "
              f"{r['rows']:8d} {r['flagged']:8d}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
