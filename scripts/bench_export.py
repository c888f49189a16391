#!/usr/bin/env python3
"""Benchmark `recorder export`: rows per second and peak memory, beside the sqlite3 shell's CSV.

Builds (with scripts/bench_queries.py's loader) a SQLite history of one busy account whose
USDT row changes on every 1-minute poll: 12 months by default, about 517,000 history rows;
`--rows 5000000` builds enough months for that many. Then, each as its own process, timed
from start to exit with its peak RSS (wait4), in the same run:

    sqlite3 -csv                      the same rows, formatted the same way, by the shell (baseline)
    recorder export --what history    --format csv, jsonl and parquet, to a file
    recorder export --what changes    --format csv
    recorder history --format csv     to a file (stdout redirected)
    recorder changes --format csv     to a file

With `--before DIR` (a checkout of the code before this change, e.g. /work/main) the
`history` and `changes` commands also run with that code (PYTHONPATH=DIR) on a copy of the
database migrated down to that code's schema. The table gives rows/s relative to the shell
and the peak memory; a final JSON line has every figure.

    .venv/bin/python scripts/bench_export.py
    .venv/bin/python scripts/bench_export.py --before /work/main
    .venv/bin/python scripts/bench_export.py --rows 5000000 --history-only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_queries as loader  # noqa: E402

ROWS_PER_MONTH = 30 * 1440 - 3 * loader.OUTAGE_POLLS  # the busy account: one row per successful poll
RECORDER = [sys.executable, "-m", "recorder"]
TIME = shutil.which("time") or "/usr/bin/time"

# The shell's side of the comparison: the same columns, the same text as the export's CSV.
SHELL_SQL = """SELECT a.label, b.asset, replace(b.observed_at, ' ', 'T') || 'Z',
 CASE WHEN b.present THEN 'true' ELSE 'false' END, b.balance, b.cross_wallet_balance, b.cross_un_pnl,
 b.available_balance, b.max_withdraw_amount, CASE WHEN b.margin_available THEN 'true' WHEN NOT b.margin_available THEN 'false' END,
 substr(b.update_time, 1, 10) || 'T' || substr(b.update_time, 12, 12) || 'Z'
 FROM balances b JOIN accounts a ON a.id = b.account_id WHERE a.label = 'busy' ORDER BY b.observed_at, b.asset"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build(directory: Path, months: int) -> str:
    backend = loader.SqliteBackend(directory)
    url = backend.create(f"export-{months}m")
    history = loader.History(months)
    started = time.perf_counter()
    backend.load(url, loader.Rows(history, loader.sqlite_time, 1, 0), naive=False)
    log(f"loaded {months} months in {time.perf_counter() - started:.1f} s")
    return url


def downgraded_copy(url: str, directory: Path, before: Path) -> str:
    """A copy of the database at the schema of the code in `before`."""
    source = Path(url.removeprefix("sqlite:///"))
    target = directory / f"before-{source.name}"
    shutil.copyfile(source, target)
    head = subprocess.run([sys.executable, "-c", "from recorder.schema import head_revision; print(head_revision())"],
                          env={**os.environ, "PYTHONPATH": str(before)}, cwd=before, capture_output=True, text=True,
                          check=True).stdout.strip()
    from alembic import command

    from recorder.db import make_engine
    from recorder.schema import alembic_config

    engine = make_engine(f"sqlite:///{target}")
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, head)
    engine.dispose()
    log(f"copied and migrated down to {head} for the code in {before}")
    return f"sqlite:///{target}"


def measure(argv: list[str], out: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> dict[str, float]:
    """Run argv with stdout to `out`; wall seconds and peak RSS in MB of that process alone.

    The peak comes from GNU time (`%M`): a process forked straight from this one would count
    this benchmark's own memory in its peak (Linux keeps the pre-exec high-water mark).
    """
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss, open(out, "wb") as sink:
        started = time.perf_counter()
        process = subprocess.run([TIME, "-f", "%M %U %S", "-o", rss.name, *argv], stdout=sink, stderr=subprocess.PIPE,
                                 env=env, cwd=cwd)
        seconds = time.perf_counter() - started
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({process.returncode}): {process.stderr.decode().strip()}")
        peak_kib, user, system = rss.read().split()[-3:]
    # CPU seconds beside the wall time: on a shared machine the wall time mostly measures the others.
    return {"seconds": seconds, "cpu_s": float(user) + float(system), "peak_mb": int(peak_kib) / 1024}


def count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def ensure_sqlite3() -> str | None:
    found = shutil.which("sqlite3")
    if found:
        return found
    log("sqlite3 shell missing: installing Debian's sqlite3 with apt-get")
    subprocess.run(["apt-get", "install", "-y", "-q", "sqlite3"], check=False, capture_output=True)
    return shutil.which("sqlite3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=0, help="history rows to build [default: 12 months, ~517,000]")
    parser.add_argument("--before", type=Path, help="a checkout of the earlier code, for history/changes before and after")
    parser.add_argument("--keep", type=Path, help="keep the database and files in this folder")
    parser.add_argument("--database", type=Path, help="reuse a database this script built (--keep) instead of building one")
    parser.add_argument("--history-only", action="store_true",
                        help="only the shell and the history exports (a quick memory check at --rows 5000000)")
    args = parser.parse_args()
    months = math.ceil(args.rows / ROWS_PER_MONTH) if args.rows else 12
    directory = args.keep or Path(tempfile.mkdtemp(prefix="bench-export-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        url = f"sqlite:///{args.database.resolve()}" if args.database else build(directory, months)
        # An installed recorder has its bytecode compiled (pip does it); a run from a checkout
        # with PYTHONDONTWRITEBYTECODE set would time compiling the package on every start.
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([*RECORDER, "--help"], check=True, capture_output=True)
        database = url.removeprefix("sqlite:///")
        runs: list[dict] = []

        def run(label: str, fmt: str, argv: list[str], suffix: str, env: dict[str, str] | None = None, rows_of=None,
                cwd: Path | None = None) -> None:
            out = directory / f"{label.replace(' ', '_').replace('(', '').replace(')', '')}.{suffix}"
            log(f"running {label} ({fmt})")
            figures = measure(argv, out, env, cwd)
            path = out
            if "--out" in argv:
                path = Path(argv[argv.index("--out") + 1])
            rows = rows_of(path) if rows_of else count_lines(path) - 1
            runs.append({"what": label, "format": fmt, "rows": rows, **figures, "rows_per_s": rows / figures["seconds"],
                         "rows_per_cpu_s": rows / max(figures["cpu_s"], 0.01)})

        shell = ensure_sqlite3()
        if shell:
            run("sqlite3 shell -csv", "csv", [shell, "-csv", "-header", database, SHELL_SQL], "csv")
        else:
            log("no sqlite3 shell and apt-get could not install it: the baseline row is skipped")
        common = ["--database-url", url, "--account", "busy"]
        for fmt, suffix, rows_of in (("csv", "csv", None), ("jsonl", "jsonl", count_lines),
                                     ("parquet", "parquet", parquet_rows)):
            out = directory / f"export-history.{suffix}"
            run("export history", fmt, [*RECORDER, "export", "--what", "history", "--format", fmt, "--force",
                                        "--out", str(out), *common], suffix + ".log", rows_of=rows_of)
        if args.history_only:
            print_table(runs)
            print(json.dumps({"months": months, "runs": runs}))
            return
        out = directory / "export-changes.csv"
        run("export changes", "csv", [*RECORDER, "export", "--what", "changes", "--force", "--out", str(out), *common],
            "log")
        run("history (after)", "csv", [*RECORDER, "history", "--format", "csv", *common], "csv")
        run("changes (after)", "csv", [*RECORDER, "changes", "--format", "csv", *common], "csv")
        if args.before:
            before_url = downgraded_copy(url, directory, args.before)
            env = {**os.environ, "PYTHONPATH": str(args.before)}
            old = ["--database-url", before_url, "--account", "busy"]
            run("history (before)", "csv", [*RECORDER, "history", "--format", "csv", *old], "csv", env, cwd=args.before)
            run("changes (before)", "csv", [*RECORDER, "changes", "--format", "csv", *old], "csv", env, cwd=args.before)
        print_table(runs)
        print(json.dumps({"months": months, "runs": runs}))
    finally:
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)


def print_table(runs: list[dict]) -> None:
    shell = next((r for r in runs if r["what"].startswith("sqlite3")), None)
    print(f"{'what':<20} {'format':<7} {'rows':>9} {'wall s':>7} {'rows/s':>8} {'vs shell':>8} "
          f"{'CPU s':>6} {'rows/CPU s':>10} {'vs shell':>8} {'peak MB':>7}")
    print("-" * 100)
    for r in runs:
        wall = f"{r['rows_per_s'] / shell['rows_per_s']:.2f}x" if shell else "-"
        cpu = f"{r['rows_per_cpu_s'] / shell['rows_per_cpu_s']:.2f}x" if shell else "-"
        print(f"{r['what']:<20} {r['format']:<7} {r['rows']:>9,} {r['seconds']:>7.2f} {r['rows_per_s']:>8,.0f} {wall:>8} "
              f"{r['cpu_s']:>6.2f} {r['rows_per_cpu_s']:>10,.0f} {cpu:>8} {r['peak_mb']:>7.1f}")
    print("(whole processes, start-up included; CPU s = user + system; peak MB = that process's maximum RSS)")


if __name__ == "__main__":
    main()
