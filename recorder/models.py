"""The tables: accounts, the poll log, per-asset balance states and their heads."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
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
# A poll stored later than this after it finished keeps its recorded_at (see Poll).
RECORDED_LATE = timedelta(seconds=1)


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
    """One attempt to read the balances, successful or not: the proof of what was seen when.

    An idle account adds one of these a minute for years and nothing else, so the row is
    kept small: its key is (account_id, finished_at), there is no surrogate id (on SQLite
    the table is WITHOUT ROWID, so the key is the row), the endpoint is `v2`/`v3`, and
    `recorded_at` is only set when the row reached the database late.
    """

    __tablename__ = "polls"
    __table_args__ = (
        CheckConstraint("outcome IN ('ok', 'failed')", name="outcome"),
        CheckConstraint("endpoint IN ('v2', 'v3')", name="endpoint"),
        CheckConstraint("finished_at >= started_at", name="finished_after_start"),
        # The poll's identity: one writer per account polls one at a time, so an account never
        # finishes two polls in the same microsecond; a poll replayed from the spool or retried
        # conflicts on this key and is stored once. A changed state's balances rows carry it as
        # their observed_at.
        PrimaryKeyConstraint("account_id", "finished_at"),
        {"sqlite_with_rowid": False},
    )

    # Timestamps first: on PostgreSQL an int before them would cost 4 bytes of padding a row.
    finished_at: Mapped[datetime]
    started_at: Mapped[datetime]
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    # X-MBX-USED-WEIGHT-1M after this poll: the IP's weight used in the current minute.
    used_weight: Mapped[int | None]
    asset_count: Mapped[int | None]
    changed_count: Mapped[int | None]
    outcome: Mapped[str] = mapped_column(String(16))
    # Which balance endpoint answered: v2 = /fapi/v2/balance, v3 = /fapi/v3/balance.
    endpoint: Mapped[str] = mapped_column(String(8))
    # When the row reached the database, set only when that was more than RECORDED_LATE
    # after finished_at: a poll kept in the local spool during a database outage, or one
    # that waited for a lock. NULL means stored at once.
    recorded_at: Mapped[datetime | None]
    error_class: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    http_status: Mapped[int | None]
    error_code: Mapped[int | None]


class Balance(Base):
    """A per-asset state, written only when it differs from the asset's previous state.

    The poll log proves an unchanged state was still seen; a row with present=false marks
    an asset that vanished from the response (its amounts are NULL, never invented zeros).
    """

    __tablename__ = "balances"
    __table_args__ = (
        UniqueConstraint("account_id", "asset", "observed_at"),
        # The poll that first saw this state: a state is only ever stored with its poll.
        ForeignKeyConstraint(["account_id", "observed_at"], ["polls.account_id", "polls.finished_at"]),
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
    asset: Mapped[str] = mapped_column(String(32))
    # The finished_at of the poll that first saw this state.
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


class DatabaseIdentity(Base):
    """The database's own id, written once when migration 0004 first runs on it.

    The spool and the writer lock are keyed by this id instead of the URL's spelling: two
    spellings of one database share it, and a poll spooled for one database is never replayed
    into another. A copy of the file keeps the id (it is the same history until it diverges).
    """

    __tablename__ = "database_identity"
    __table_args__ = (CheckConstraint("singleton = 1", name="one_row"),)

    # Always 1: the table holds exactly one row.
    singleton: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    # A random UUID (36 characters, lower-case hex with dashes).
    database_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime]


SCHEDULE_SOURCES = ("run", "poll", "inferred")


class PollSchedule(Base):
    """The poll interval a recorder declared for an account, from `started_at` until the next row.

    Written by the writer (`recorder run`, or `recorder poll --interval`), so every reader
    judges gaps by the schedule the polls were taken on, not by its own environment.
    `tolerance_ms` is stored beside the interval so the rule that derives it can change
    without rewriting history.
    """

    __tablename__ = "poll_schedules"
    __table_args__ = (
        CheckConstraint("source IN ('run', 'poll', 'inferred')", name="source"),
        CheckConstraint("interval_ms > 0 AND tolerance_ms > 0", name="positive"),
    )

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(primary_key=True)
    interval_ms: Mapped[int] = mapped_column(BigInteger)
    # A stretch longer than this after a successful poll without the next one is a gap.
    tolerance_ms: Mapped[int] = mapped_column(BigInteger)
    # run / poll: declared by that command; inferred: derived from the polls by migration 0005.
    source: Mapped[str] = mapped_column(String(16))


class PollGap(Base):
    """Two consecutive successful polls further apart than the schedule allowed: a gap.

    Written in the transaction of the poll that ends it, so `recorder gaps` reads gaps
    instead of scanning every poll. `start_at` and `end_at` are those polls' finished_at;
    the next poll was due `tolerance_ms` after `start_at`.
    """

    __tablename__ = "poll_gaps"
    __table_args__ = (
        CheckConstraint("end_at > start_at", name="ordered"),
        # A gap is found by its end: the key of the successful poll that ended it.
        PrimaryKeyConstraint("account_id", "end_at"),
        ForeignKeyConstraint(["account_id", "end_at"], ["polls.account_id", "polls.finished_at"]),
    )

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    end_at: Mapped[datetime]
    start_at: Mapped[datetime]
    tolerance_ms: Mapped[int] = mapped_column(BigInteger)


class LeaseHolder(Base):
    """A `recorder run` process sharing a PostgreSQL database's accounts file, alive until `expires_at`.

    The live holders' count sets each one's share of the accounts (recorder.scheduling).
    """

    __tablename__ = "lease_holders"

    # "pid N on HOST #random": unique per process start.
    holder: Mapped[str] = mapped_column(String(128), primary_key=True)
    expires_at: Mapped[datetime]


class AccountLease(Base):
    """Which process polls an account of the accounts file, until `expires_at` (PostgreSQL's clock).

    By label, not accounts.id: a lease exists before the account's first poll creates its row.
    An expired lease, or one without a holder, is free for any live process to take.
    """

    __tablename__ = "account_leases"

    account: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128))
    expires_at: Mapped[datetime]


class ExportCursor(Base):
    """Where an incremental export (`recorder export --incremental NAME`) stopped, per account.

    `last_balance_id` is the newest balances row the last file held: ids follow the order
    rows were stored, so the next file starts after it and a row that arrived late (observed
    earlier than rows already exported) is still exported once. `what` and `assets` are the
    export's own options; running the name with others is refused rather than skipping rows.
    """

    __tablename__ = "export_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    what: Mapped[str] = mapped_column(String(16))
    # The --asset filter, sorted and comma-separated; '' for every asset.
    assets: Mapped[str] = mapped_column(Text)
    last_balance_id: Mapped[int] = mapped_column(BigInteger)
    exported_at: Mapped[datetime]


INCOME_SOURCES = ("api", "futures-export", "account-statement")


class IncomeEntry(Base):
    """One entry of Binance's income ledger (`GET /fapi/v1/income`), stored exactly once.

    Binance's key: `tranId` is unique only within an `incomeType` ("trandId is unique in the
    same incomeType for a user"), and an automatic exchange or coin swap moves two assets,
    possibly under one id; so an entry is (account, income_type, tran_id, asset). `tran_id`
    is a Java long that can exceed 2**53: an integer column, never a float. An income type
    unknown when it was stored keeps `known_type` false: stored and flagged, never dropped.
    `source` says where the entry came from (the API, or a file the user downloaded).
    """

    __tablename__ = "income_entries"
    __table_args__ = (
        UniqueConstraint("account_id", "income_type", "tran_id", "asset"),
        # Reconciliation and the ledger listing read one account's entries per asset in time order.
        Index("ix_income_entries_account_id_asset_time", "account_id", "asset", "time"),
        CheckConstraint("source IN ('api', 'futures-export', 'account-statement')", name="source"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    # Binance's `time`: when the exchange booked the entry (millisecond precision).
    time: Mapped[datetime]
    income_type: Mapped[str] = mapped_column(String(64))
    tran_id: Mapped[int] = mapped_column(BigInteger)
    asset: Mapped[str] = mapped_column(String(32))
    # Signed: a commission or a funding fee paid is negative.
    income: Mapped[Decimal]
    # Binance sends "" for none; kept as sent.
    symbol: Mapped[str] = mapped_column(String(64))
    info: Mapped[str] = mapped_column(Text)
    trade_id: Mapped[str] = mapped_column(String(64))
    known_type: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(32))
    # When the entry reached the database.
    recorded_at: Mapped[datetime]


DERIVED_METHODS = ("ledger-walk",)


class DerivedBalance(Base):
    """A wallet balance derived (backfilled) from the income ledger, never an observation.

    `recorder backfill` walks an asset's income entries backwards from its first observed state
    (`anchor_balance_id`): the balance before an entry is the balance after it minus its income.
    A row is the wallet balance from `at` on: after the entry `income_entry_id` was booked at `at`,
    or, with no entry, the opening balance at the start of the span the ledger covers. Only
    `balance` can be derived (the ledger says nothing of cross wallet, unrealized PnL or available
    balance). Kept apart from `balances` so that no observed query can ever return one.
    """

    __tablename__ = "derived_balances"
    __table_args__ = (
        UniqueConstraint("account_id", "asset", "at", "income_entry_id"),
        Index("ix_derived_balances_account_id_asset_at", "account_id", "asset", "at"),
        CheckConstraint("method IN ('ledger-walk')", name="method"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    asset: Mapped[str] = mapped_column(String(32))
    # From this instant on the wallet balance was `balance` (until the next derived or observed state).
    at: Mapped[datetime]
    balance: Mapped[Decimal]
    # The entry booked at `at` that this balance follows; NULL for the opening row of the span.
    income_entry_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("income_entries.id"))
    # The observed state the walk started from: the asset's first recorded balance.
    anchor_balance_id: Mapped[int] = mapped_column(BigId, ForeignKey("balances.id"))
    method: Mapped[str] = mapped_column(String(16))
    derived_at: Mapped[datetime]


LEDGER_SYNC_OUTCOMES = ("ok", "failed")


class LedgerSync(Base):
    """One window of one ledger sync attempt: what was asked, what came back, how it ended.

    An `ok` row is written in the same transaction as the window's entries, so it proves every
    entry Binance served for [window_start, window_end] is stored; the union of `ok` windows is
    the ledger's coverage (view `ledger_coverage`), and time outside it is a gap
    (view `ledger_gaps`). A `failed` row stores nothing else: its window stays uncovered until a
    later sync fetches it again.
    """

    __tablename__ = "ledger_syncs"
    __table_args__ = (
        CheckConstraint("outcome IN ('ok', 'failed')", name="outcome"),
        CheckConstraint("window_end >= window_start", name="window_ordered"),
        CheckConstraint("finished_at >= started_at", name="finished_after_start"),
        Index("ix_ledger_syncs_account_id_window_end", "account_id", "window_end"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    # Groups the windows of one attempt (a uuid4).
    attempt_id: Mapped[str] = mapped_column(String(36))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    # The window asked for, both ends inclusive, at Binance's millisecond precision.
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    outcome: Mapped[str] = mapped_column(String(16))
    pages: Mapped[int]
    requests: Mapped[int]
    entries_fetched: Mapped[int]
    entries_new: Mapped[int]
    # X-MBX-USED-WEIGHT-1M after the window's last request: the IP's weight used in that minute.
    used_weight: Mapped[int | None] = mapped_column(BigInteger)
    error_class: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    http_status: Mapped[int | None]
    error_code: Mapped[int | None] = mapped_column(BigInteger)
