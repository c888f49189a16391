"""The balance_reconciliation view: per wallet-balance change, the income entries by type and the residual.

    balance_reconciliation  one row per interval and income type (line = 'income'), plus one
                            row per interval (line = 'residual', income_type NULL) holding
                            change - sum of every entry. The amounts of an interval's rows
                            sum to its change.

The rule is recorder.ledger.reconcile's (a test holds the two equal): per account and asset,
the wallet states are the present states in observation order, consecutive ones with the same
balance and bound merged; a state's bound is the running maximum of update_time; the interval
of a state counts the entries with previous bound < time <= bound. The first state has no
interval; entries after the last state (pending) are not in the view.

On SQLite amounts are exact decimal TEXT: the comparison goes through decimal_cmp(), sums and
differences through decimal_sum() and decimal_sub(), and the amount columns are COLLATE decimal
(the functions the sqlite3 shell's decimal extension provides and recorder.db registers). A
migration is a frozen snapshot: this SQL is not imported from the library.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_SIDES = "i.account_id, i.asset, i.opened_at, i.observed_at, i.from_time, i.to_time, i.opening, i.closing"
_IN_INTERVAL = "x.account_id = i.account_id AND x.asset = i.asset AND x.time > i.from_time AND x.time <= i.to_time"

# SQLite: a join on the entries' range, which its planner runs as one index range scan of
# (account_id, asset, time) per interval.
SQLITE_LINES = f"""
    SELECT {_SIDES}, 'income' AS line, x.income_type, decimal_sum(x.income) AS amount, min(x.known_type) AS known_type
    FROM intervals i
    JOIN income_entries x ON {_IN_INTERVAL}
    WHERE i.opened_at IS NOT NULL
    GROUP BY {_SIDES}, x.income_type
    UNION ALL
    SELECT {_SIDES}, 'residual' AS line, NULL AS income_type,
           decimal_sub(decimal_sub(i.closing, i.opening), COALESCE(decimal_sum(x.income), '0')) AS amount,
           NULL AS known_type
    FROM intervals i
    LEFT JOIN income_entries x ON {_IN_INTERVAL}
    WHERE i.opened_at IS NOT NULL
    GROUP BY {_SIDES}
"""
# PostgreSQL: the same join written as a plain join is planned as a hash join on (account,
# asset) with the time range as a filter, every interval against every entry (a year: hours);
# LATERAL makes it the per-interval index range scan.
POSTGRES_LINES = f"""
    SELECT {_SIDES}, 'income' AS line, e.income_type, e.amount, e.known_type
    FROM intervals i
    CROSS JOIN LATERAL (
        SELECT x.income_type, sum(x.income) AS amount, bool_and(x.known_type) AS known_type
        FROM income_entries x
        WHERE {_IN_INTERVAL}
        GROUP BY x.income_type
    ) e
    WHERE i.opened_at IS NOT NULL
    UNION ALL
    SELECT {_SIDES}, 'residual' AS line, NULL AS income_type,
           (i.closing - i.opening) - COALESCE((SELECT sum(x.income) FROM income_entries x WHERE {_IN_INTERVAL}), 0) AS amount,
           NULL AS known_type
    FROM intervals i
    WHERE i.opened_at IS NOT NULL
"""


def _view(*, differs: str, sub: str, lines: str, collate: str) -> str:
    return f"""
CREATE VIEW balance_reconciliation AS
WITH present AS (
    SELECT b.account_id, b.asset, b.observed_at, b.balance,
           MAX(b.update_time) OVER (PARTITION BY b.account_id, b.asset ORDER BY b.observed_at
                                    ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS bound
    FROM balances b
    WHERE b.present
),
marked AS (
    SELECT p.*,
           LAG(p.balance) OVER w AS previous_balance,
           LAG(p.bound) OVER w AS previous_bound
    FROM present p
    WINDOW w AS (PARTITION BY p.account_id, p.asset ORDER BY p.observed_at)
),
wallet AS (
    SELECT account_id, asset, observed_at, balance, bound
    FROM marked
    WHERE previous_balance IS NULL OR {differs.format(a="balance", b="previous_balance")} OR bound <> previous_bound
),
intervals AS (
    SELECT w.account_id, w.asset,
           LAG(w.observed_at) OVER v AS opened_at, w.observed_at,
           LAG(w.bound) OVER v AS from_time, w.bound AS to_time,
           LAG(w.balance) OVER v AS opening, w.balance AS closing
    FROM wallet w
    WINDOW v AS (PARTITION BY w.account_id, w.asset ORDER BY w.observed_at)
),
lines AS ({lines})
SELECT
    a.label AS account,
    l.account_id,
    l.asset,
    l.opened_at,
    l.observed_at,
    l.from_time,
    l.to_time,
    l.opening{collate} AS opening,
    l.closing{collate} AS closing,
    {sub.format(a="l.closing", b="l.opening")}{collate} AS change,
    l.line,
    l.income_type,
    l.amount{collate} AS amount,
    l.known_type
FROM lines l
JOIN accounts a ON a.id = l.account_id
"""


SQLITE = _view(differs="decimal_cmp({a}, {b}) <> 0", sub="decimal_sub({a}, {b})", lines=SQLITE_LINES,
               collate=" COLLATE decimal")
POSTGRES = _view(differs="{a} <> {b}", sub="({a} - {b})", lines=POSTGRES_LINES, collate="")


def upgrade() -> None:
    op.execute(SQLITE if op.get_bind().dialect.name == "sqlite" else POSTGRES)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS balance_reconciliation")
