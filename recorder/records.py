"""Plain data read from the exchange: what the client returns and the store saves."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal


@dataclass(frozen=True)
class AssetBalance:
    """One asset row of /fapi/v2|v3/balance, amounts exact as Binance sent them."""

    asset: str
    balance: Decimal
    cross_wallet_balance: Decimal
    cross_un_pnl: Decimal
    available_balance: Decimal
    max_withdraw_amount: Decimal
    margin_available: bool
    update_time: datetime


@dataclass(frozen=True)
class FetchedBalances:
    """A whole, validated balance response: every asset of one account at one moment."""

    account_alias: str
    assets: tuple[AssetBalance, ...]
    endpoint: str
    # X-MBX-USED-WEIGHT-1M of the response; None when Binance did not send it.
    used_weight: int | None
