"""Derived (backfilled) wallet balances, kept apart from the observed ones.

    derived_balances  one row per income entry walked back from an asset's first observed
                      state (plus an opening row at the start of the covered span): the wallet
                      balance from `at` on, the entry it follows, the observed anchor, how and
                      when it was derived. Observed queries never read this table.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import recorder.db_types

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "derived_balances",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("asset", sa.String(length=32), nullable=False),
        sa.Column("at", recorder.db_types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("balance", recorder.db_types.ExactDecimal(), nullable=False),
        sa.Column("income_entry_id", BIG_ID, nullable=True),
        sa.Column("anchor_balance_id", BIG_ID, nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("derived_at", recorder.db_types.UtcDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("method IN ('ledger-walk')", name=op.f("ck_derived_balances_method")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_derived_balances_account_id_accounts")),
        sa.ForeignKeyConstraint(
            ["income_entry_id"], ["income_entries.id"], name=op.f("fk_derived_balances_income_entry_id_income_entries")
        ),
        sa.ForeignKeyConstraint(
            ["anchor_balance_id"], ["balances.id"], name=op.f("fk_derived_balances_anchor_balance_id_balances")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_derived_balances")),
        sa.UniqueConstraint(
            "account_id", "asset", "at", "income_entry_id",
            name=op.f("uq_derived_balances_account_id_asset_at_income_entry_id"),
        ),
    )
    op.create_index("ix_derived_balances_account_id_asset_at", "derived_balances", ["account_id", "asset", "at"])


def downgrade() -> None:
    op.drop_index("ix_derived_balances_account_id_asset_at", table_name="derived_balances")
    op.drop_table("derived_balances")
