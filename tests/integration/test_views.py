"""The SQL views from migration 0002 on both backends: same rows, exact amounts, numeric order.

These are the queries the README tells users to paste into sqlite3 or psql.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from sqlalchemy import Boolean, text

from recorder.db_types import ExactDecimal, UtcDateTime
from recorder.errors import ExchangeUnavailable
from recorder.records import AssetBalance, FetchedBalances
from recorder.store import ensure_account, record_failure, record_poll

LOCAL = "http://127.0.0.1:9"
UPDATE = datetime(2025, 12, 31, 23, 0, 0, 123000, tzinfo=timezone.utc)
TYPES = {
    "observed_at": UtcDateTime(),
    "previous_observed_at": UtcDateTime(),
    "last_poll_at": UtcDateTime(),
    "started_at": UtcDateTime(),
    "present": Boolean(),
    "total": ExactDecimal(),
    **{f"{prefix}{name}": ExactDecimal() for prefix in ("", "previous_", "delta_")
       for name in ("balance", "cross_wallet_balance", "cross_un_pnl", "available_balance", "max_withdraw_amount")},
}


def utc(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, minute, tzinfo=timezone.utc)


def asset(name: str, amount: str) -> AssetBalance:
    value = Decimal(amount)
    return AssetBalance(name, value, value, Decimal("0.00000000"), value, value, True, UPDATE)


def record(sessions, when, outcome, label="main", took=timedelta(milliseconds=250)):
    with sessions.begin() as session:
        account = ensure_account(session, label, LOCAL, when)
        if isinstance(outcome, Exception):
            record_failure(session, account, outcome, endpoint="/fapi/v2/balance", started_at=when - took, finished_at=when)
        else:
            fetched = FetchedBalances("SgsR", tuple(outcome), "/fapi/v2/balance", 5)
            record_poll(session, account, fetched, started_at=when - took, finished_at=when)


def query(sessions, sql: str, **params) -> list[dict]:
    """Run SQL as a user would; decode the columns this test compares with their column types."""
    with sessions() as session:
        result = session.execute(text(sql), params)
        names = list(result.keys())
        return [{name: decode(name, value) for name, value in zip(names, row)} for row in result]


def decode(name: str, value):
    """SQLite returns times and amounts as text and booleans as 0/1; PostgreSQL typed values."""
    kind = TYPES.get(name)
    if value is None or kind is None:
        return value
    if isinstance(kind, UtcDateTime):
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
        return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)
    if isinstance(kind, ExactDecimal):
        return Decimal(str(value))
    if isinstance(kind, Boolean):
        return bool(value)
    return value


def script(sessions) -> None:
    # UTC: 01-01 10:00 USDT 1 / 16:00 USDT 2, BTC 0.5 / 01-02 00:00 exactly USDT 3 /
    # 01-02 00:01 failed / 01-03 no poll at all / 01-04 09:00 USDT 4, BTC gone.
    record(sessions, utc(1, 10), [asset("USDT", "1.00000000")])
    record(sessions, utc(1, 16), [asset("USDT", "2.00000000"), asset("BTC", "0.50000000")])
    record(sessions, utc(2), [asset("USDT", "3.00000000"), asset("BTC", "0.50000000")], took=timedelta(microseconds=1234567))
    record(sessions, utc(2, 0, 1), ExchangeUnavailable("HTTP 503", http_status=503))
    record(sessions, utc(4, 9), [asset("USDT", "4.00000000")])
    record(sessions, utc(1, 12), [asset("USDT", "10.00000000")], label="side")


def test_latest_balances_sort_and_sum_numerically(sessions):
    script(sessions)
    rows = query(sessions, "SELECT account, asset, present, balance, observed_at FROM latest_balances ORDER BY account, asset")
    assert [(r["account"], r["asset"], r["present"], r["balance"], r["observed_at"]) for r in rows] == [
        ("main", "BTC", False, None, utc(4, 9)),
        ("main", "USDT", True, Decimal("4.00000000"), utc(4, 9)),
        ("side", "USDT", True, Decimal("10.00000000"), utc(1, 12)),
    ]
    # As text, '10.00000000' would sort before '4.00000000'.
    ordered = query(sessions, "SELECT balance FROM latest_balances WHERE present ORDER BY balance DESC")
    assert [r["balance"] for r in ordered] == [Decimal("10"), Decimal("4")]
    total_sql = "sum" if sessions.kw["bind"].dialect.name == "postgresql" else "decimal_sum"
    (total,) = query(sessions, f"SELECT {total_sql}(balance) AS total FROM latest_balances")
    assert format(total["total"], "f") == "14.00000000"


def test_balance_changes_have_previous_values_and_exact_deltas(sessions):
    script(sessions)
    rows = query(sessions, "SELECT asset, observed_at, kind, balance, previous_balance, delta_balance, previous_observed_at"
                           " FROM balance_changes WHERE account = :account ORDER BY observed_at, asset", account="main")
    assert [tuple(r.values()) for r in rows] == [
        ("USDT", utc(1, 10), "appeared", Decimal("1"), None, None, None),
        ("BTC", utc(1, 16), "appeared", Decimal("0.5"), None, None, None),
        ("USDT", utc(1, 16), "changed", Decimal("2"), Decimal("1"), Decimal("1"), utc(1, 10)),
        ("USDT", utc(2), "changed", Decimal("3"), Decimal("2"), Decimal("1"), utc(1, 16)),
        ("BTC", utc(4, 9), "vanished", None, Decimal("0.5"), None, utc(1, 16)),
        ("USDT", utc(4, 9), "changed", Decimal("4"), Decimal("3"), Decimal("1"), utc(2)),
    ]
    assert format(rows[2]["delta_balance"], "f") == "1.00000000"


def test_daily_balances_close_each_utc_day_and_carry_quiet_days(sessions):
    script(sessions)
    rows = query(sessions, "SELECT asset, CAST(day AS TEXT) AS day, present, balance, observed_at, last_poll_at"
                           " FROM daily_balances WHERE account = 'main' ORDER BY asset, day")
    assert [tuple(r.values()) for r in rows] == [
        ("BTC", "2026-01-01", True, Decimal("0.5"), utc(1, 16), utc(1, 16)),
        ("BTC", "2026-01-02", True, Decimal("0.5"), utc(1, 16), utc(2)),
        ("BTC", "2026-01-03", True, Decimal("0.5"), utc(1, 16), utc(2)),
        ("BTC", "2026-01-04", False, None, utc(4, 9), utc(4, 9)),
        # The 00:00:00 state belongs to January 2, not to January 1's close.
        ("USDT", "2026-01-01", True, Decimal("2"), utc(1, 16), utc(1, 16)),
        ("USDT", "2026-01-02", True, Decimal("3"), utc(2), utc(2)),
        ("USDT", "2026-01-03", True, Decimal("3"), utc(2), utc(2)),
        ("USDT", "2026-01-04", True, Decimal("4"), utc(4, 9), utc(4, 9)),
    ]


def test_poll_log_has_exact_durations(sessions):
    script(sessions)
    rows = query(sessions, "SELECT started_at, duration_ms, outcome, error_class, asset_count FROM poll_log"
                           " WHERE account = 'main' ORDER BY started_at")
    assert [(float(r["duration_ms"]), r["outcome"], r["error_class"], r["asset_count"]) for r in rows] == [
        (250.0, "ok", None, 1),
        (250.0, "ok", None, 2),
        (1234.567, "ok", None, 2),
        (250.0, "failed", "ExchangeUnavailable", None),
        (250.0, "ok", None, 1),
    ]


DOCS = Path(__file__).resolve().parents[2] / "README.md"
# Examples that rightly return nothing on a demo database, and why.
EMPTY_ON_DEMO: set[str] = set()


def documented_blocks() -> list[tuple[str, str]]:
    """Every ```sql block of the README as (backend, text): 'sqlite', 'postgresql' or 'both'.

    A block is for one backend when its first line names the shell (`-- sqlite3 ...`,
    `-- SQLite ...`, `-- psql ...`, `-- PostgreSQL ...`); otherwise it is for both.
    """
    blocks = []
    for chunk in DOCS.read_text(encoding="utf-8").split("```sql\n")[1:]:
        text = chunk.split("```", 1)[0]
        first = text.splitlines()[0].lower()
        backend = "sqlite" if "sqlite" in first else "postgresql" if ("psql" in first or "postgresql" in first) else "both"
        blocks.append((backend, text))
    return blocks


def statements(block: str) -> list[str]:
    """The block's statements without their comment lines, as a user would paste each one."""
    code = "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("--"))
    return [" ".join(statement.split()) for statement in code.split(";") if statement.strip()]


def demo_like(sessions) -> None:
    """What `recorder demo` leaves: account 'demo', several assets, USDT moving both ways, an
    outage, all within the last hour (the examples filter on the last day or week)."""
    now = datetime.now(timezone.utc)
    usdt = ["9.50000000", "10.25000000", "9.75000000", "123456789012345678901.12345678", "10.00000001"]
    for n, amount in enumerate(usdt):
        outcome = [asset("USDT", amount), asset("BNB", "0.84213500"), asset("BTC", "0.00000000")]
        if n == 4:
            outcome = outcome[:1]  # BNB and BTC vanish
        record(sessions, now - timedelta(minutes=50 - 10 * n), outcome, label="demo")
        if n == 2:
            record(sessions, now - timedelta(minutes=25), ExchangeUnavailable("HTTP 503", http_status=503), label="demo")
    ledger_like(sessions, now)


def ledger_like(sessions, now: datetime) -> None:
    """What the demo's ledger sync leaves: USDT entries, two covered stretches with a gap, a failed window."""
    from recorder.models import IncomeEntry, LedgerSync

    with sessions.begin() as session:
        account_id = session.execute(text("SELECT id FROM accounts WHERE label = 'demo'")).scalar_one()
        for n, (income_type, amount) in enumerate([("COMMISSION", "-0.01"), ("REALIZED_PNL", "2.5"),
                                                   ("FUNDING_FEE", "-0.12345678")]):
            session.add(IncomeEntry(account_id=account_id, time=now - timedelta(minutes=40 - n), income_type=income_type,
                                    tran_id=2**53 + n, asset="USDT", income=Decimal(amount), symbol="BTCUSDT", info="",
                                    trade_id="", known_type=True, source="api", recorded_at=now))
        windows = [(90, 60, "ok"), (30, 20, "failed"), (20, 1, "ok")]
        for start, end, outcome in windows:
            session.add(LedgerSync(account_id=account_id, attempt_id="a", started_at=now, finished_at=now,
                                   window_start=now - timedelta(minutes=start), window_end=now - timedelta(minutes=end),
                                   outcome=outcome, pages=1, requests=1, entries_fetched=0, entries_new=0,
                                   error_class="ExchangeUnavailable" if outcome == "failed" else None,
                                   error_message="HTTP 503" if outcome == "failed" else None))


def shell(db_url: str, sql: str, *, rows: bool) -> subprocess.CompletedProcess:
    """Run SQL in the real sqlite3 or psql shell; `rows=True` prints one line per row."""
    if db_url.startswith("sqlite"):
        if shutil.which("sqlite3") is None:
            pytest.skip("no sqlite3 shell")
        command = ["sqlite3", "-bail", *(["-list"] if rows else []), db_url.removeprefix("sqlite:///")]
    else:
        if shutil.which("psql") is None:
            pytest.skip("no psql")
        command = ["psql", db_url.replace("postgresql+psycopg://", "postgresql://", 1), "-X", "-q",
                   "-v", "ON_ERROR_STOP=1", *(["-A", "-t"] if rows else []), "-f", "-"]
    result = subprocess.run(command, input=sql, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{sql}\n{result.stderr}"
    assert "rror" not in result.stderr, f"{sql}\n{result.stderr}"
    return result


def test_documented_examples_run_in_the_real_shells(sessions, db_url):
    """Every README SQL block for this backend runs as pasted, whole, in sqlite3 or psql."""
    demo_like(sessions)
    backend = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    blocks = [text for kind, text in documented_blocks() if kind in (backend, "both")]
    assert len(blocks) >= 3
    for block in blocks:
        shell(db_url, block, rows=False)


def test_every_documented_query_returns_rows_on_a_demo_database(sessions, db_url):
    """Each README example, one at a time in the real shell, answers with at least one row."""
    demo_like(sessions)
    backend = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    queries = [sql for kind, text in documented_blocks() if kind in (backend, "both") for sql in statements(text)]
    assert len(queries) >= 15
    for sql in queries:
        lines = [line for line in shell(db_url, sql + ";", rows=True).stdout.splitlines() if line.strip()]
        if sql in EMPTY_ON_DEMO:
            continue
        assert lines, f"no row on a demo database: {sql}"
    # The numeric order the views promise: 123456789012345678901.12345678 first, 10.25 before 9.75.
    largest = next(sql for sql in queries if "FROM balance_changes" in sql and "ORDER BY balance DESC" in sql)
    values = [line.split("|")[-1] for line in shell(db_url, largest + ";", rows=True).stdout.splitlines() if line.strip()]
    assert values == ["123456789012345678901.12345678", "10.25000000", "10.00000001", "9.75000000", "9.50000000"]


def test_no_documented_sum_adds_different_assets():
    """A sum in the README is per asset: grouped by asset, or with one asset in WHERE."""
    sums = [sql for _, text in documented_blocks() for sql in statements(text) if "sum(" in sql.lower()]
    assert sums
    for sql in sums:
        assert re.search(r"GROUP BY[^;]*\basset\b", sql) or re.search(r"\basset = '", sql), sql
