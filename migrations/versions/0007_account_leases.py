"""Account leases: several `recorder run` processes on one PostgreSQL database share an accounts file.

    lease_holders   each live process, until its heartbeat expires
    account_leases  which process polls which account label, until the lease expires

Both exist on SQLite too (one schema everywhere), where a single process never uses them.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import recorder.db_types

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "lease_holders",
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("expires_at", recorder.db_types.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("holder", name=op.f("pk_lease_holders")),
    )
    op.create_table(
        "account_leases",
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=True),
        sa.Column("expires_at", recorder.db_types.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account", name=op.f("pk_account_leases")),
    )


def downgrade() -> None:
    op.drop_table("account_leases")
    op.drop_table("lease_holders")
