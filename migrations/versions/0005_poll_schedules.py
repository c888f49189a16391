"""Poll schedules and stored gaps: gaps become a fact of the database, not of the reader.

    poll_schedules  the interval a recorder declared per account from started_at on, with
                    the gap tolerance derived from it (1.5 x the interval, stored).
    poll_gaps       consecutive successful polls further apart than the tolerance, written
                    with the poll that ends the gap.

Backfill, per account with polls: one 'inferred' schedule from its first poll on, whose
interval is the median spacing of consecutive successful polls (60 s with fewer than two),
and every historic gap under it. The walk runs in Python over the ok polls in key order, one
pass, so the gaps are computed by exactly the rule the writer applies (SQLite's julianday()
would round the spacing to milliseconds). A migration is a frozen snapshot: the rule is
copied here, not imported.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from alembic import op

import recorder.db_types

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_INTERVAL_MS = 60_000
BATCH = 5_000


def upgrade() -> None:
    schedules = op.create_table(
        "poll_schedules",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("started_at", recorder.db_types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("interval_ms", sa.BigInteger(), nullable=False),
        sa.Column("tolerance_ms", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.CheckConstraint("interval_ms > 0 AND tolerance_ms > 0", name=op.f("ck_poll_schedules_positive")),
        sa.CheckConstraint("source IN ('run', 'poll', 'inferred')", name=op.f("ck_poll_schedules_source")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_poll_schedules_account_id_accounts")),
        sa.PrimaryKeyConstraint("account_id", "started_at", name=op.f("pk_poll_schedules")),
    )
    gaps = op.create_table(
        "poll_gaps",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("end_at", recorder.db_types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("start_at", recorder.db_types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("tolerance_ms", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("end_at > start_at", name=op.f("ck_poll_gaps_ordered")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_poll_gaps_account_id_accounts")),
        sa.ForeignKeyConstraint(
            ["account_id", "end_at"],
            ["polls.account_id", "polls.finished_at"],
            name=op.f("fk_poll_gaps_account_id_polls"),
        ),
        sa.PrimaryKeyConstraint("account_id", "end_at", name=op.f("pk_poll_gaps")),
    )
    _backfill(op.get_bind(), schedules, gaps)


def downgrade() -> None:
    op.drop_table("poll_gaps")
    op.drop_table("poll_schedules")


def _backfill(connection: sa.Connection, schedules: sa.Table, gaps: sa.Table) -> None:
    polls = sa.table(
        "polls",
        sa.column("account_id", sa.Integer()),
        sa.column("finished_at", recorder.db_types.UtcDateTime()),
        sa.column("outcome", sa.String()),
    )
    first_polls = connection.execute(
        sa.select(polls.c.account_id, sa.func.min(polls.c.finished_at)).group_by(polls.c.account_id)
    ).all()
    for account_id, first_at in first_polls:
        # One account's ok polls in key order (a year of minute polls is ~25 MB here, once).
        times = connection.execute(
            sa.select(polls.c.finished_at)
            .where(polls.c.account_id == account_id, polls.c.outcome == "ok")
            .order_by(polls.c.finished_at)
        ).scalars().all()
        spacings = [_micros(later - earlier) for earlier, later in zip(times, times[1:])]
        interval_ms = max(1, round(statistics.median(spacings) / 1000)) if spacings else DEFAULT_INTERVAL_MS
        tolerance_ms = interval_ms * 3 // 2
        connection.execute(
            schedules.insert().values(
                account_id=account_id,
                started_at=first_at,
                interval_ms=interval_ms,
                tolerance_ms=tolerance_ms,
                source="inferred",
            )
        )
        # Integer microseconds: the spacing is compared exactly, as the writer compares it.
        rows = [
            {"account_id": account_id, "start_at": earlier, "end_at": later, "tolerance_ms": tolerance_ms}
            for earlier, later, spacing in zip(times, times[1:], spacings)
            if spacing > tolerance_ms * 1000
        ]
        for index in range(0, len(rows), BATCH):
            connection.execute(gaps.insert(), rows[index : index + BATCH])


def _micros(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
