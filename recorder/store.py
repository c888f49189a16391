"""Write one poll's outcome into the database; the caller owns the transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from recorder.config import environment_of
from recorder.errors import ConfigError, ExchangeError, RecorderError
from recorder.models import POLL_FAILED, POLL_OK, STATE_FIELDS, Account, Balance, BalanceHead, Poll
from recorder.records import AssetBalance, FetchedBalances
from recorder.spool import PollFailure

ERROR_MESSAGE_LIMIT = 500


@dataclass(frozen=True)
class PollOutcome:
    """What one poll stored."""

    poll_id: int
    outcome: str
    asset_count: int
    changed_count: int
    used_weight: int | None
    replayed: bool = False


def ensure_account(session: Session, label: str, base_url: str, now: datetime) -> Account:
    """Get or create the account; refuse to mix data from another environment into it."""
    environment = environment_of(base_url)
    account = session.scalars(select(Account).where(Account.label == label)).one_or_none()
    if account is None:
        account = Account(label=label, environment=environment, created_at=now)
        session.add(account)
        session.flush()
    elif account.environment != environment:
        raise ConfigError(
            f"account {label!r} holds {account.environment} data; refusing to add {environment} data "
            f"from {base_url}: choose another --account label"
        )
    return account


def record_poll(
    session: Session,
    account: Account,
    fetched: FetchedBalances,
    *,
    uid: str,
    started_at: datetime,
    finished_at: datetime,
    recorded_at: datetime | None = None,
) -> PollOutcome:
    """Store a successful poll: the log row plus a balances row per asset that changed.

    `recorded_at` defaults to `finished_at`; a poll replayed from the spool passes the
    replay time, so the poll log shows the delay.
    """
    existing = _existing(session, uid)
    if existing is not None:
        return existing
    if account.account_alias is None:
        account.account_alias = fetched.account_alias
    elif account.account_alias != fetched.account_alias:
        raise ConfigError(
            f"the API key reads Binance account {fetched.account_alias!r} but account {account.label!r} "
            f"records {account.account_alias!r}: use another --account label for this key"
        )
    poll = Poll(
        uid=uid,
        account_id=account.id,
        started_at=started_at,
        finished_at=finished_at,
        outcome=POLL_OK,
        endpoint=fetched.endpoint,
        asset_count=len(fetched.assets),
        used_weight=fetched.used_weight,
        recorded_at=recorded_at or finished_at,
    )
    session.add(poll)
    session.flush()

    heads = {
        head.asset: (head, balance)
        for head, balance in session.execute(
            select(BalanceHead, Balance)
            .join(Balance, Balance.id == BalanceHead.balance_id)
            .where(BalanceHead.account_id == account.id)
        )
    }
    changed: list[tuple[BalanceHead | None, Balance]] = []
    for asset in fetched.assets:
        head, previous = heads.get(asset.asset, (None, None))
        if previous is None or not _same_state(previous, asset):
            changed.append((head, _state_row(account.id, poll, asset)))
    seen = {asset.asset for asset in fetched.assets}
    for name, (head, previous) in heads.items():
        if name not in seen and previous.present:
            changed.append((head, _vanished_row(account.id, poll, name)))

    session.add_all([row for _, row in changed])
    session.flush()
    for head, row in changed:
        if head is None:
            session.add(BalanceHead(account_id=account.id, asset=row.asset, balance_id=row.id))
        else:
            head.balance_id = row.id
    poll.changed_count = len(changed)
    session.flush()
    return PollOutcome(poll.id, POLL_OK, len(fetched.assets), len(changed), fetched.used_weight)


def record_failure(
    session: Session,
    account: Account,
    failure: PollFailure | RecorderError,
    *,
    uid: str,
    endpoint: str,
    started_at: datetime,
    finished_at: datetime,
    recorded_at: datetime | None = None,
) -> PollOutcome:
    """Store a failed poll in the log; no balance row is touched."""
    existing = _existing(session, uid)
    if existing is not None:
        return existing
    if isinstance(failure, RecorderError):
        failure = describe_failure(failure)
    poll = Poll(
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
    session.add(poll)
    session.flush()
    return PollOutcome(poll.id, POLL_FAILED, 0, 0, poll.used_weight)


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


def _existing(session: Session, uid: str) -> PollOutcome | None:
    poll = session.scalars(select(Poll).where(Poll.uid == uid)).one_or_none()
    if poll is None:
        return None
    return PollOutcome(
        poll.id, poll.outcome, poll.asset_count or 0, poll.changed_count or 0, poll.used_weight, replayed=True
    )


def _same_state(previous: Balance, asset: AssetBalance) -> bool:
    if not previous.present:
        return False
    return all(getattr(previous, name) == getattr(asset, name) for name in STATE_FIELDS)


def _state_row(account_id: int, poll: Poll, asset: AssetBalance) -> Balance:
    return Balance(
        account_id=account_id,
        poll_id=poll.id,
        asset=asset.asset,
        observed_at=poll.finished_at,
        present=True,
        **{name: getattr(asset, name) for name in STATE_FIELDS},
    )


def _vanished_row(account_id: int, poll: Poll, asset: str) -> Balance:
    return Balance(account_id=account_id, poll_id=poll.id, asset=asset, observed_at=poll.finished_at, present=False)
