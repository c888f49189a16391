"""Initial schema: accounts, the poll log, per-asset balance states and their heads.

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 13:33:20.635345
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import recorder.db_types

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('accounts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=False),
    sa.Column('account_alias', sa.String(length=64), nullable=True),
    sa.Column('environment', sa.String(length=16), nullable=False),
    sa.Column('created_at', recorder.db_types.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_accounts')),
    sa.UniqueConstraint('label', name=op.f('uq_accounts_label'))
    )
    op.create_table('polls',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('uid', sa.String(length=36), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('started_at', recorder.db_types.UtcDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', recorder.db_types.UtcDateTime(timezone=True), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('endpoint', sa.String(length=32), nullable=False),
    sa.Column('asset_count', sa.Integer(), nullable=True),
    sa.Column('changed_count', sa.Integer(), nullable=True),
    sa.Column('error_class', sa.String(length=64), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('http_status', sa.Integer(), nullable=True),
    sa.Column('error_code', sa.Integer(), nullable=True),
    sa.Column('used_weight', sa.Integer(), nullable=True),
    sa.Column('recorded_at', recorder.db_types.UtcDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("outcome IN ('ok', 'failed')", name=op.f('ck_polls_outcome')),
    sa.CheckConstraint('finished_at >= started_at', name=op.f('ck_polls_finished_after_start')),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_polls_account_id_accounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_polls')),
    sa.UniqueConstraint('uid', name=op.f('uq_polls_uid'))
    )
    with op.batch_alter_table('polls', schema=None) as batch_op:
        batch_op.create_index('ix_polls_account_id_outcome_finished_at', ['account_id', 'outcome', 'finished_at'], unique=False)
        batch_op.create_index('ix_polls_account_id_started_at', ['account_id', 'started_at'], unique=False)

    op.create_table('balances',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('poll_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('asset', sa.String(length=32), nullable=False),
    sa.Column('observed_at', recorder.db_types.UtcDateTime(timezone=True), nullable=False),
    sa.Column('present', sa.Boolean(), nullable=False),
    sa.Column('balance', recorder.db_types.ExactDecimal(), nullable=True),
    sa.Column('cross_wallet_balance', recorder.db_types.ExactDecimal(), nullable=True),
    sa.Column('cross_un_pnl', recorder.db_types.ExactDecimal(), nullable=True),
    sa.Column('available_balance', recorder.db_types.ExactDecimal(), nullable=True),
    sa.Column('max_withdraw_amount', recorder.db_types.ExactDecimal(), nullable=True),
    sa.Column('margin_available', sa.Boolean(), nullable=True),
    sa.Column('update_time', recorder.db_types.UtcDateTime(timezone=True), nullable=True),
    sa.CheckConstraint('(present AND balance IS NOT NULL AND cross_wallet_balance IS NOT NULL AND cross_un_pnl IS NOT NULL AND available_balance IS NOT NULL AND max_withdraw_amount IS NOT NULL AND margin_available IS NOT NULL AND update_time IS NOT NULL) OR (NOT present AND balance IS NULL AND cross_wallet_balance IS NULL AND cross_un_pnl IS NULL AND available_balance IS NULL AND max_withdraw_amount IS NULL AND margin_available IS NULL AND update_time IS NULL)', name=op.f('ck_balances_amounts_match_presence')),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_balances_account_id_accounts')),
    sa.ForeignKeyConstraint(['poll_id'], ['polls.id'], name=op.f('fk_balances_poll_id_polls')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_balances')),
    sa.UniqueConstraint('poll_id', 'asset', name=op.f('uq_balances_poll_id_asset'))
    )
    with op.batch_alter_table('balances', schema=None) as batch_op:
        batch_op.create_index('ix_balances_account_id_asset_observed_at', ['account_id', 'asset', 'observed_at'], unique=False)
        batch_op.create_index('ix_balances_account_id_observed_at', ['account_id', 'observed_at'], unique=False)

    op.create_table('balance_heads',
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('asset', sa.String(length=32), nullable=False),
    sa.Column('balance_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_balance_heads_account_id_accounts')),
    sa.ForeignKeyConstraint(['balance_id'], ['balances.id'], name=op.f('fk_balance_heads_balance_id_balances')),
    sa.PrimaryKeyConstraint('account_id', 'asset', name=op.f('pk_balance_heads')),
    sa.UniqueConstraint('balance_id', name=op.f('uq_balance_heads_balance_id'))
    )


def downgrade() -> None:
    op.drop_table('balance_heads')
    with op.batch_alter_table('balances', schema=None) as batch_op:
        batch_op.drop_index('ix_balances_account_id_observed_at')
        batch_op.drop_index('ix_balances_account_id_asset_observed_at')

    op.drop_table('balances')
    with op.batch_alter_table('polls', schema=None) as batch_op:
        batch_op.drop_index('ix_polls_account_id_started_at')
        batch_op.drop_index('ix_polls_account_id_outcome_finished_at')

    op.drop_table('polls')
    op.drop_table('accounts')
