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
Revises: 0008
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _view(*, differs: str, sub: str, total: str, all_known: str, zero: str, collate: str) -> str:
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
lines AS (
    SELECT i.account_id, i.asset, i.opened_at, i.observed_at, i.from_time, i.to_time, i.opening, i.closing,
           'income' AS line, e.income_type, {total} AS amount, {all_known} AS known_type
    FROM intervals i
    JOIN income_entries e
      ON e.account_id = i.account_id AND e.asset = i.asset AND e.time > i.from_time AND e.time <= i.to_time
    WHERE i.opened_at IS NOT NULL
    GROUP BY i.account_id, i.asset, i.opened_at, i.observed_at, i.from_time, i.to_time, i.opening, i.closing,
             e.income_type
    UNION ALL
    SELECT i.account_id, i.asset, i.opened_at, i.observed_at, i.from_time, i.to_time, i.opening, i.closing,
           'residual' AS line, NULL AS income_type,
           {sub.format(a=sub.format(a="i.closing", b="i.opening"), b=f"COALESCE({total}, {zero})")} AS amount,
           NULL AS known_type
    FROM intervals i
    LEFT JOIN income_entries e
      ON e.account_id = i.account_id AND e.asset = i.asset AND e.time > i.from_time AND e.time <= i.to_time
    WHERE i.opened_at IS NOT NULL
    GROUP BY i.account_id, i.asset, i.opened_at, i.observed_at, i.from_time, i.to_time, i.opening, i.closing
)
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


SQLITE = _view(
    differs="decimal_cmp({a}, {b}) <> 0",
    sub="decimal_sub({a}, {b})",
    total="decimal_sum(e.income)",
    all_known="min(e.known_type)",
    zero="'0'",
    collate=" COLLATE decimal",
)
POSTGRES = _view(
    differs="{a} <> {b}",
    sub="({a} - {b})",
    total="sum(e.income)",
    all_known="bool_and(e.known_type)",
    zero="0",
    collate="",
)


def upgrade() -> None:
    op.execute(SQLITE if op.get_bind().dialect.name == "sqlite" else POSTGRES)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS balance_reconciliation")
