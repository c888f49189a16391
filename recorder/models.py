"""The tables: accounts, the poll log, per-asset balance states and their heads."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from recorder.db_types import ExactDecimal, UtcDateTime

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias), PostgreSQL wants
# BIGINT for tables that grow by a row a minute for years.
BigId = BigInteger().with_variant(Integer(), "sqlite")

AMOUNT_FIELDS = (
    "balance",
    "cross_wallet_balance",
    "cross_un_pnl",
    "available_balance",
    "max_withdraw_amount",
)
STATE_FIELDS = (*AMOUNT_FIELDS, "margin_available", "update_time")

POLL_OK = "ok"
POLL_FAILED = "failed"


class Base(DeclarativeBase):
    """Declarative base: constraint names are stable so migrations can refer to them."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {Decimal: ExactDecimal(), datetime: UtcDateTime()}


class Account(Base):
    """One Binance futures account, by our label; its alias is what Binance reports."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(64), unique=True)
    # Set from the first successful poll; a later poll reporting another alias is refused,
    # so two keys can never write into one history.
    account_alias: Mapped[str | None] = mapped_column(String(64))
    # live / testnet / local / custom: demo and testnet data never mix into a live account.
    environment: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]


class Poll(Base):
    """One attempt to read the balances, successful or not: the proof of what was seen when."""

    __tablename__ = "polls"
    __table_args__ = (
        CheckConstraint("outcome IN ('ok', 'failed')", name="outcome"),
        CheckConstraint("finished_at >= started_at", name="finished_after_start"),
        Index("ix_polls_account_id_started_at", "account_id", "started_at"),
        Index("ix_polls_account_id_outcome_finished_at", "account_id", "outcome", "finished_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # Client-generated key: a poll replayed from a spool or retried is stored once.
    uid: Mapped[str] = mapped_column(String(36), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    outcome: Mapped[str] = mapped_column(String(16))
    endpoint: Mapped[str] = mapped_column(String(32))
    asset_count: Mapped[int | None]
    changed_count: Mapped[int | None]
    error_class: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    http_status: Mapped[int | None]
    error_code: Mapped[int | None]
    # X-MBX-USED-WEIGHT-1M after this poll: the IP's weight used in the current minute.
    used_weight: Mapped[int | None]
    # When the row reached the database: later than finished_at for a poll replayed from
    # the local spool after a database outage.
    recorded_at: Mapped[datetime]


class Balance(Base):
    """A per-asset state, written only when it differs from the asset's previous state.

    The poll log proves an unchanged state was still seen; a row with present=false marks
    an asset that vanished from the response (its amounts are NULL, never invented zeros).
    """

    __tablename__ = "balances"
    __table_args__ = (
        UniqueConstraint("poll_id", "asset"),
        Index("ix_balances_account_id_asset_observed_at", "account_id", "asset", "observed_at"),
        Index("ix_balances_account_id_observed_at", "account_id", "observed_at"),
        CheckConstraint(
            "(present AND balance IS NOT NULL AND cross_wallet_balance IS NOT NULL"
            " AND cross_un_pnl IS NOT NULL AND available_balance IS NOT NULL"
            " AND max_withdraw_amount IS NOT NULL AND margin_available IS NOT NULL"
            " AND update_time IS NOT NULL)"
            " OR (NOT present AND balance IS NULL AND cross_wallet_balance IS NULL"
            " AND cross_un_pnl IS NULL AND available_balance IS NULL"
            " AND max_withdraw_amount IS NULL AND margin_available IS NULL"
            " AND update_time IS NULL)",
            name="amounts_match_presence",
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    poll_id: Mapped[int] = mapped_column(ForeignKey("polls.id"))
    asset: Mapped[str] = mapped_column(String(32))
    observed_at: Mapped[datetime]
    present: Mapped[bool] = mapped_column(Boolean)
    balance: Mapped[Decimal | None]
    cross_wallet_balance: Mapped[Decimal | None]
    cross_un_pnl: Mapped[Decimal | None]
    available_balance: Mapped[Decimal | None]
    max_withdraw_amount: Mapped[Decimal | None]
    margin_available: Mapped[bool | None]
    update_time: Mapped[datetime | None]


class BalanceHead(Base):
    """The latest balances row per account and asset.

    Derived from `balances`, kept because "latest per asset" would otherwise scan an
    account's whole history on every poll (SQLite and PostgreSQL have no loose index scan);
    it also lists every asset an account ever had, for per-asset as-of probes.
    """

    __tablename__ = "balance_heads"

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    asset: Mapped[str] = mapped_column(String(32), primary_key=True)
    balance_id: Mapped[int] = mapped_column(BigId, ForeignKey("balances.id"), unique=True)
