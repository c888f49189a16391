"""Recorded asset states and what every query reads first: the account, its states, its polls.

Holds AssetState, the account lookup (find_account, list_assets), history, the probes for
the last and first successful poll, and the statements that the other modules share.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from recorder.coverage import DEFAULT_SCHEDULE, due_at, schedules_over
from recorder.db_types import UtcDateTime
from recorder.errors import ConfigError
from recorder.models import AMOUNT_FIELDS, POLL_OK, Account, Balance, BalanceHead, Poll

UTC = timezone.utc
# The tolerance of an account with no declared schedule (1.5 x the default 60 s interval).
# Every other tolerance comes from the schedule the writer stored (recorder.coverage), never
# from the reader's environment.
DEFAULT_TOLERANCE = DEFAULT_SCHEDULE.tolerance

# Statements are built once, with bound parameters, and run on the session's connection:
# building an ORM statement per call cost more than the index probes themselves (~1.5 ms
# of the first as_of's 2 ms), and a constant statement hits SQLAlchemy's compiled cache.
_BALANCES = Balance.__table__
_HEADS = BalanceHead.__table__
_POLLS = Poll.__table__
_STATE_COLUMNS = (
    _BALANCES.c.asset,
    _BALANCES.c.observed_at,
    _BALANCES.c.present,
    *(_BALANCES.c[name] for name in AMOUNT_FIELDS),
    _BALANCES.c.margin_available,
    _BALANCES.c.update_time,
)
_ACCOUNT_ID = select(Account.__table__.c.id).where(Account.__table__.c.label == bindparam("label"))
_AT = bindparam("at", type_=UtcDateTime())
_LAST_OK_POLL = {
    inclusive: select(_POLLS.c.finished_at)
    .where(
        _POLLS.c.account_id == bindparam("account_id"),
        _POLLS.c.outcome == POLL_OK,
        _POLLS.c.finished_at <= _AT if inclusive else _POLLS.c.finished_at < _AT,
    )
    .order_by(_POLLS.c.finished_at.desc())
    .limit(1)
    for inclusive in (True, False)
}
_FIRST_OK_POLL = (
    select(_POLLS.c.finished_at)
    .where(_POLLS.c.account_id == bindparam("account_id"), _POLLS.c.outcome == POLL_OK, _POLLS.c.finished_at >= _AT)
    .order_by(_POLLS.c.finished_at)
    .limit(1)
)


@dataclass(frozen=True)
class AssetState:
    """One recorded state of an asset; present=False marks it vanished (amounts None)."""

    asset: str
    observed_at: datetime
    present: bool
    balance: Decimal | None
    cross_wallet_balance: Decimal | None
    cross_un_pnl: Decimal | None
    available_balance: Decimal | None
    max_withdraw_amount: Decimal | None
    margin_available: bool | None
    update_time: datetime | None

    def amount(self, name: str) -> Decimal | None:
        """One amount field by name."""
        if name not in AMOUNT_FIELDS:
            raise ValueError(f"{name!r} is not an amount field: {', '.join(AMOUNT_FIELDS)}")
        return getattr(self, name)


def find_account(session: Session, label: str) -> Account:
    """The account with this label; ConfigError naming the known labels otherwise."""
    account = session.scalars(select(Account).where(Account.label == label)).one_or_none()
    if account is None:
        known = session.scalars(select(Account.label).order_by(Account.label)).all()
        hint = f"recorded accounts: {', '.join(known)}" if known else "the database has no recorded account yet"
        raise ConfigError(f"no account {label!r} in the database; {hint}")
    return account


def _account_id(session: Session, label: str) -> int:
    account_id = session.connection().execute(_ACCOUNT_ID, {"label": label}).scalar()
    if account_id is None:
        find_account(session, label)  # raises, naming the known accounts
    return account_id


def list_assets(session: Session, label: str) -> list[str]:
    """Every asset the account ever had, sorted."""
    account = find_account(session, label)
    return list(
        session.scalars(
            select(BalanceHead.asset).where(BalanceHead.account_id == account.id).order_by(BalanceHead.asset)
        )
    )


def history(
    session: Session,
    account: str,
    *,
    assets: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[AssetState]:
    """Every recorded distinct state (vanished markers included), oldest first, in [since, until)."""
    return list(iter_history(session, account, assets=assets, since=since, until=until))


# Rows fetched per round trip when streaming; PostgreSQL keeps the rest on the server.
STREAM_ROWS = 5_000


def iter_history(
    session: Session,
    account: str,
    *,
    assets: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Iterator[AssetState]:
    """history as it is read: constant memory, whatever the length of the range.

    The account is checked at once (ConfigError before the first row is asked for); the rows
    come from a server-side cursor on PostgreSQL and a plain cursor on SQLite.
    """
    account_id = _account_id(session, account)
    query = select(*_STATE_COLUMNS).where(_BALANCES.c.account_id == account_id)
    if assets:
        query = query.where(_BALANCES.c.asset.in_(list(assets)))
    if since is not None:
        query = query.where(_BALANCES.c.observed_at >= since)
    if until is not None:
        query = query.where(_BALANCES.c.observed_at < until)
    query = query.order_by(_BALANCES.c.observed_at, _BALANCES.c.asset)
    connection = session.connection().execution_options(stream_results=True, yield_per=STREAM_ROWS)
    return _states(connection.execute(query))


def _states(result: Any) -> Iterator[AssetState]:
    with result:
        for row in result:
            yield AssetState(*row)


def _last_ok_poll(session: Session, account_id: int, at: datetime, *, inclusive: bool) -> datetime | None:
    return session.connection().execute(_LAST_OK_POLL[inclusive], {"account_id": account_id, "at": at}).scalar()


def _first_ok_poll(session: Session, account_id: int, at: datetime) -> datetime | None:
    return session.connection().execute(_FIRST_OK_POLL, {"account_id": account_id, "at": at}).scalar()


def _due(session: Session, account_id: int, last_ok: datetime, at: datetime) -> datetime:
    """When the successful poll after `last_ok` was due, by the schedules stored up to `at`."""
    return due_at(last_ok, schedules_over(session.connection(), account_id, last_ok, at))


def _require_aware(value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("queries take aware datetimes: attach a time zone (UTC)")
