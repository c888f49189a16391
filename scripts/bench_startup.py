#!/usr/bin/env python3
"""Benchmark start-up and one-shot answers of the `recorder` CLI beside `import sqlalchemy.orm`.

Every read command is a fresh process, so what a user waits for is mostly interpreter and
import time. The reference, measured in the same run and interleaved with the commands
so machine load hits all alike, is `python -c "import sqlalchemy.orm"`: the least a read
command must import. Target: a read command on a year of data costs at most 1.5x that.

The year of 1-minute polls (2 accounts x 360 days, the busy account's USDT changing every
poll, a 20-minute outage every 10 days) comes from scripts/bench_queries.py's generator.
Building it takes a minute or two, so the SQLite file is cached in the temp folder
(recorder-bench-startup/bench-year-12m.db) and reused while its schema matches this checkout's head;
--rebuild forces a new one. --postgres also measures on a PostgreSQL copy (built each run).

    .venv/bin/python scripts/bench_startup.py                 # SQLite, 15 runs per command
    .venv/bin/python scripts/bench_startup.py --runs 31 --postgres
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from bench_queries import History, PostgresBackend, Rows, SqliteBackend, postgres_time, sqlite_time

from recorder.schema import schema_head

RECORDER = str(Path(sys.executable).with_name("recorder"))
TARGET = 1.5
MONTHS = 12


def iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def cached_year(rebuild: bool) -> tuple[str, str]:
    """The cached SQLite year of polls (built when missing or stale) and how it was obtained."""
    folder = Path(tempfile.gettempdir()) / "recorder-bench-startup"
    folder.mkdir(exist_ok=True)
    backend = SqliteBackend(folder)
    path = folder / f"bench-year-{MONTHS}m.db"  # SqliteBackend's name for label year-12m
    if path.exists() and not rebuild:
        try:
            # immutable: our own cache, never written while we run; creates no -wal/-shm.
            with sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True) as connection:
                found = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.Error:
            found = None
        if found and found[0] == schema_head():
            return f"sqlite:///{path}", f"reused {path}"
    url = backend.create(f"year-{MONTHS}m")
    started = time.perf_counter()
    backend.load(url, Rows(History(MONTHS), sqlite_time, 1, 0), naive=False)
    return url, f"built {path} in {time.perf_counter() - started:.0f} s"


def commands(url: str, end: datetime) -> list[tuple[str, list[str]]]:
    """What is measured: the reference, the interpreter alone, then recorder's answers."""
    python = sys.executable
    db = ["--database-url", url, "--account", "busy"]
    # Times relative to the data's last poll, so every command finds real rows to answer.
    hour, day, week = (iso(end - delta) for delta in (timedelta(hours=1), timedelta(days=1), timedelta(days=7)))
    return [
        ('python -c "import sqlalchemy.orm"  (reference)', [python, "-c", "import sqlalchemy.orm"]),
        ('python -c "pass"', [python, "-c", "pass"]),
        ("recorder --version", [RECORDER, "--version"]),
        ("recorder --help", [RECORDER, "--help"]),
        ("recorder balances", [RECORDER, "balances", "--at", iso(end), *db]),
        ("recorder history --since 1h", [RECORDER, "history", "--since", hour, "--until", iso(end), *db]),
        ("recorder gaps --since 7d", [RECORDER, "gaps", "--since", week, "--until", iso(end), *db]),
        ("recorder diff --from 1d", [RECORDER, "diff", "--from", day, "--to", iso(end), *db]),
        ("recorder changes --since 1h", [RECORDER, "changes", "--since", hour, "--until", iso(end), *db]),
        ("recorder series --since 1d", [RECORDER, "series", "--asset", "USDT", "--since", day, "--until", iso(end),
                                        *db]),
    ]


def measure(named: list[tuple[str, list[str]]], runs: int) -> dict[str, list[float]]:
    """Wall seconds per run; rounds interleave the commands so load drifts hit all alike."""
    times: dict[str, list[float]] = {name: [] for name, _ in named}
    env = {**os.environ, "RECORDER_INTERVAL": "60"}
    for round_number in range(runs + 1):
        for name, argv in named:
            started = time.perf_counter()
            result = subprocess.run(argv, capture_output=True, env=env)
            elapsed = time.perf_counter() - started
            if result.returncode != 0:
                raise SystemExit(f"{name} failed ({result.returncode}): {result.stderr.decode().strip()}")
            if round_number:  # round 0 warms the page cache and .pyc files
                times[name].append(elapsed)
    return times


def report(label: str, times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Print one table: median and p90 per command, and the median's ratio to the reference."""
    reference = statistics.median(next(iter(times.values())))
    print(f"\n{label}")
    print(f"{'command':<48} {'median ms':>10} {'p90 ms':>8} {'ratio':>6}  target")
    rows = {}
    for name, samples in times.items():
        median = statistics.median(samples)
        p90 = statistics.quantiles(samples, n=10)[-1] if len(samples) > 1 else median
        ratio = median / reference
        verdict = ""
        if name.startswith("recorder ") and not name.startswith("recorder --"):
            verdict = "met" if ratio <= TARGET else "MISSED"
        print(f"{name:<48} {median * 1000:>10.0f} {p90 * 1000:>8.0f} {ratio:>5.2f}x  {verdict}")
        rows[name] = {"median_ms": round(median * 1000, 1), "p90_ms": round(p90 * 1000, 1), "ratio": round(ratio, 2)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per command, after one warm-up [15]")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached SQLite year of polls")
    parser.add_argument("--postgres", action="store_true", help="also measure on PostgreSQL (built each run)")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="an admin URL of the PostgreSQL server; a database is created beside it")
    args = parser.parse_args()
    end = History(MONTHS).end
    url, how = cached_year(args.rebuild)
    print(f"{MONTHS * 30} days of 1-minute polls, SQLite: {how}", file=sys.stderr)
    results = {"sqlite": report(f"SQLite, {args.runs} runs each, cpus={os.cpu_count()}",
                                measure(commands(url, end), args.runs))}
    if args.postgres:
        backend = PostgresBackend(args.postgres_url)
        pg_url = backend.create(f"startup-{MONTHS}m")
        try:
            backend.load(pg_url, Rows(History(MONTHS), postgres_time, "t", "f"), naive=False)
            results["postgresql"] = report(f"PostgreSQL, {args.runs} runs each", measure(commands(pg_url, end), args.runs))
        finally:
            backend.drop(pg_url)
    print(json.dumps(results, separators=(",", ":")))


if __name__ == "__main__":
    main()
