"""The ORM classes of the read side, mapped onto recorder.tables (the one schema definition).

Each class maps the Core table of the same name (`__table__`); the annotations are for typing
only, the columns come from the table. The write path uses recorder.tables directly, so the
service never imports sqlalchemy.orm.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy.orm import DeclarativeBase, Mapped

from recorder import tables
from recorder.tables import (  # noqa: F401 - re-exported: the read side and tests name them here
    AMOUNT_FIELDS,
    DERIVED_METHODS,
    INCOME_SOURCES,
    LEDGER_SYNC_OUTCOMES,
    POLL_FAILED,
    POLL_OK,
    RECORDED_LATE,
    SCHEDULE_SOURCES,
    STATE_FIELDS,
    BigId,
)


class Base(DeclarativeBase):
    """Declarative base over recorder.tables' metadata (its naming convention included)."""

    metadata = tables.metadata


class Account(Base):
    """One Binance futures account, by our label; its alias is what Binance reports."""

    __table__ = tables.accounts

    id: Mapped[int]
    label: Mapped[str]
    # Set from the first successful poll; a later poll reporting another alias is refused,
    # so two keys can never write into one history.
    account_alias: Mapped[str | None]
    # live / testnet / local / custom: demo and testnet data never mix into a live account.
    environment: Mapped[str]
    created_at: Mapped[datetime]


class Poll(Base):
    """One attempt to read the balances, successful or not: the proof of what was seen when.

    An idle account adds one of these a minute for years and nothing else, so the row is
    kept small: its key is (account_id, finished_at), there is no surrogate id (on SQLite
    the table is WITHOUT ROWID, so the key is the row), the endpoint is `v2`/`v3`, and
    `recorded_at` is only set when the row reached the database late.
    """

    __table__ = tables.polls

    # Timestamps first: on PostgreSQL an int before them would cost 4 bytes of padding a row.
    finished_at: Mapped[datetime]
    started_at: Mapped[datetime]
    account_id: Mapped[int]
    # X-MBX-USED-WEIGHT-1M after this poll: the IP's weight used in the current minute.
    used_weight: Mapped[int | None]
    asset_count: Mapped[int | None]
    changed_count: Mapped[int | None]
    outcome: Mapped[str]
    # Which balance endpoint answered: v2 = /fapi/v2/balance, v3 = /fapi/v3/balance.
    endpoint: Mapped[str]
    # When the row reached the database, set only when that was more than RECORDED_LATE
    # after finished_at: a poll kept in the local spool during a database outage, or one
    # that waited for a lock. NULL means stored at once.
    recorded_at: Mapped[datetime | None]
    error_class: Mapped[str | None]
    error_message: Mapped[str | None]
    http_status: Mapped[int | None]
    error_code: Mapped[int | None]


class Balance(Base):
    """A per-asset state, written only when it differs from the asset's previous state.

    The poll log proves an unchanged state was still seen; a row with present=false marks
    an asset that vanished from the response (its amounts are NULL, never invented zeros).
    """

    __table__ = tables.balances

    id: Mapped[int]
    account_id: Mapped[int]
    asset: Mapped[str]
    # The finished_at of the poll that first saw this state.
    observed_at: Mapped[datetime]
    present: Mapped[bool]
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

    __table__ = tables.balance_heads

    account_id: Mapped[int]
    asset: Mapped[str]
    balance_id: Mapped[int]


class DatabaseIdentity(Base):
    """The database's own id, written once when migration 0004 first runs on it.

    The spool and the writer lock are keyed by this id instead of the URL's spelling: two
    spellings of one database share it, and a poll spooled for one database is never replayed
    into another. A copy of the file keeps the id (it is the same history until it diverges).
    """

    __table__ = tables.database_identity

    # Always 1: the table holds exactly one row.
    singleton: Mapped[int]
    # A random UUID (36 characters, lower-case hex with dashes).
    database_id: Mapped[str]
    created_at: Mapped[datetime]


class PollSchedule(Base):
    """The poll interval a recorder declared for an account, from `started_at` until the next row.

    Written by the writer (`recorder run`, or `recorder poll --interval`), so every reader
    judges gaps by the schedule the polls were taken on, not by its own environment.
    `tolerance_ms` is stored beside the interval so the rule that derives it can change
    without rewriting history.
    """

    __table__ = tables.poll_schedules

    account_id: Mapped[int]
    started_at: Mapped[datetime]
    interval_ms: Mapped[int]
    # A stretch longer than this after a successful poll without the next one is a gap.
    tolerance_ms: Mapped[int]
    # run / poll: declared by that command; inferred: derived from the polls by migration 0005.
    source: Mapped[str]


class PollGap(Base):
    """Two consecutive successful polls further apart than the schedule allowed: a gap.

    Written in the transaction of the poll that ends it, so `recorder gaps` reads gaps
    instead of scanning every poll. `start_at` and `end_at` are those polls' finished_at;
    the next poll was due `tolerance_ms` after `start_at`.
    """

    __table__ = tables.poll_gaps

    account_id: Mapped[int]
    end_at: Mapped[datetime]
    start_at: Mapped[datetime]
    tolerance_ms: Mapped[int]


class LeaseHolder(Base):
    """A `recorder run` process sharing a PostgreSQL database's accounts file, alive until `expires_at`.

    The live holders' count sets each one's share of the accounts (recorder.scheduling).
    """

    __table__ = tables.lease_holders

    # "pid N on HOST #random": unique per process start.
    holder: Mapped[str]
    expires_at: Mapped[datetime]


class AccountLease(Base):
    """Which process polls an account of the accounts file, until `expires_at` (PostgreSQL's clock).

    By label, not accounts.id: a lease exists before the account's first poll creates its row.
    An expired lease, or one without a holder, is free for any live process to take.
    """

    __table__ = tables.account_leases

    account: Mapped[str]
    holder: Mapped[str | None]
    expires_at: Mapped[datetime]


class ExportCursor(Base):
    """Where an incremental export (`recorder export --incremental NAME`) stopped, per account.

    `last_balance_id` is the newest balances row the last file held: ids follow the order
    rows were stored, so the next file starts after it and a row that arrived late (observed
    earlier than rows already exported) is still exported once. `what` and `assets` are the
    export's own options; running the name with others is refused rather than skipping rows.
    """

    __table__ = tables.export_cursors

    name: Mapped[str]
    account_id: Mapped[int]
    what: Mapped[str]
    # The --asset filter, sorted and comma-separated; '' for every asset.
    assets: Mapped[str]
    last_balance_id: Mapped[int]
    exported_at: Mapped[datetime]




class IncomeEntry(Base):
    """One entry of Binance's income ledger (`GET /fapi/v1/income`), stored exactly once.

    Binance's key: `tranId` is unique only within an `incomeType` ("trandId is unique in the
    same incomeType for a user"), and an automatic exchange or coin swap moves two assets,
    possibly under one id; so an entry is (account, income_type, tran_id, asset). `tran_id`
    is a Java long that can exceed 2**53: an integer column, never a float. An income type
    unknown when it was stored keeps `known_type` false: stored and flagged, never dropped.
    `source` says where the entry came from (the API, or a file the user downloaded).
    """

    __table__ = tables.income_entries

    id: Mapped[int]
    account_id: Mapped[int]
    # Binance's `time`: when the exchange booked the entry (millisecond precision).
    time: Mapped[datetime]
    income_type: Mapped[str]
    tran_id: Mapped[int]
    asset: Mapped[str]
    # Signed: a commission or a funding fee paid is negative.
    income: Mapped[Decimal]
    # Binance sends "" for none; kept as sent.
    symbol: Mapped[str]
    info: Mapped[str]
    trade_id: Mapped[str]
    known_type: Mapped[bool]
    source: Mapped[str]
    # When the entry reached the database.
    recorded_at: Mapped[datetime]




class DerivedBalance(Base):
    """A wallet balance derived (backfilled) from the income ledger, never an observation.

    `recorder backfill` walks an asset's income entries backwards from its first observed state
    (`anchor_balance_id`): the balance before an entry is the balance after it minus its income.
    A row is the wallet balance from `at` on: after the entry `income_entry_id` was booked at `at`,
    or, with no entry, the opening balance at the start of the span the ledger covers. Only
    `balance` can be derived (the ledger says nothing of cross wallet, unrealized PnL or available
    balance). Kept apart from `balances` so that no observed query can ever return one.
    """

    __table__ = tables.derived_balances

    id: Mapped[int]
    account_id: Mapped[int]
    asset: Mapped[str]
    # From this instant on the wallet balance was `balance` (until the next derived or observed state).
    at: Mapped[datetime]
    balance: Mapped[Decimal]
    # The entry booked at `at` that this balance follows; NULL for the opening row of the span.
    income_entry_id: Mapped[int | None]
    # The observed state the walk started from: the asset's first recorded balance.
    anchor_balance_id: Mapped[int]
    method: Mapped[str]
    derived_at: Mapped[datetime]




class LedgerSync(Base):
    """One window of one ledger sync attempt: what was asked, what came back, how it ended.

    An `ok` row is written in the same transaction as the window's entries, so it proves every
    entry Binance served for [window_start, window_end] is stored; the union of `ok` windows is
    the ledger's coverage (view `ledger_coverage`), and time outside it is a gap
    (view `ledger_gaps`). A `failed` row stores nothing else: its window stays uncovered until a
    later sync fetches it again.
    """

    __table__ = tables.ledger_syncs

    id: Mapped[int]
    account_id: Mapped[int]
    # Groups the windows of one attempt (a uuid4).
    attempt_id: Mapped[str]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    # The window asked for, both ends inclusive, at Binance's millisecond precision.
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    outcome: Mapped[str]
    pages: Mapped[int]
    requests: Mapped[int]
    entries_fetched: Mapped[int]
    entries_new: Mapped[int]
    # X-MBX-USED-WEIGHT-1M after the window's last request: the IP's weight used in that minute.
    used_weight: Mapped[int | None]
    error_class: Mapped[str | None]
    error_message: Mapped[str | None]
    http_status: Mapped[int | None]
    error_code: Mapped[int | None]
