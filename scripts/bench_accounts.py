"""Benchmark `recorder run --config` with many accounts against the strict simulator (50 ms latency).

    .venv/bin/python scripts/bench_accounts.py                     # every case, 150 s each (1000x1: 288 s)
    .venv/bin/python scripts/bench_accounts.py --seconds 90 --cases 400x1,1000x1

Cases, each on a throwaway PostgreSQL database (RECORDER_BENCH_POSTGRES_URL, default the test
server) with every account on /fapi/v3/balance (weight 5) asking for a 60 s interval:

  baseline   1 account, 1 process: the service's own CPU and memory floor, for the ratios
  400x1      400 accounts, 1 process: fits the budget (2,000 of the 2,160 weight a minute allowed)
  400x3      400 accounts, 3 processes sharing them through leases
  1000x1     1,000 accounts, 1 process: stretched to the fastest interval the budget allows
  400x1L     400 accounts, 1 process, each account's income ledger synced too (asked every 300 s, weight
             30 a request; the others run with --no-ledger): polls first, so the polls keep their 60 s
             and the ledger syncs are stretched to take only the 160 a minute the polls leave (every
             4,500 s, announced at start); every first sync catches up 90 days (13 requests) in it

The simulator runs in this process with Binance's per-IP limit (2,400 weight a minute; a 429
past it, 418 bans for ignoring it), so every refused request is counted. A case runs --seconds,
and at least two of its intervals plus 10 s (shortened from hours: the figures are steady
after the first interval), then SIGTERM.

  polls/min     successful polls a minute over the run, from the polls table
  ceiling       2,400 / 5 = 480 polls a minute: the IP's whole budget; "of ceiling" is the ratio
  on time       accounts whose every gap between polls stayed within 1.5 x their interval
  refused       429/418 answers the simulator sent (must be 0)
  ledger/min    income requests a minute (weight 30 each) over the second half of the run (the first
                minute, which the polls have not filled yet, lets the catch-up take more)
  peak w/min    the highest X-MBX-USED-WEIGHT-1M the simulator reported (recorder keeps to 2,160)
  cpu %         the service processes' CPU time over the run (user + system) / wall time, start-up included
  2nd half      the same over the second half of the run only: the steady cost
  rss MB        peak resident memory (VmHWM), the largest process; x baseline is the ratio
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import psycopg
from sqlalchemy import select

from recorder.db import make_engine, make_sessions
from recorder.models import Account, Poll, PollSchedule
from recorder.simulator import ExchangeSimulator

ADMIN_URL = os.environ.get("RECORDER_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# name: (accounts, processes, ledger synced)
CASES = {"baseline": (1, 1, False), "400x1": (400, 1, False), "400x3": (400, 3, False), "1000x1": (1000, 1, False),
         "400x1L": (400, 1, True)}
WEIGHT_LIMIT = 2400
BALANCE_WEIGHT = 5
INTERVAL = 60.0
LEDGER_WEIGHT = 30
LEDGER_INTERVAL = 300.0
LATENCY = 0.05


@dataclass
class Result:
    case: str
    accounts: int
    processes: int
    interval: float
    polls_per_minute: float
    on_time: int
    failed: int
    refused: int
    ledger_per_minute: float
    peak_weight: int
    cpu_percent: float
    steady_cpu_percent: float
    rss_mb: float
    announced: str


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_case(name: str, accounts: int, processes: int, ledger: bool, seconds: float, workdir: Path) -> Result:
    # Two whole poll intervals at least: the figures count from the end of the first one. Polls first:
    # the ledger gives way before the polls stretch (1000x1 runs without it).
    stretched = INTERVAL * max(1.0, accounts * BALANCE_WEIGHT * 60 / INTERVAL / (WEIGHT_LIMIT * 0.9))
    seconds = max(seconds, 2 * stretched + 10)
    db_name = f"bench_accounts_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{db_name}"')
    db_url = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + "/" + db_name
    simulator = ExchangeSimulator(weight_limit=WEIGHT_LIMIT, latency=LATENCY).start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BINANCE_", "RECORDER_"))}
        lines = ["[defaults]", 'endpoint = "v3"', f"interval = {INTERVAL:g}", f'base_url = "{simulator.base_url}"']
        for index in range(accounts):
            label = f"acct{index:04d}"
            simulator.add_account(api_key=f"key-{label}", api_secret=f"secret-{label}", account_alias=f"A{label}")
            env[f"K_{index}"], env[f"S_{index}"] = f"key-{label}", f"secret-{label}"
            lines += ["[[accounts]]", f'label = "{label}"', f'api_key_env = "K_{index}"', f'api_secret_env = "S_{index}"']
        path = workdir / f"{name}.toml"
        path.write_text("\n".join(lines) + "\n")
        env.update(RECORDER_DATABASE_URL=db_url, RECORDER_SPOOL_DIR=str(workdir / "spool"))
        subprocess.run([sys.executable, "-m", "recorder", "migrate"], env=env, check=True, capture_output=True)
        logs = [open(workdir / f"{name}-{n}.log", "w+") for n in range(processes)]
        began = time.time()
        options = [] if ledger else ["--no-ledger"]
        services = [subprocess.Popen([sys.executable, "-m", "recorder", "run", "--config", str(path), *options],
                                     env=env, stdout=subprocess.DEVNULL, stderr=log) for log in logs]
        time.sleep(seconds / 2)
        halfway = time.time()
        cpu_halfway = sum(proc_cpu_seconds(service.pid) for service in services)
        income_halfway = sum(1 for record in simulator.requests_log if record.path == "/fapi/v1/income")
        time.sleep(seconds / 2)
        cpu = sum(proc_cpu_seconds(service.pid) for service in services)
        rss = max(proc_peak_rss_mb(service.pid) for service in services)
        ended = time.time()
        for service in services:
            service.send_signal(signal.SIGTERM)
        for service in services:
            service.wait(timeout=60)
        announced = ""
        for log in logs:
            log.seek(0)
            announced = announced or next((line.split(": ", 1)[1].strip() for line in log if " WARNING " in line
                                           and ("stretched" in line or "ledger syncs every" in line)), "")
            log.close()
        engine = make_engine(db_url)
        try:
            with make_sessions(engine)() as session:
                rows = session.execute(select(Account.label, Poll.started_at, Poll.outcome)
                                       .join(Poll, Poll.account_id == Account.id)).all()
                intervals = set(session.scalars(select(PollSchedule.interval_ms)))
        finally:
            engine.dispose()
        interval = max(intervals) / 1000 if intervals else INTERVAL
        times: dict[str, list[float]] = defaultdict(list)
        failed = 0
        for label, started_at, outcome in rows:
            if outcome == "ok":
                times[label].append(started_at.timestamp())
            else:
                failed += 1
        # Whole intervals only, after the first (when the last account's first slot comes up).
        window_start, window_end = began + interval, ended
        in_window = sum(window_start <= t < window_end for stamps in times.values() for t in stamps)
        minutes = (window_end - window_start) / 60
        on_time = 0
        for label in times:
            stamps = sorted(times[label])
            edges = [began, *stamps, ended]
            if len(stamps) >= 1 and all(b - a <= 1.5 * interval for a, b in zip(edges[1:], edges[2:])) \
                    and stamps[0] - began <= 1.5 * interval:
                on_time += 1
        refused = sum(1 for record in simulator.requests_log if record.status in (418, 429))
        income = sum(1 for record in simulator.requests_log if record.path == "/fapi/v1/income")
        peak = max((record.used_weight for record in simulator.requests_log), default=0)
        return Result(name, accounts, processes, interval, in_window / minutes if minutes > 0 else 0.0, on_time,
                      failed, refused, (income - income_halfway) / ((ended - halfway) / 60), peak, 100 * cpu / (ended - began), 100 * (cpu - cpu_halfway) / (ended - halfway),
                      rss, announced)
    finally:
        simulator.stop()
        with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=150.0, help="How long each case runs.")
    parser.add_argument("--cases", default=",".join(CASES), help=f"Comma-separated, of {', '.join(CASES)}.")
    args = parser.parse_args()
    names = [name.strip() for name in args.cases.split(",") if name.strip()]
    if "baseline" not in names:
        names.insert(0, "baseline")
    ceiling = WEIGHT_LIMIT / BALANCE_WEIGHT
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-accounts-") as tmp:
        for name in names:
            accounts, processes, ledger = CASES[name]
            print(f"running {name} for {args.seconds:g} s ...", file=sys.stderr, flush=True)
            results.append(run_case(name, accounts, processes, ledger, args.seconds, Path(tmp)))
    base = results[0]
    print(f"50 ms latency, weight limit {WEIGHT_LIMIT}/min, /fapi/v3/balance (weight {BALANCE_WEIGHT}), "
          f"{args.seconds:g} s per case; ceiling {ceiling:.0f} polls/min")
    header = (f"{'case':<9} {'accounts':>8} {'procs':>5} {'interval s':>10} {'polls/min':>9} {'of ceiling':>10} "
              f"{'on time':>9} {'failed':>6} {'refused':>7} {'ledger/min':>10} {'peak w/min':>10} {'cpu %':>6} {'2nd half':>8} {'x base':>6} {'rss MB':>7} "
              f"{'x base':>6}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r.case:<9} {r.accounts:>8} {r.processes:>5} {r.interval:>10g} {r.polls_per_minute:>9.1f} "
              f"{r.polls_per_minute / ceiling:>10.1%} {r.on_time:>4}/{r.accounts:<4} {r.failed:>6} {r.refused:>7} "
              f"{r.ledger_per_minute:>10.1f} {r.peak_weight:>10} "
              f"{r.cpu_percent:>6.1f} {r.steady_cpu_percent:>8.2f} "
              f"{r.steady_cpu_percent / base.steady_cpu_percent if base.steady_cpu_percent else 0:>6.1f} "
              f"{r.rss_mb:>7.1f} {r.rss_mb / base.rss_mb:>6.2f}")
    for r in results:
        if r.announced:
            print(f"{r.case}: announced at start: {r.announced}")


if __name__ == "__main__":
    main()
