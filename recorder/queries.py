"""Read the recorded history: distinct states, as-of balances, diffs, change log, series, gaps.

Every function takes a Session and an account label, takes and returns aware UTC datetimes,
and returns frozen dataclasses; money stays Decimal end to end. Ranges are half-open,
`since <= t < until`, so consecutive ranges never count an event twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from recorder.errors import ConfigError
from recorder.models import AMOUNT_FIELDS, Account, Balance, BalanceHead

_STATE_COLUMNS = (
    Balance.asset,
    Balance.observed_at,
    Balance.present,
    *(getattr(Balance, name) for name in AMOUNT_FIELDS),
    Balance.margin_available,
    Balance.update_time,
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
    account_id = find_account(session, account).id
    query = _states().where(Balance.account_id == account_id)
    if assets:
        query = query.where(Balance.asset.in_(list(assets)))
    if since is not None:
        query = query.where(Balance.observed_at >= since)
    if until is not None:
        query = query.where(Balance.observed_at < until)
    query = query.order_by(Balance.observed_at, Balance.asset)
    return [AssetState(*row) for row in session.execute(query)]


def _states() -> Select:
    return select(*_STATE_COLUMNS)
