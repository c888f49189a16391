"""The least a poller can do: scripts/bench_poll.py --service runs this beside `recorder run`.

    python scripts/poll_minimal.py --base-url URL --api-key K --api-secret S \
        --database sqlite:///x.db --account minimal --interval 0.2

One process, at the same cadence as the service, doing the same work per poll with nothing
around it: one signed GET of /fapi/v2/balance with requests (one kept-alive Session), the
body parsed once with the json module, each asset compared as text with the state it wrote
last (kept in memory), and the SQL statements the recorder sends for a poll, verbatim, on a
raw sqlite3 or psycopg connection with the recorder's pragmas: BEGIN IMMEDIATE, the poll row
(INSERT ... ON CONFLICT DO NOTHING RETURNING), the gap check on the first poll (then, as the
recorder does, the previous poll and the schedule are kept in memory and a late poll stores
its gap), and for a changed asset its balances row and head, then COMMIT. It prints one line per poll on stdout ("ok <changed>")
and stops on SIGTERM. Only the standard library, requests and the database driver are
imported, so its CPU and peak memory are the floor the service is measured against; it
validates nothing, keeps no spool and no lock, and stops on the first error.

With --import-sqlalchemy it also imports SQLAlchemy and the database's dialect, and uses neither:
its peak memory is then the least any service storing through SQLAlchemy can take.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import signal
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import requests

BALANCE_PATH = "/fapi/v2/balance"
FIELDS = ("balance", "crossWalletBalance", "crossUnPnl", "availableBalance", "maxWithdrawAmount", "marginAvailable", "updateTime")

# The statements as SQLAlchemy compiles them for the recorder (scripts/bench_poll.py --service
# checks that the recorder sends exactly these); "?" becomes "%s" for psycopg.
INSERT_POLL = (
    "INSERT INTO polls (finished_at, started_at, account_id, used_weight, asset_count, changed_count, outcome, "
    "endpoint, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (account_id, finished_at) DO NOTHING "
    "RETURNING account_id"
)
GAP_CHECK = (
    "SELECT (SELECT polls.finished_at \nFROM polls \nWHERE polls.account_id = ? AND polls.outcome = ? AND "
    "polls.finished_at < ? ORDER BY polls.finished_at DESC\n LIMIT ? OFFSET ?) AS previous, (SELECT "
    "polls.finished_at \nFROM polls \nWHERE polls.account_id = ? AND polls.outcome = ? AND polls.finished_at > ? "
    "ORDER BY polls.finished_at\n LIMIT ? OFFSET ?) AS next, (SELECT anon_1.started_at \nFROM (SELECT "
    "poll_schedules.started_at AS started_at, poll_schedules.tolerance_ms AS tolerance_ms \nFROM poll_schedules "
    "\nWHERE poll_schedules.account_id = ? AND poll_schedules.started_at <= ? ORDER BY poll_schedules.started_at "
    "DESC\n LIMIT ? OFFSET ?) AS anon_1) AS schedule_at, (SELECT anon_1.tolerance_ms \nFROM (SELECT "
    "poll_schedules.started_at AS started_at, poll_schedules.tolerance_ms AS tolerance_ms \nFROM poll_schedules "
    "\nWHERE poll_schedules.account_id = ? AND poll_schedules.started_at <= ? ORDER BY poll_schedules.started_at "
    "DESC\n LIMIT ? OFFSET ?) AS anon_1) AS tolerance_ms"
)
INSERT_GAP = "INSERT INTO poll_gaps (account_id, end_at, start_at, tolerance_ms) VALUES (?, ?, ?, ?)"
INSERT_STATE = (
    "INSERT INTO balances (account_id, asset, observed_at, present, balance, cross_wallet_balance, cross_un_pnl, "
    "available_balance, max_withdraw_amount, margin_available, update_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "RETURNING id"
)
INSERT_HEAD = "INSERT INTO balance_heads (account_id, asset, balance_id) VALUES (?, ?, ?)"
MOVE_HEAD = "UPDATE balance_heads SET balance_id=? WHERE balance_heads.account_id = ? AND balance_heads.asset = ?"
STATEMENTS = {"INSERT_POLL": INSERT_POLL, "GAP_CHECK": GAP_CHECK, "INSERT_GAP": INSERT_GAP, "INSERT_STATE": INSERT_STATE,
              "INSERT_HEAD": INSERT_HEAD, "MOVE_HEAD": MOVE_HEAD}


class Database:
    """A raw DBAPI connection with the recorder's settings; `sql()` adapts the placeholders."""

    def __init__(self, url: str) -> None:
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            import sqlite3

            self.connection: Any = sqlite3.connect(url.split(":///", 1)[1], isolation_level=None)
            for pragma in ("busy_timeout=10000", "journal_mode=WAL", "foreign_keys=ON", "synchronous=FULL"):
                self.connection.execute(f"PRAGMA {pragma}")
        else:
            import psycopg

            self.connection = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))

    def sql(self, statement: str) -> str:
        return statement if self.sqlite else statement.replace("?", "%s")

    def when(self, moment: datetime) -> Any:
        # The recorder's UtcDateTime: naive UTC text on SQLite, timestamptz on PostgreSQL.
        return moment.replace(tzinfo=None).isoformat(" ") if self.sqlite else moment

    def begin(self) -> Any:
        cursor = self.connection.cursor()
        if self.sqlite:
            cursor.execute("BEGIN IMMEDIATE")
        return cursor


def main(argv: list[str] | None = None) -> int:
    """Poll until SIGTERM (or --polls), printing one line per poll."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--api-secret", required=True)
    parser.add_argument("--database", required=True, help="sqlite:///path or postgresql+psycopg://...")
    parser.add_argument("--account", default="minimal")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--import-sqlalchemy", action="store_true",
                        help="also import SQLAlchemy and the database's dialect (unused): a memory floor")
    args = parser.parse_args(argv)
    if args.import_sqlalchemy:
        import importlib

        import sqlalchemy  # noqa: F401 - imported for its memory alone

        importlib.import_module("sqlalchemy.dialects." + (
            "sqlite.pysqlite" if args.database.startswith("sqlite") else "postgresql.psycopg"))

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    db = Database(args.database)
    cursor = db.begin()
    cursor.execute(db.sql("SELECT id FROM accounts WHERE label = ?"), (args.account,))
    row = cursor.fetchone()
    if row is None:
        cursor.execute(
            db.sql("INSERT INTO accounts (label, environment, created_at) VALUES (?, ?, ?) RETURNING id"),
            (args.account, "local", db.when(datetime.now(timezone.utc))),
        )
        row = cursor.fetchone()
    account_id = row[0]
    db.connection.commit()
    heads: dict[str, tuple[Any, ...]] = {}  # asset -> the fields as last written, as text

    session = requests.Session()
    session.trust_env = False
    session.headers["X-MBX-APIKEY"] = args.api_key
    server_time = session.get(f"{args.base_url}/fapi/v1/time", timeout=10).json()["serverTime"]
    offset_ms = server_time - time.time_ns() // 1_000_000
    secret = args.api_secret.encode()

    previous_ok: datetime | None = None
    tolerance = timedelta(0)
    next_at = time.monotonic()
    while not stop:
        started_at = datetime.now(timezone.utc)
        query = urlencode({"recvWindow": 5000, "timestamp": time.time_ns() // 1_000_000 + offset_ms})
        signature = hmac.new(secret, query.encode(), hashlib.sha256).hexdigest()
        response = session.get(f"{args.base_url}{BALANCE_PATH}?{query}&signature={signature}", timeout=10)
        response.raise_for_status()
        rows = json.loads(response.content)
        finished_at = datetime.now(timezone.utc)
        weight = response.headers.get("X-MBX-USED-WEIGHT-1M")
        changed = []
        for asset in rows:
            state = tuple(asset[name] for name in FIELDS)
            if heads.get(asset["asset"]) != state:
                changed.append((asset["asset"], state))
        at = db.when(finished_at)
        cursor = db.begin()
        cursor.execute(
            db.sql(INSERT_POLL),
            (at, db.when(started_at), account_id, int(weight) if weight else None, len(rows), len(changed), "ok", "v2", None),
        )
        cursor.fetchall()
        if previous_ok is None:
            # Like the recorder: asked once, then the previous poll and the schedule are known.
            cursor.execute(db.sql(GAP_CHECK), (account_id, "ok", at, 1, 0, account_id, "ok", at, 1, 0) + (account_id, at, 1, 0) * 2)
            ((previous, _, _, tolerance_ms),) = cursor.fetchall()
            if isinstance(previous, str):  # SQLite's text
                previous = datetime.fromisoformat(previous).replace(tzinfo=timezone.utc)
            previous_ok = previous if previous is not None else finished_at
            tolerance = timedelta(milliseconds=tolerance_ms or 90_000)
        elif finished_at - previous_ok > tolerance:
            cursor.execute(db.sql(INSERT_GAP), (account_id, at, db.when(previous_ok), tolerance // timedelta(milliseconds=1)))
        previous_ok = finished_at
        for name, state in changed:
            update_time = db.when(datetime.fromtimestamp(state[6] / 1000, timezone.utc))
            cursor.execute(db.sql(INSERT_STATE), (account_id, name, at, True, *state[:5], state[5], update_time))
            (balance_id,) = cursor.fetchone()
            if name in heads:
                cursor.execute(db.sql(MOVE_HEAD), (balance_id, account_id, name))
            else:
                cursor.execute(db.sql(INSERT_HEAD), (account_id, name, balance_id))
            heads[name] = state
        db.connection.commit()
        print(f"ok {len(changed)}", flush=True)
        next_at += args.interval
        delay = next_at - time.monotonic()
        if delay > 0 and not stop:
            time.sleep(delay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
