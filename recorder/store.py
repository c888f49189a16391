"""Write one poll's outcome into the database; the caller owns the transaction.

Core statements rather than the ORM: a poll is the hot path (one a minute per account for
years), and when this module used the ORM its unit of work cost more than the SQL itself
(1.5 ms against 0.08 ms of an idle poll on SQLite, profiled with scripts/bench_poll.py;
the poll went from 3.4 ms to 2.1 ms). An idle poll is three statements: the account, the
asset heads, and the poll row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from recorder.config import environment_of
from recorder.errors import ConfigError, ExchangeError, RecorderError
from recorder.models import POLL_FAILED, POLL_OK, STATE_FIELDS, Account, Balance, BalanceHead, Poll
from recorder.records import FetchedBalances
from recorder.spool import PollFailure, SpooledPoll

ERROR_MESSAGE_LIMIT = 500

_accounts, _polls, _balances, _heads = (model.__table__ for model in (Account, Poll, Balance, BalanceHead))


@dataclass(frozen=True)
class PollOutcome:
    """What one poll stored."""

    poll_id: int
    outcome: str
    asset_count: int
    changed_count: int
    used_weight: int | None
    replayed: bool = False


@dataclass
class AccountRef:
    """The account row a poll is written into."""

    id: int
    label: str
    environment: str
    account_alias: str | None


def ensure_account(session: Session, label: str, base_url: str, now: datetime) -> AccountRef:
    """Get or create the account; refuse to mix data from another environment into it."""
    environment = environment_of(base_url)
    connection = session.connection()
    row = connection.execute(
        select(_accounts.c.id, _accounts.c.environment, _accounts.c.account_alias).where(_accounts.c.label == label)
    ).one_or_none()
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
    session: Session,
    account: AccountRef,
    fetched: FetchedBalances,
    *,
    uid: str,
    started_at: datetime,
    finished_at: datetime,
    recorded_at: datetime | None = None,
) -> PollOutcome:
    """Store a successful poll: the log row plus a balances row per asset that changed.

    `recorded_at` defaults to `finished_at`; a poll replayed from the spool passes the
    replay time, so the poll log shows the delay. A uid already stored stores nothing.
    """
    connection = session.connection()
    if account.account_alias is not None and account.account_alias != fetched.account_alias:
        existing = _existing(connection, uid)
        if existing is not None:
            return existing
        raise ConfigError(
            f"the API key reads Binance account {fetched.account_alias!r} but account {account.label!r} "
            f"records {account.account_alias!r}: use another --account label for this key"
        )
    changed = _changed_states(connection, account.id, fetched)
    poll_id = _insert_poll(
        connection,
        uid=uid,
        account_id=account.id,
        started_at=started_at,
        finished_at=finished_at,
        outcome=POLL_OK,
        endpoint=fetched.endpoint,
        asset_count=len(fetched.assets),
        changed_count=len(changed),
        used_weight=fetched.used_weight,
        recorded_at=recorded_at or finished_at,
    )
    if poll_id is None:
        return _stored(connection, uid)
    if account.account_alias is None:
        connection.execute(
            update(_accounts).where(_accounts.c.id == account.id).values(account_alias=fetched.account_alias)
        )
        account.account_alias = fetched.account_alias
    if changed:
        _insert_states(connection, account.id, poll_id, finished_at, changed)
    return PollOutcome(poll_id, POLL_OK, len(fetched.assets), len(changed), fetched.used_weight)


def record_failure(
    session: Session,
    account: AccountRef,
    failure: PollFailure | RecorderError,
    *,
    uid: str,
    endpoint: str,
    started_at: datetime,
    finished_at: datetime,
    recorded_at: datetime | None = None,
) -> PollOutcome:
    """Store a failed poll in the log; no balance row is touched."""
    if isinstance(failure, RecorderError):
        failure = describe_failure(failure)
    connection = session.connection()
    poll_id = _insert_poll(
        connection,
        uid=uid,
        account_id=account.id,
        started_at=started_at,
        finished_at=finished_at,
        outcome=POLL_FAILED,
        endpoint=endpoint,
        error_class=failure.error_class,
        error_message=failure.message[:ERROR_MESSAGE_LIMIT],
        http_status=failure.http_status,
        error_code=failure.code,
        used_weight=failure.used_weight,
        recorded_at=recorded_at or finished_at,
    )
    if poll_id is None:
        return _stored(connection, uid)
    return PollOutcome(poll_id, POLL_FAILED, 0, 0, failure.used_weight)


def record_entry(session: Session, account: AccountRef, entry: SpooledPoll, *, recorded_at: datetime) -> PollOutcome:
    """Store one poll, successful or failed, as the service or the spool describes it."""
    when = {"uid": entry.uid, "started_at": entry.started_at, "finished_at": entry.finished_at, "recorded_at": recorded_at}
    if entry.fetched is not None:
        return record_poll(session, account, entry.fetched, **when)
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


def _changed_states(connection: Connection, account_id: int, fetched: FetchedBalances) -> list[tuple[bool, dict[str, Any]]]:
    """The balances rows this poll must write, each as (the asset has a head already, values)."""
    heads = {
        row.asset: row
        for row in connection.execute(
            select(_heads.c.asset, _balances.c.present, *(_balances.c[name] for name in STATE_FIELDS))
            .join(_balances, _balances.c.id == _heads.c.balance_id)
            .where(_heads.c.account_id == account_id)
        )
    }
    changed: list[tuple[bool, dict[str, Any]]] = []
    for asset in fetched.assets:
        previous = heads.get(asset.asset)
        state = {name: getattr(asset, name) for name in STATE_FIELDS}
        if previous is None or not previous.present or any(getattr(previous, n) != v for n, v in state.items()):
            changed.append((previous is not None, {"asset": asset.asset, "present": True, **state}))
    seen = {asset.asset for asset in fetched.assets}
    for name, previous in heads.items():
        if name not in seen and previous.present:
            # Vanished from the response: a marker row with NULL amounts, never invented zeros.
            changed.append((True, {"asset": name, "present": False, **dict.fromkeys(STATE_FIELDS)}))
    return changed


def _insert_poll(connection: Connection, *, uid: str, **values: Any) -> int | None:
    """Insert the poll row; None when its uid is already stored (a replayed poll)."""
    dialect_insert = sqlite.insert if connection.dialect.name == "sqlite" else postgresql.insert
    return connection.execute(
        dialect_insert(_polls).values(uid=uid, **values).on_conflict_do_nothing(index_elements=["uid"]).returning(_polls.c.id)
    ).scalar_one_or_none()


def _insert_states(
    connection: Connection,
    account_id: int,
    poll_id: int,
    observed_at: datetime,
    changed: list[tuple[bool, dict[str, Any]]],
) -> None:
    rows = [{"account_id": account_id, "poll_id": poll_id, "observed_at": observed_at, **row} for _, row in changed]
    ids = connection.execute(insert(_balances).returning(_balances.c.id, sort_by_parameter_order=True), rows).scalars().all()
    new_heads = [
        {"account_id": account_id, "asset": row["asset"], "balance_id": balance_id}
        for (has_head, row), balance_id in zip(changed, ids, strict=True)
        if not has_head
    ]
    moved_heads = [
        {"head_asset": row["asset"], "new_balance_id": balance_id}
        for (has_head, row), balance_id in zip(changed, ids, strict=True)
        if has_head
    ]
    if new_heads:
        connection.execute(insert(_heads), new_heads)
    if moved_heads:
        connection.execute(
            update(_heads)
            .where(_heads.c.account_id == account_id, _heads.c.asset == bindparam("head_asset"))
            .values(balance_id=bindparam("new_balance_id")),
            moved_heads,
        )


def _existing(connection: Connection, uid: str) -> PollOutcome | None:
    row = connection.execute(select(_polls).where(_polls.c.uid == uid)).one_or_none()
    if row is None:
        return None
    return PollOutcome(row.id, row.outcome, row.asset_count or 0, row.changed_count or 0, row.used_weight, replayed=True)


def _stored(connection: Connection, uid: str) -> PollOutcome:
    """The outcome of a poll whose insert conflicted on its uid: it was stored before."""
    existing = _existing(connection, uid)
    if existing is None:
        raise AssertionError(f"poll {uid} conflicted on insert but is not stored")
    return existing
