"""Write one poll's outcome into the database; the caller owns the transaction.

Core statements rather than the ORM: a poll is the hot path (one a minute per account for
years), and when this module used the ORM its unit of work cost more than the SQL itself
(1.5 ms against 0.08 ms of an idle poll on SQLite, profiled with scripts/bench_poll.py;
the poll went from 3.4 ms to 2.1 ms). An idle poll is four statements: the account, the
asset heads, the poll row, and the gap check (recorder.coverage: the previous successful
poll and the schedule in force, in one statement); one with a HeadCache (the poll row: the
heads, the previous successful poll and the schedule are known), which the service keeps
while it holds the writer lock.

A poll's identity is (account, finished_at): storing the same poll twice, as a spool replay
after a crash between commit and spool removal can, stores it once.

Every value is made storable first (recorder.storable), so what the exchange sends cannot
make the database refuse a poll; `rejected_for_content` tells a refusal that retrying will
never cure from an unavailable database.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from recorder import coverage
from recorder.config import BALANCE_ENDPOINTS, environment_of
from recorder.errors import ConfigError, ExchangeError, RecorderError
from recorder.prepared import Prepared
from recorder.records import AssetBalance, FetchedBalances
from recorder.spool import PollFailure, SpooledPoll
from recorder.storable import TEXT_LIMIT, UnstorableValue, storable_fetched, storable_row
from recorder.tables import POLL_FAILED, POLL_OK, RECORDED_LATE, STATE_FIELDS, accounts, balance_heads, balances, polls

if TYPE_CHECKING:
    # Annotations only: the service writes on Core connections and never imports the ORM.
    from sqlalchemy.orm import Session

ERROR_MESSAGE_LIMIT = TEXT_LIMIT

_accounts, _polls, _balances, _heads = accounts, polls, balances, balance_heads

# The hot path's statements are built once: building them per poll (coercing every column
# and clause again) cost about a third of an idle poll's database time on SQLite.
_ACCOUNT_BY_LABEL = select(_accounts.c.id, _accounts.c.environment, _accounts.c.account_alias).where(
    _accounts.c.label == bindparam("label")
)
_HEAD_STATES = (
    select(_heads.c.asset, _balances.c.present, *(_balances.c[name] for name in STATE_FIELDS))
    .join(_balances, _balances.c.id == _heads.c.balance_id)
    .where(_heads.c.account_id == bindparam("account_id"))
)
_STATE_KEYS = ("account_id", "observed_at", "asset", "present", *STATE_FIELDS)
# One row per execution: a busy poll changes an asset or two, and the driver's own execute per
# row costs less than SQLAlchemy's multi-row RETURNING (insertmanyvalues) machinery once.
_INSERT_STATE = Prepared(insert(_balances).returning(_balances.c.id), _STATE_KEYS)
_INSERT_HEADS = Prepared(insert(_heads), ("account_id", "asset", "balance_id"))
_MOVE_HEAD = Prepared(
    update(_heads)
    .where(_heads.c.account_id == bindparam("head_account_id"), _heads.c.asset == bindparam("head_asset"))
    .values(balance_id=bindparam("new_balance_id"))
)


@cache
def _insert_poll_prepared(dialect: str, keys: tuple[str, ...]) -> Prepared:
    """The poll insert for these columns (an ok and a failed poll set different ones), compiled once."""
    return Prepared(_insert_poll_statement(dialect), keys)


@cache
def _insert_poll_statement(dialect: str) -> Any:
    """INSERT of a poll row that does nothing when the poll is stored already.

    A replayed poll conflicts on the key and inserts nothing; RETURNING tells which happened
    (rowcount is not reliable for this on every driver). Built on first use for the
    database's own dialect only: importing SQLAlchemy's PostgreSQL dialect costs a SQLite
    service 1.4 MB it would keep for its whole life.
    """
    if dialect not in ("sqlite", "postgresql"):
        raise ValueError(f"no poll insert for the {dialect} dialect")
    module = importlib.import_module(f"sqlalchemy.dialects.{dialect}")
    return (
        module.insert(_polls)
        .on_conflict_do_nothing(index_elements=["account_id", "finished_at"])
        .returning(_polls.c.account_id)
    )


@dataclass(frozen=True)
class PollOutcome:
    """What one poll stored."""

    finished_at: datetime
    outcome: str
    asset_count: int
    changed_count: int
    used_weight: int | None
    replayed: bool = False


@dataclass
class HeadCache:
    """The account row, its assets' latest states and its latest successful poll, as our last
    committed write left them.

    It spares every poll the account, head and gap-check SELECTs. It is sound only while this
    process is the account's single writer in this database (recorder.locks): then nobody else
    can add an account alias, move a head or store a poll or schedule between two of our polls,
    so what we committed is what the database holds. The caller starts each transaction with
    `begin()`, calls `commit()` once the database committed, and `clear()` on any failure or
    rollback (and whenever the writer lock was lost and taken again); a schedule it declares
    itself it reports with `schedule_declared()`.
    """

    account: AccountRef | None = None
    heads: dict[str, dict[str, Any]] | None = None
    # Each asset's record (storable, immutable) its present head holds the state of: the client
    # hands back the very same record while an asset's row is unchanged (recorder.exchange), and
    # such a record needs neither the storable check nor a comparison.
    sources: dict[str, AssetBalance] | None = None
    latest_ok: coverage.LatestOk | None = None
    pending: dict[str, dict[str, Any]] | None = None
    pending_sources: dict[str, AssetBalance] | None = None
    pending_latest_ok: coverage.LatestOk | None = None
    # No successful poll before this time may stand for the latest: a schedule starts then.
    schedule_floor: datetime | None = None

    def begin(self) -> None:
        """A transaction starts: what it writes stays pending until commit()."""
        self.pending, self.pending_sources, self.pending_latest_ok = self.heads, self.sources, self.latest_ok

    def commit(self, account: AccountRef) -> None:
        """The transaction committed: its account row, heads and latest poll are the database's now."""
        self.account, self.heads, self.sources, self.latest_ok = (
            account, self.pending, self.pending_sources, self.pending_latest_ok
        )
        self.pending = self.pending_sources = self.pending_latest_ok = None

    def note_latest_ok(self, latest: coverage.LatestOk | None) -> None:
        """The pending transaction stored a successful poll: what the next one may take as the latest."""
        floor = self.schedule_floor
        self.pending_latest_ok = None if latest is None or (floor is not None and latest.finished_at < floor) else latest

    def schedule_declared(self, started_at: datetime) -> None:
        """A schedule was stored for this account: the next poll asks the database which one is in force."""
        self.latest_ok = self.pending_latest_ok = None
        if self.schedule_floor is None or started_at > self.schedule_floor:
            self.schedule_floor = started_at

    def clear(self) -> None:
        """Forget everything: the next write reads the account, heads and latest poll from the database."""
        self.account = self.heads = self.sources = self.latest_ok = None
        self.pending = self.pending_sources = self.pending_latest_ok = None


@dataclass
class AccountRef:
    """The account row a poll is written into."""

    id: int
    label: str
    environment: str
    account_alias: str | None


def ensure_account(session: Session | Connection, label: str, base_url: str, now: datetime) -> AccountRef:
    """Get or create the account; refuse to mix data from another environment into it."""
    environment = environment_of(base_url)
    connection = _connection_of(session)
    row = connection.execute(_ACCOUNT_BY_LABEL, {"label": label}).one_or_none()
    if row is None:
        account_id = connection.execute(
            insert(_accounts).values(label=label, environment=environment, created_at=now).returning(_accounts.c.id)
        ).scalar_one()
        return AccountRef(account_id, label, environment, None)
    if row.environment != environment:
        raise ConfigError(
            f"account {label!r} holds {row.environment} data; refusing to add {environment} data "
            f"from {base_url}: choose another --account label"
        )
    return AccountRef(row.id, label, row.environment, row.account_alias)


def record_poll(
    session: Session | Connection,
    account: AccountRef,
    fetched: FetchedBalances,
    *,
    started_at: datetime,
    finished_at: datetime,
    recorded_at: datetime | None = None,
    cache: HeadCache | None = None,
) -> PollOutcome:
    """Store a successful poll: the log row plus a balances row per asset that changed.

    `recorded_at` is when the row reaches the database (a poll replayed from the spool
    passes the replay time); it is kept only when late, so the poll log shows the delay.
    A poll already stored (same account and finished_at) stores nothing. With a `cache`
    the heads are compared with its committed view instead of read, and its pending view
    gets the heads this poll moves.
    """
    connection = _connection_of(session)
    sources = cache.pending_sources if cache is not None and cache.pending is not None else None
    fetched = storable_fetched(fetched, sources)
    if account.account_alias is not None and account.account_alias != fetched.account_alias:
        existing = _existing(connection, account.id, finished_at)
        if existing is not None:
            return existing
        raise ConfigError(
            f"the API key reads Binance account {fetched.account_alias!r} but account {account.label!r} "
            f"records {account.account_alias!r}: use another --account label for this key"
        )
    if cache is not None and cache.pending is not None:
        heads = cache.pending
    else:
        heads = {row.asset: row._asdict() for row in connection.execute(_HEAD_STATES, {"account_id": account.id})}
    changed = _changed_states(heads, fetched, sources)
    inserted = _insert_poll(
        connection,
        account_id=account.id,
        started_at=started_at,
        finished_at=finished_at,
        outcome=POLL_OK,
        endpoint=_endpoint_version(fetched.endpoint),
        asset_count=len(fetched.assets),
        changed_count=len(changed),
        used_weight=fetched.used_weight,
        recorded_at=_late(recorded_at, finished_at),
    )
    if not inserted:
        return _stored(connection, account.id, finished_at)
    latest_ok = coverage.note_ok_poll(connection, account.id, finished_at, cache.pending_latest_ok if cache else None)
    if account.account_alias is None:
        connection.execute(
            update(_accounts).where(_accounts.c.id == account.id).values(account_alias=fetched.account_alias)
        )
        account.account_alias = fetched.account_alias
    if changed:
        _insert_states(connection, account.id, finished_at, changed)
    if cache is not None:
        # The heads now hold exactly these assets' states (and vanished markers for the rest).
        cache.pending = {**heads, **{row["asset"]: row for _, row in changed}} if changed else heads
        cache.pending_sources = {asset.asset: asset for asset in fetched.assets}
        cache.note_latest_ok(latest_ok)
    return PollOutcome(finished_at, POLL_OK, len(fetched.assets), len(changed), fetched.used_weight)


def record_failure(
    session: Session | Connection,
    account: AccountRef,
    failure: PollFailure | RecorderError,
    *,
    endpoint: str,
    started_at: datetime,
    finished_at: datetime,
    recorded_at: datetime | None = None,
) -> PollOutcome:
    """Store a failed poll in the log; no balance row is touched."""
    if isinstance(failure, RecorderError):
        failure = describe_failure(failure)
    connection = _connection_of(session)
    inserted = _insert_poll(
        connection,
        account_id=account.id,
        started_at=started_at,
        finished_at=finished_at,
        outcome=POLL_FAILED,
        endpoint=_endpoint_version(endpoint),
        error_class=failure.error_class,
        error_message=failure.message,
        http_status=failure.http_status,
        error_code=failure.code,
        used_weight=failure.used_weight,
        recorded_at=_late(recorded_at, finished_at),
    )
    if not inserted:
        return _stored(connection, account.id, finished_at)
    return PollOutcome(finished_at, POLL_FAILED, 0, 0, failure.used_weight)


def record_entry(
    session: Session | Connection, account: AccountRef, entry: SpooledPoll, *, recorded_at: datetime, cache: HeadCache | None = None
) -> PollOutcome:
    """Store one poll, successful or failed, as the service or the spool describes it."""
    when = {"started_at": entry.started_at, "finished_at": entry.finished_at, "recorded_at": recorded_at}
    if entry.fetched is not None:
        return record_poll(session, account, entry.fetched, cache=cache, **when)
    if entry.failure is None:
        raise ValueError(f"spooled poll {entry.uid} has neither balances nor a failure")
    return record_failure(session, account, entry.failure, endpoint=entry.endpoint, **when)


def describe_failure(error: RecorderError) -> PollFailure:
    """What the poll log keeps of an error: class, one-line message, HTTP status, Binance code."""
    exchange_error = error if isinstance(error, ExchangeError) else None
    return PollFailure(
        error_class=type(error).__name__,
        message=str(error)[:ERROR_MESSAGE_LIMIT],
        http_status=exchange_error.http_status if exchange_error else None,
        code=exchange_error.code if exchange_error else None,
        used_weight=getattr(error, "used_weight", None),
    )


# Errors of a value rather than of the database: binding (sqlite3 refuses an int beyond
# int64 with OverflowError, our column types raise ValueError/TypeError), decimal arithmetic.
CONTENT_ERRORS = (UnstorableValue, ValueError, TypeError, ArithmeticError)


def rejected_for_content(error: BaseException) -> bool:
    """True when the database refused a poll for its values (retrying never helps), False when it
    was unreachable, locked, read-only or full (the poll waits in the spool)."""
    if isinstance(error, (DataError, IntegrityError)):
        # The replay conflict on the poll's key never raises (ON CONFLICT DO NOTHING).
        return True
    if isinstance(error, DBAPIError):
        if error.connection_invalidated:
            return False
        original = error.orig
        # sqlite3 reports a value it cannot bind ("Error binding parameter") as ProgrammingError,
        # and an oversized string or blob as OperationalError ("string or blob too big").
        text = str(original).lower()
        return type(original).__module__ == "sqlite3" and ("binding" in text or "too big" in text)
    if isinstance(error, StatementError):
        # A bind parameter's own processing failed before reaching the database.
        return isinstance(error.orig, CONTENT_ERRORS)
    return isinstance(error, CONTENT_ERRORS)


def _changed_states(
    heads: dict[str, dict[str, Any]], fetched: FetchedBalances, sources: Mapping[str, AssetBalance] | None = None
) -> list[tuple[bool, dict[str, Any]]]:
    """The balances rows this poll must write, each as (the asset has a head already, values).

    `heads` maps each asset to its head's row (asset, present and the state fields); `sources`
    (HeadCache.sources) each asset to the record its present head holds the state of.
    """
    changed: list[tuple[bool, dict[str, Any]]] = []
    for asset in fetched.assets:
        if sources is not None and sources.get(asset.asset) is asset:
            continue  # the very record the head holds: unchanged
        previous = heads.get(asset.asset)
        state = {name: getattr(asset, name) for name in STATE_FIELDS}
        if previous is None or not previous["present"] or any(previous[n] != v for n, v in state.items()):
            changed.append((previous is not None, {"asset": asset.asset, "present": True, **state}))
    seen = {asset.asset for asset in fetched.assets}
    for name, previous in heads.items():
        if name not in seen and previous["present"]:
            # Vanished from the response: a marker row with NULL amounts, never invented zeros.
            changed.append((True, {"asset": name, "present": False, **dict.fromkeys(STATE_FIELDS)}))
    return changed


def _connection_of(session: Session | Connection) -> Connection:
    """The connection to write on: the session's, or the Core connection the service passes."""
    return session if isinstance(session, Connection) else session.connection()


def _endpoint_version(path_or_version: str) -> str:
    """The setting's name (`v2`) for a balance endpoint path (`/fapi/v2/balance`), or the name itself."""
    for version, path in BALANCE_ENDPOINTS.items():
        if path_or_version in (version, path):
            return version
    raise ValueError(f"not a balance endpoint: {path_or_version!r}")


def _late(recorded_at: datetime | None, finished_at: datetime) -> datetime | None:
    """recorded_at when the row reaches the database late, else None: the poll log stays small."""
    if recorded_at is None or recorded_at - finished_at <= RECORDED_LATE:
        return None
    return recorded_at


def _insert_poll(connection: Connection, **values: Any) -> bool:
    """Insert the poll row; False when this poll is already stored (a replayed poll).

    An integer out of its column's range is stored as NULL with the reason in error_message,
    on an ok poll too (its outcome stays ok: the balances were read and stored whole).
    """
    dialect = connection.dialect.name
    row = storable_row(_polls, values, dialect, note_column="error_message")
    return bool(_insert_poll_prepared(dialect, tuple(row)).execute(connection, row))


def _insert_states(
    connection: Connection,
    account_id: int,
    observed_at: datetime,
    changed: list[tuple[bool, dict[str, Any]]],
) -> None:
    ids = [
        _INSERT_STATE.execute(connection, {"account_id": account_id, "observed_at": observed_at, **row})[0][0]
        for _, row in changed
    ]
    new_heads = [
        {"account_id": account_id, "asset": row["asset"], "balance_id": balance_id}
        for (has_head, row), balance_id in zip(changed, ids, strict=True)
        if not has_head
    ]
    moved_heads = [
        {"head_account_id": account_id, "head_asset": row["asset"], "new_balance_id": balance_id}
        for (has_head, row), balance_id in zip(changed, ids, strict=True)
        if has_head
    ]
    if new_heads:
        _INSERT_HEADS.executemany(connection, new_heads)
    if moved_heads:
        _MOVE_HEAD.executemany(connection, moved_heads)


def _existing(connection: Connection, account_id: int, finished_at: datetime) -> PollOutcome | None:
    row = connection.execute(
        select(_polls).where(_polls.c.account_id == account_id, _polls.c.finished_at == finished_at)
    ).one_or_none()
    if row is None:
        return None
    return PollOutcome(row.finished_at, row.outcome, row.asset_count or 0, row.changed_count or 0, row.used_weight, replayed=True)


def _stored(connection: Connection, account_id: int, finished_at: datetime) -> PollOutcome:
    """The outcome of a poll whose insert conflicted on its key: it was stored before."""
    existing = _existing(connection, account_id, finished_at)
    if existing is None:
        raise AssertionError(f"poll of account {account_id} at {finished_at} conflicted on insert but is not stored")
    return existing
