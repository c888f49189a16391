"""SQL views for people at a sqlite3 or psql prompt: latest state, changes, daily closes, poll log.

The same four views, with the same columns and meaning, on SQLite and PostgreSQL:

    latest_balances    the latest recorded state per account and asset (balance_heads)
    balance_changes    every recorded change with the previous value and the delta per amount
    daily_balances     the closing state of each UTC day per account and asset, carried
                       forward through quiet days, with the last successful poll before
                       the day's end (a day inside a gap shows an old last_poll_at)
    poll_log           every poll attempt with its duration in milliseconds

On SQLite amounts are exact decimal TEXT: the views mark every amount column
`COLLATE decimal`, so ORDER BY, min() and max() compare numerically, and compute deltas
with decimal_sub(); sum them with decimal_sum(). These are the names the sqlite3 shell's
decimal extension provides and that recorder.db registers on its own connections; other
SQLite clients can read the tables, but need those functions to read these views. On
PostgreSQL amounts are NUMERIC and plain `-`, `sum()` and ORDER BY are exact.

A later migration that rebuilds balances, polls, balance_heads or accounts in SQLite batch
mode must drop these views first and create them again afterwards: SQLite refuses to
rename a table while a view refers to a table name that is missing at that moment.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = ("latest_balances", "balance_changes", "daily_balances", "poll_log")
AMOUNTS = ("balance", "cross_wallet_balance", "cross_un_pnl", "available_balance", "max_withdraw_amount")


def _amounts(prefix: str, collate: str) -> str:
    return ",\n    ".join(f"{prefix}.{name}{collate} AS {name}" for name in AMOUNTS)


def _latest(collate: str) -> str:
    return f"""
CREATE VIEW latest_balances AS
SELECT
    a.label AS account,
    b.account_id,
    b.asset,
    b.observed_at,
    b.present,
    {_amounts("b", collate)},
    b.margin_available,
    b.update_time,
    b.poll_id
FROM balance_heads h
JOIN balances b ON b.id = h.balance_id
JOIN accounts a ON a.id = h.account_id
"""


def _changes(collate: str, subtract: str) -> str:
    lags = ",\n        ".join(f"LAG(b.{name}) OVER w AS previous_{name}" for name in AMOUNTS)
    columns = ",\n    ".join(
        f"c.{name}{collate} AS {name},\n"
        f"    c.previous_{name}{collate} AS previous_{name},\n"
        f"    {subtract.format(new=f'c.{name}', old=f'c.previous_{name}')}{collate} AS delta_{name}"
        for name in AMOUNTS
    )
    return f"""
CREATE VIEW balance_changes AS
SELECT
    a.label AS account,
    c.account_id,
    c.asset,
    c.observed_at,
    CASE WHEN NOT c.present THEN 'vanished'
         WHEN c.previous_present THEN 'changed'
         ELSE 'appeared' END AS kind,
    c.present,
    {columns},
    c.margin_available,
    c.previous_margin_available,
    c.update_time,
    c.previous_observed_at,
    c.poll_id
FROM (
    SELECT
        b.*,
        LAG(b.present) OVER w AS previous_present,
        {lags},
        LAG(b.margin_available) OVER w AS previous_margin_available,
        LAG(b.observed_at) OVER w AS previous_observed_at
    FROM balances b
    WINDOW w AS (PARTITION BY b.account_id, b.asset ORDER BY b.observed_at)
) c
JOIN accounts a ON a.id = c.account_id
"""


def _poll_log(duration: str) -> str:
    return f"""
CREATE VIEW poll_log AS
SELECT
    p.id,
    a.label AS account,
    p.account_id,
    p.uid,
    p.started_at,
    p.finished_at,
    {duration} AS duration_ms,
    p.outcome,
    p.endpoint,
    p.asset_count,
    p.changed_count,
    p.error_class,
    p.error_message,
    p.http_status,
    p.error_code,
    p.used_weight
FROM polls p
JOIN accounts a ON a.id = p.account_id
"""


# SQLite stores UtcDateTime as 'YYYY-MM-DD HH:MM:SS.ffffff' UTC text, so a day's end is
# compared as the text 'YYYY-MM-DD' of the next day, and the duration is computed from
# whole seconds plus the microsecond digits (julianday() keeps only milliseconds).
SQLITE_DAILY = f"""
CREATE VIEW daily_balances AS
WITH RECURSIVE bounds AS (
    SELECT
        h.account_id,
        h.asset,
        (SELECT date(min(b.observed_at)) FROM balances b
          WHERE b.account_id = h.account_id AND b.asset = h.asset) AS first_day,
        (SELECT date(max(p.finished_at)) FROM polls p
          WHERE p.account_id = h.account_id AND p.outcome = 'ok') AS last_day
    FROM balance_heads h
),
days(account_id, asset, day, last_day) AS (
    SELECT account_id, asset, first_day, last_day FROM bounds
     WHERE first_day IS NOT NULL AND last_day IS NOT NULL
    UNION ALL
    SELECT account_id, asset, date(day, '+1 day'), last_day FROM days WHERE day < last_day
)
SELECT
    a.label AS account,
    d.account_id,
    d.asset,
    d.day,
    b.observed_at,
    b.present,
    {_amounts("b", " COLLATE decimal")},
    b.margin_available,
    b.update_time,
    (SELECT p.finished_at FROM polls p
      WHERE p.account_id = d.account_id AND p.outcome = 'ok' AND p.finished_at < date(d.day, '+1 day')
      ORDER BY p.finished_at DESC LIMIT 1) AS last_poll_at
FROM days d
JOIN balances b ON b.id = (
    SELECT b2.id FROM balances b2
     WHERE b2.account_id = d.account_id AND b2.asset = d.asset AND b2.observed_at < date(d.day, '+1 day')
     ORDER BY b2.observed_at DESC LIMIT 1)
JOIN accounts a ON a.id = d.account_id
"""

SQLITE_DURATION = (
    "(CAST(strftime('%s', p.finished_at) AS INTEGER) - CAST(strftime('%s', p.started_at) AS INTEGER)) * 1000.0"
    " + (CAST(substr(p.finished_at, 21, 6) AS INTEGER) - CAST(substr(p.started_at, 21, 6) AS INTEGER)) / 1000.0"
)

# Days are UTC days whatever the session's TimeZone setting: AT TIME ZONE 'UTC' turns a
# timestamptz into UTC wall time, and a UTC midnight back into a timestamptz.
POSTGRES_DAILY = f"""
CREATE VIEW daily_balances AS
WITH bounds AS (
    SELECT
        h.account_id,
        h.asset,
        (SELECT min(b.observed_at) FROM balances b
          WHERE b.account_id = h.account_id AND b.asset = h.asset) AS first_at,
        (SELECT max(p.finished_at) FROM polls p
          WHERE p.account_id = h.account_id AND p.outcome = 'ok') AS last_at
    FROM balance_heads h
),
days AS (
    SELECT bo.account_id, bo.asset, gs::date AS day, (gs::date + 1)::timestamp AT TIME ZONE 'UTC' AS day_end
    FROM bounds bo,
         generate_series((bo.first_at AT TIME ZONE 'UTC')::date, (bo.last_at AT TIME ZONE 'UTC')::date,
                         interval '1 day') AS gs
    WHERE bo.first_at IS NOT NULL AND bo.last_at IS NOT NULL
)
SELECT
    a.label AS account,
    d.account_id,
    d.asset,
    d.day,
    b.observed_at,
    b.present,
    {_amounts("b", "")},
    b.margin_available,
    b.update_time,
    (SELECT p.finished_at FROM polls p
      WHERE p.account_id = d.account_id AND p.outcome = 'ok' AND p.finished_at < d.day_end
      ORDER BY p.finished_at DESC LIMIT 1) AS last_poll_at
FROM days d
CROSS JOIN LATERAL (
    SELECT b2.* FROM balances b2
     WHERE b2.account_id = d.account_id AND b2.asset = d.asset AND b2.observed_at < d.day_end
     ORDER BY b2.observed_at DESC LIMIT 1) b
JOIN accounts a ON a.id = d.account_id
"""

POSTGRES_DURATION = "EXTRACT(EPOCH FROM p.finished_at - p.started_at) * 1000"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        statements = [
            _latest(" COLLATE decimal"),
            _changes(" COLLATE decimal", "decimal_sub({new}, {old})"),
            SQLITE_DAILY,
            _poll_log(SQLITE_DURATION),
        ]
    else:
        statements = [_latest(""), _changes("", "({new} - {old})"), POSTGRES_DAILY, _poll_log(POSTGRES_DURATION)]
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
