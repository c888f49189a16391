"""The income ledger: every entry of `GET /fapi/v1/income`, stored exactly once.

    income_entries  one row per (account, income_type, tran_id, asset), amounts exact,
                    tran_id a BIGINT (Binance's long can exceed 2**53), unknown types
                    flagged by known_type = false, source = api / futures-export /
                    account-statement.

Revision ID: 0008
Revises: 0006
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import recorder.db_types

revision: str = "0008"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "income_entries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("time", recorder.db_types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("income_type", sa.String(length=64), nullable=False),
        sa.Column("tran_id", sa.BigInteger(), nullable=False),
        sa.Column("asset", sa.String(length=32), nullable=False),
        sa.Column("income", recorder.db_types.ExactDecimal(), nullable=False),
        sa.Column("symbol", sa.String(length=64), nullable=False),
        sa.Column("info", sa.Text(), nullable=False),
        sa.Column("trade_id", sa.String(length=64), nullable=False),
        sa.Column("known_type", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("recorded_at", recorder.db_types.UtcDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "source IN ('api', 'futures-export', 'account-statement')", name=op.f("ck_income_entries_source")
        ),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_income_entries_account_id_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_income_entries")),
        sa.UniqueConstraint(
            "account_id", "income_type", "tran_id", "asset", name=op.f("uq_income_entries_account_id_income_type_tran_id_asset")
        ),
    )
    op.create_index(
        "ix_income_entries_account_id_asset_time", "income_entries", ["account_id", "asset", "time"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_income_entries_account_id_asset_time", table_name="income_entries")
    op.drop_table("income_entries")
