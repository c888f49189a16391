"""Each account's poll health from the polls table: the last successful poll and the failures since."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from recorder.models import Account, Poll


@dataclass(frozen=True)
class AccountHealth:
    """One account's state as its polls show it; all None for an account never polled."""

    last_poll_at: datetime | None
    last_ok_at: datetime | None
    failures_since_ok: int | None


def account_health(session: Session, labels: Sequence[str]) -> dict[str, AccountHealth]:
    """Per label: last poll, last successful poll, and how many polls failed in a row since it."""
    health = {label: AccountHealth(None, None, None) for label in labels}
    ids = dict(session.execute(select(Account.label, Account.id).where(Account.label.in_(list(labels)))).all())
    for label, account_id in ids.items():
        # Both read the (account_id, finished_at) key backwards: cheap however long the history.
        last_poll = session.execute(select(func.max(Poll.finished_at)).where(Poll.account_id == account_id)).scalar()
        last_ok = session.execute(
            select(func.max(Poll.finished_at)).where(Poll.account_id == account_id, Poll.outcome == "ok")
        ).scalar()
        since = select(func.count()).select_from(Poll).where(Poll.account_id == account_id)
        if last_ok is not None:
            since = since.where(Poll.finished_at > last_ok)
        health[label] = AccountHealth(last_poll, last_ok, session.execute(since).scalar_one())
    return health
