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


@dataclass(frozen=True)
class IncomeRecord:
    """One entry of GET /fapi/v1/income, every field kept, the amount exact."""

    time: datetime
    # Binance's `time` in epoch ms, kept beside `time` because pagination works in it.
    time_ms: int
    income_type: str
    # A Java long: may exceed 2**53, so it is an int all the way (never a float).
    tran_id: int
    asset: str
    income: Decimal
    symbol: str
    info: str
    trade_id: str

    @property
    def key(self) -> tuple[str, int, str]:
        """Binance's identity of an entry within an account: tranId is unique only per type."""
        return (self.income_type, self.tran_id, self.asset)


@dataclass(frozen=True)
class FetchedIncome:
    """One validated page of GET /fapi/v1/income, in the order Binance sent it."""

    entries: tuple[IncomeRecord, ...]
    # X-MBX-USED-WEIGHT-1M of the response; None when Binance did not send it.
    used_weight: int | None
