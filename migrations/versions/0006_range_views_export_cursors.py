"""balance_changes costs what the range asked for costs; export cursors for incremental exports.

`balance_changes` computed each row's previous state with LAG() over each asset's whole
history, so a filter on `observed_at` (or on the account alone) could not reach the scan:
every example query read the account's every row (3.5-4 s on a year). It now finds the
previous state with one probe of the unique index (account_id, asset, observed_at) per row
it returns, and the filters of a query on the view narrow the scan of `balances` itself. Same
columns, same meaning, same order of columns.

`export_cursors` keeps, per export name and account, the last balances row id an incremental
export wrote (recorder.models.ExportCursor).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import recorder.db_types

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AMOUNTS = ("balance", "cross_wallet_balance", "cross_un_pnl", "available_balance", "max_withdraw_amount")


def _columns(collate: str, subtract: str) -> str:
    return ",\n    ".join(
        f"b.{name}{collate} AS {name},\n"
        f"    p.{name}{collate} AS previous_{name},\n"
        f"    {subtract.format(new=f'b.{name}', old=f'p.{name}')}{collate} AS delta_{name}"
        for name in AMOUNTS
    )


def _probed_changes(collate: str, subtract: str, previous_join: str) -> str:
    return f"""
CREATE VIEW balance_changes AS
SELECT
    a.label AS account,
    b.account_id,
    b.asset,
    b.observed_at,
    CASE WHEN NOT b.present THEN 'vanished'
         WHEN p.present THEN 'changed'
         ELSE 'appeared' END AS kind,
    b.present,
    {_columns(collate, subtract)},
    b.margin_available,
    p.margin_available AS previous_margin_available,
    b.update_time,
    p.observed_at AS previous_observed_at
FROM balances b
JOIN accounts a ON a.id = b.account_id
{previous_join}
"""


# The previous state: the asset's latest row observed before this one, one seek on the
# unique index (account_id, asset, observed_at).
SQLITE_PREVIOUS = """LEFT JOIN balances p ON p.id = (
    SELECT b2.id FROM balances b2
     WHERE b2.account_id = b.account_id AND b2.asset = b.asset AND b2.observed_at < b.observed_at
     ORDER BY b2.observed_at DESC LIMIT 1)"""
POSTGRES_PREVIOUS = """LEFT JOIN LATERAL (
    SELECT b2.* FROM balances b2
     WHERE b2.account_id = b.account_id AND b2.asset = b.asset AND b2.observed_at < b.observed_at
     ORDER BY b2.observed_at DESC LIMIT 1) p ON true"""


def _windowed_changes(collate: str, subtract: str) -> str:
    # 0003's definition, for downgrade (a migration is a frozen snapshot: copied, not imported).
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
    c.previous_observed_at
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


def _dialect_parts() -> tuple[str, str]:
    if op.get_bind().dialect.name == "sqlite":
        return " COLLATE decimal", "decimal_sub({new}, {old})"
    return "", "({new} - {old})"


def upgrade() -> None:
    collate, subtract = _dialect_parts()
    previous = SQLITE_PREVIOUS if op.get_bind().dialect.name == "sqlite" else POSTGRES_PREVIOUS
    op.execute("DROP VIEW IF EXISTS balance_changes")
    op.execute(_probed_changes(collate, subtract, previous))
    op.create_table(
        "export_cursors",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("what", sa.String(length=16), nullable=False),
        sa.Column("assets", sa.Text(), nullable=False),
        sa.Column("last_balance_id", sa.BigInteger(), nullable=False),
        sa.Column("exported_at", recorder.db_types.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_export_cursors_account_id_accounts")),
        sa.PrimaryKeyConstraint("name", "account_id", name=op.f("pk_export_cursors")),
    )


def downgrade() -> None:
    op.drop_table("export_cursors")
    op.execute("DROP VIEW IF EXISTS balance_changes")
    op.execute(_windowed_changes(*_dialect_parts()))
