"""The tables, in SQLAlchemy Core: the one definition of the schema.

The write path (the poll, the gap bookkeeping, the ledger sync, locks and leases) uses these
tables directly; recorder.models maps its ORM classes onto these same Table objects for the
read side. So `recorder run` never imports sqlalchemy.orm, which a service that only issues
Core statements would otherwise keep in memory for its whole life (about 6 MB), and there is
still one definition for Alembic, the ORM and the hot path alike.

Nullability follows the ORM's rule for an annotated column (`Mapped[X | None]` is NULL-able,
`Mapped[X]` is not), so the migrations, `alembic check` and the mapped classes all agree.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

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
# A poll stored later than this after it finished keeps its recorded_at (see the polls table).
RECORDED_LATE = timedelta(seconds=1)

SCHEDULE_SOURCES = ("run", "poll", "inferred")
INCOME_SOURCES = ("api", "futures-export", "account-statement")
DERIVED_METHODS = ("ledger-walk",)
LEDGER_SYNC_OUTCOMES = ("ok", "failed")

# Constraint names are stable so migrations can refer to them.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _required(name: str, type_: object, *args: object, **kwargs: object) -> Column:
    return Column(name, type_, *args, nullable=False, **kwargs)


def _optional(name: str, type_: object, *args: object, **kwargs: object) -> Column:
    return Column(name, type_, *args, nullable=True, **kwargs)


# One Binance futures account, by our label; its alias is what Binance reports.
accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True),
    _required("label", String(64), unique=True),
    # Set from the first successful poll; a later poll reporting another alias is refused,
    # so two keys can never write into one history.
    _optional("account_alias", String(64)),
    # live / testnet / local / custom: demo and testnet data never mix into a live account.
    _required("environment", String(16)),
    _required("created_at", UtcDateTime()),
)

# One attempt to read the balances, successful or not: the proof of what was seen when.
# An idle account adds one of these a minute for years and nothing else, so the row is kept
# small: its key is (account_id, finished_at), there is no surrogate id (on SQLite the table
# is WITHOUT ROWID, so the key is the row), the endpoint is `v2`/`v3`, and `recorded_at` is
# only set when the row reached the database late.
polls = Table(
    "polls",
    metadata,
    # Timestamps first: on PostgreSQL an int before them would cost 4 bytes of padding a row.
    _required("finished_at", UtcDateTime()),
    _required("started_at", UtcDateTime()),
    _required("account_id", Integer, ForeignKey("accounts.id")),
    # X-MBX-USED-WEIGHT-1M after this poll: the IP's weight used in the current minute.
    _optional("used_weight", Integer),
    _optional("asset_count", Integer),
    _optional("changed_count", Integer),
    _required("outcome", String(16)),
    # Which balance endpoint answered: v2 = /fapi/v2/balance, v3 = /fapi/v3/balance.
    _required("endpoint", String(8)),
    # When the row reached the database, set only when that was more than RECORDED_LATE after
    # finished_at: a poll kept in the local spool during a database outage, or one that waited
    # for a lock. NULL means stored at once.
    _optional("recorded_at", UtcDateTime()),
    _optional("error_class", String(64)),
    _optional("error_message", Text),
    _optional("http_status", Integer),
    _optional("error_code", Integer),
    CheckConstraint("outcome IN ('ok', 'failed')", name="outcome"),
    CheckConstraint("endpoint IN ('v2', 'v3')", name="endpoint"),
    CheckConstraint("finished_at >= started_at", name="finished_after_start"),
    # The poll's identity: one writer per account polls one at a time, so an account never
    # finishes two polls in the same microsecond; a poll replayed from the spool or retried
    # conflicts on this key and is stored once. A changed state's balances rows carry it as
    # their observed_at.
    PrimaryKeyConstraint("account_id", "finished_at"),
    # On SQLite the table is WITHOUT ROWID (migration 0003 makes it so; the migrations are the
    # schema, these definitions never create it). Declaring it here would have SQLAlchemy load
    # its SQLite dialect in a PostgreSQL service for the option's name alone.
)

# A per-asset state, written only when it differs from the asset's previous state. The poll
# log proves an unchanged state was still seen; a row with present=false marks an asset that
# vanished from the response (its amounts are NULL, never invented zeros).
balances = Table(
    "balances",
    metadata,
    Column("id", BigId, primary_key=True),
    _required("account_id", Integer, ForeignKey("accounts.id")),
    _required("asset", String(32)),
    # The finished_at of the poll that first saw this state.
    _required("observed_at", UtcDateTime()),
    _required("present", Boolean),
    _optional("balance", ExactDecimal()),
    _optional("cross_wallet_balance", ExactDecimal()),
    _optional("cross_un_pnl", ExactDecimal()),
    _optional("available_balance", ExactDecimal()),
    _optional("max_withdraw_amount", ExactDecimal()),
    _optional("margin_available", Boolean),
    _optional("update_time", UtcDateTime()),
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

# The latest balances row per account and asset. Derived from `balances`, kept because
# "latest per asset" would otherwise scan an account's whole history on every poll (SQLite and
# PostgreSQL have no loose index scan); it also lists every asset an account ever had, for
# per-asset as-of probes.
balance_heads = Table(
    "balance_heads",
    metadata,
    Column("account_id", Integer, ForeignKey("accounts.id"), primary_key=True),
    Column("asset", String(32), primary_key=True),
    _required("balance_id", BigId, ForeignKey("balances.id"), unique=True),
)

# The database's own id, written once when migration 0004 first runs on it. The spool and the
# writer lock are keyed by this id instead of the URL's spelling: two spellings of one database
# share it, and a poll spooled for one database is never replayed into another. A copy of the
# file keeps the id (it is the same history until it diverges).
database_identity = Table(
    "database_identity",
    metadata,
    # Always 1: the table holds exactly one row.
    Column("singleton", Integer, primary_key=True, autoincrement=False),
    # A random UUID (36 characters, lower-case hex with dashes).
    _required("database_id", String(36)),
    _required("created_at", UtcDateTime()),
    CheckConstraint("singleton = 1", name="one_row"),
)

# The poll interval a recorder declared for an account, from `started_at` until the next row.
# Written by the writer (`recorder run`, or `recorder poll --interval`), so every reader judges
# gaps by the schedule the polls were taken on, not by its own environment. `tolerance_ms` is
# stored beside the interval so the rule that derives it can change without rewriting history.
poll_schedules = Table(
    "poll_schedules",
    metadata,
    Column("account_id", Integer, ForeignKey("accounts.id"), primary_key=True),
    Column("started_at", UtcDateTime(), primary_key=True),
    _required("interval_ms", BigInteger),
    # A stretch longer than this after a successful poll without the next one is a gap.
    _required("tolerance_ms", BigInteger),
    # run / poll: declared by that command; inferred: derived from the polls by migration 0005.
    _required("source", String(16)),
    CheckConstraint("source IN ('run', 'poll', 'inferred')", name="source"),
    CheckConstraint("interval_ms > 0 AND tolerance_ms > 0", name="positive"),
)

# Two consecutive successful polls further apart than the schedule allowed: a gap. Written in
# the transaction of the poll that ends it, so `recorder gaps` reads gaps instead of scanning
# every poll. `start_at` and `end_at` are those polls' finished_at; the next poll was due
# `tolerance_ms` after `start_at`.
poll_gaps = Table(
    "poll_gaps",
    metadata,
    _required("account_id", Integer, ForeignKey("accounts.id")),
    _required("end_at", UtcDateTime()),
    _required("start_at", UtcDateTime()),
    _required("tolerance_ms", BigInteger),
    CheckConstraint("end_at > start_at", name="ordered"),
    # A gap is found by its end: the key of the successful poll that ended it.
    PrimaryKeyConstraint("account_id", "end_at"),
    ForeignKeyConstraint(["account_id", "end_at"], ["polls.account_id", "polls.finished_at"]),
)

# A `recorder run` process sharing a PostgreSQL database's accounts file, alive until
# `expires_at`. The live holders' count sets each one's share of the accounts (recorder.scheduling).
lease_holders = Table(
    "lease_holders",
    metadata,
    # "pid N on HOST #random": unique per process start.
    Column("holder", String(128), primary_key=True),
    _required("expires_at", UtcDateTime()),
)

# Which process polls an account of the accounts file, until `expires_at` (PostgreSQL's clock).
# By label, not accounts.id: a lease exists before the account's first poll creates its row.
# An expired lease, or one without a holder, is free for any live process to take.
account_leases = Table(
    "account_leases",
    metadata,
    Column("account", String(64), primary_key=True),
    _optional("holder", String(128)),
    _required("expires_at", UtcDateTime()),
)

# Where an incremental export (`recorder export --incremental NAME`) stopped, per account.
# `last_balance_id` is the newest balances row the last file held: ids follow the order rows
# were stored, so the next file starts after it and a row that arrived late (observed earlier
# than rows already exported) is still exported once. `what` and `assets` are the export's own
# options; running the name with others is refused rather than skipping rows.
export_cursors = Table(
    "export_cursors",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), primary_key=True),
    _required("what", String(16)),
    # The --asset filter, sorted and comma-separated; '' for every asset.
    _required("assets", Text),
    _required("last_balance_id", BigInteger),
    _required("exported_at", UtcDateTime()),
)

# One entry of Binance's income ledger (`GET /fapi/v1/income`), stored exactly once. Binance's
# key: `tranId` is unique only within an `incomeType` ("trandId is unique in the same
# incomeType for a user"), and an automatic exchange or coin swap moves two assets, possibly
# under one id; so an entry is (account, income_type, tran_id, asset). `tran_id` is a Java long
# that can exceed 2**53: an integer column, never a float. An income type unknown when it was
# stored keeps `known_type` false: stored and flagged, never dropped. `source` says where the
# entry came from (the API, or a file the user downloaded).
income_entries = Table(
    "income_entries",
    metadata,
    Column("id", BigId, primary_key=True),
    _required("account_id", Integer, ForeignKey("accounts.id")),
    # Binance's `time`: when the exchange booked the entry (millisecond precision).
    _required("time", UtcDateTime()),
    _required("income_type", String(64)),
    _required("tran_id", BigInteger),
    _required("asset", String(32)),
    # Signed: a commission or a funding fee paid is negative.
    _required("income", ExactDecimal()),
    # Binance sends "" for none; kept as sent.
    _required("symbol", String(64)),
    _required("info", Text),
    _required("trade_id", String(64)),
    _required("known_type", Boolean),
    _required("source", String(32)),
    # When the entry reached the database.
    _required("recorded_at", UtcDateTime()),
    UniqueConstraint("account_id", "income_type", "tran_id", "asset"),
    # Reconciliation and the ledger listing read one account's entries per asset in time order.
    Index("ix_income_entries_account_id_asset_time", "account_id", "asset", "time"),
    CheckConstraint("source IN ('api', 'futures-export', 'account-statement')", name="source"),
)

# A wallet balance derived (backfilled) from the income ledger, never an observation.
# `recorder backfill` walks an asset's income entries backwards from its first observed state
# (`anchor_balance_id`): the balance before an entry is the balance after it minus its income.
# A row is the wallet balance from `at` on: after the entry `income_entry_id` was booked at
# `at`, or, with no entry, the opening balance at the start of the span the ledger covers. Only
# `balance` can be derived (the ledger says nothing of cross wallet, unrealized PnL or available
# balance). Kept apart from `balances` so that no observed query can ever return one.
derived_balances = Table(
    "derived_balances",
    metadata,
    Column("id", BigId, primary_key=True),
    _required("account_id", Integer, ForeignKey("accounts.id")),
    _required("asset", String(32)),
    # From this instant on the wallet balance was `balance` (until the next derived or observed state).
    _required("at", UtcDateTime()),
    _required("balance", ExactDecimal()),
    # The entry booked at `at` that this balance follows; NULL for the opening row of the span.
    _optional("income_entry_id", BigId, ForeignKey("income_entries.id")),
    # The observed state the walk started from: the asset's first recorded balance.
    _required("anchor_balance_id", BigId, ForeignKey("balances.id")),
    _required("method", String(16)),
    _required("derived_at", UtcDateTime()),
    UniqueConstraint("account_id", "asset", "at", "income_entry_id"),
    Index("ix_derived_balances_account_id_asset_at", "account_id", "asset", "at"),
    CheckConstraint("method IN ('ledger-walk')", name="method"),
)

# One window of one ledger sync attempt: what was asked, what came back, how it ended. An `ok`
# row is written in the same transaction as the window's entries, so it proves every entry
# Binance served for [window_start, window_end] is stored; the union of `ok` windows is the
# ledger's coverage (view `ledger_coverage`), and time outside it is a gap (view
# `ledger_gaps`). A `failed` row stores nothing else: its window stays uncovered until a later
# sync fetches it again.
ledger_syncs = Table(
    "ledger_syncs",
    metadata,
    Column("id", BigId, primary_key=True),
    _required("account_id", Integer, ForeignKey("accounts.id")),
    # Groups the windows of one attempt (a uuid4).
    _required("attempt_id", String(36)),
    _required("started_at", UtcDateTime()),
    _required("finished_at", UtcDateTime()),
    # The window asked for, both ends inclusive, at Binance's millisecond precision.
    _required("window_start", UtcDateTime()),
    _required("window_end", UtcDateTime()),
    _required("outcome", String(16)),
    _required("pages", Integer),
    _required("requests", Integer),
    _required("entries_fetched", Integer),
    _required("entries_new", Integer),
    # X-MBX-USED-WEIGHT-1M after the window's last request: the IP's weight used in that minute.
    _optional("used_weight", BigInteger),
    _optional("error_class", String(64)),
    _optional("error_message", Text),
    _optional("http_status", Integer),
    _optional("error_code", BigInteger),
    CheckConstraint("outcome IN ('ok', 'failed')", name="outcome"),
    CheckConstraint("window_end >= window_start", name="window_ordered"),
    CheckConstraint("finished_at >= started_at", name="finished_after_start"),
    Index("ix_ledger_syncs_account_id_window_end", "account_id", "window_end"),
)
