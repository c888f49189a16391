"""The ledger sync log and the ledger's coverage: which stretches of time the archive holds whole.

    ledger_syncs     one row per window of a sync attempt: window asked for (inclusive ms),
                     pages, requests, entries fetched and new, outcome, error, used weight.
                     An 'ok' row commits with its window's entries.
    ledger_coverage  the union of 'ok' windows per account: each row a stretch
                     [covered_from, covered_until] in which every entry Binance served is stored.
                     Windows that overlap or touch (the sync starts each window where the last
                     ended, and a resumed sync a few minutes before the newest covered time)
                     merge into one stretch.
    ledger_gaps      the time between consecutive stretches: (gap_from, gap_until), both
                     exclusive; e.g. the service was off longer than Binance keeps the ledger,
                     or a window failed and has not been fetched since.

Both views only compare times, so they are the same SQL on SQLite (fixed-width UTC text) and
PostgreSQL (timestamptz).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import recorder.db_types

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEDGER_COVERAGE = """
CREATE VIEW ledger_coverage AS
WITH ok AS (
    SELECT account_id, window_start, window_end,
           MAX(window_end) OVER (
               PARTITION BY account_id ORDER BY window_start, window_end
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
           ) AS reached
    FROM ledger_syncs
    WHERE outcome = 'ok'
), numbered AS (
    SELECT account_id, window_start, window_end,
           SUM(CASE WHEN reached IS NULL OR window_start > reached THEN 1 ELSE 0 END) OVER (
               PARTITION BY account_id ORDER BY window_start, window_end ROWS UNBOUNDED PRECEDING
           ) AS stretch
    FROM ok
)
SELECT a.label AS account,
       n.account_id,
       MIN(n.window_start) AS covered_from,
       MAX(n.window_end) AS covered_until,
       COUNT(*) AS windows
FROM numbered n
JOIN accounts a ON a.id = n.account_id
GROUP BY a.label, n.account_id, n.stretch
"""

LEDGER_GAPS = """
CREATE VIEW ledger_gaps AS
SELECT account, account_id, gap_from, gap_until
FROM (
    SELECT account, account_id,
           LAG(covered_until) OVER (PARTITION BY account_id ORDER BY covered_from) AS gap_from,
           covered_from AS gap_until
    FROM ledger_coverage
) stretches
WHERE gap_from IS NOT NULL
"""


def upgrade() -> None:
    op.create_table(
        "ledger_syncs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("attempt_id", sa.String(length=36), nullable=False),
        sa.Column("started_at", recorder.db_types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", recorder.db_types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("window_start", recorder.db_types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("window_end", recorder.db_types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("pages", sa.Integer(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("entries_fetched", sa.Integer(), nullable=False),
        sa.Column("entries_new", sa.Integer(), nullable=False),
        sa.Column("used_weight", sa.BigInteger(), nullable=True),
        sa.Column("error_class", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error_code", sa.BigInteger(), nullable=True),
        sa.CheckConstraint("outcome IN ('ok', 'failed')", name=op.f("ck_ledger_syncs_outcome")),
        sa.CheckConstraint("window_end >= window_start", name=op.f("ck_ledger_syncs_window_ordered")),
        sa.CheckConstraint("finished_at >= started_at", name=op.f("ck_ledger_syncs_finished_after_start")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_ledger_syncs_account_id_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_syncs")),
    )
    op.create_index("ix_ledger_syncs_account_id_window_end", "ledger_syncs", ["account_id", "window_end"], unique=False)
    op.execute(LEDGER_COVERAGE)
    op.execute(LEDGER_GAPS)


def downgrade() -> None:
    op.execute("DROP VIEW ledger_gaps")
    op.execute("DROP VIEW ledger_coverage")
    op.drop_index("ix_ledger_syncs_account_id_window_end", table_name="ledger_syncs")
    op.drop_table("ledger_syncs")
