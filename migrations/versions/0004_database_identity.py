"""Database identity: one row holding a random id, written when this migration first runs.

The spool and the writer lock were keyed by the spelling of the database URL, so another
spelling of the same file got its own lock and spool, and a shared spool folder could
replay one database's poll into another. They are now keyed by this id, which lives in the
database itself.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

import recorder.db_types

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    identity = op.create_table(
        "database_identity",
        sa.Column("singleton", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("database_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", recorder.db_types.UtcDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("singleton = 1", name=op.f("ck_database_identity_one_row")),
        sa.PrimaryKeyConstraint("singleton", name=op.f("pk_database_identity")),
    )
    op.bulk_insert(
        identity,
        [{"singleton": 1, "database_id": str(uuid.uuid4()), "created_at": datetime.now(timezone.utc)}],
    )


def downgrade() -> None:
    op.drop_table("database_identity")
