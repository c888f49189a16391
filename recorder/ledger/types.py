"""Income types Binance documents for GET /fapi/v1/income, and how a roll-forward groups them."""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

# Where an archived entry came from besides the API: the two kinds of file a user downloads.
FUTURES_EXPORT, ACCOUNT_STATEMENT = "futures-export", "account-statement"

# Binance's list (typos such as DELIVERED_SETTELMENT are Binance's own) plus SPECIAL_FUNDING_FEE, which
# the official SDK 18.1.0 added in 2026. A type outside this set is stored and flagged, never dropped.
KNOWN_INCOME_TYPES: frozenset[str] = frozenset({
    "TRANSFER",
    "WELCOME_BONUS",
    "REALIZED_PNL",
    "FUNDING_FEE",
    "COMMISSION",
    "INSURANCE_CLEAR",
    "REFERRAL_KICKBACK",
    "COMMISSION_REBATE",
    "API_REBATE",
    "CONTEST_REWARD",
    "CROSS_COLLATERAL_TRANSFER",
    "OPTIONS_PREMIUM_FEE",
    "OPTIONS_SETTLE_PROFIT",
    "INTERNAL_TRANSFER",
    "AUTO_EXCHANGE",
    "DELIVERED_SETTELMENT",
    "COIN_SWAP_DEPOSIT",
    "COIN_SWAP_WITHDRAW",
    "POSITION_LIMIT_INCREASE_FEE",
    "STRATEGY_UMFUTURES_TRANSFER",
    "FEE_RETURN",
    "BFUSD_REWARD",
    "SPECIAL_FUNDING_FEE",
})

_GROUPS: dict[str, str] = {
    "COMMISSION": "fees",
    "COMMISSION_REBATE": "rebates",
    "API_REBATE": "rebates",
    "REFERRAL_KICKBACK": "rebates",
    "FEE_RETURN": "rebates",
    "FUNDING_FEE": "funding",
    "SPECIAL_FUNDING_FEE": "funding",
    "REALIZED_PNL": "realized_pnl",
    "TRANSFER": "transfers",
    "INTERNAL_TRANSFER": "transfers",
    "CROSS_COLLATERAL_TRANSFER": "transfers",
    "STRATEGY_UMFUTURES_TRANSFER": "transfers",
    "COIN_SWAP_DEPOSIT": "transfers",
    "COIN_SWAP_WITHDRAW": "transfers",
}

# Every known type maps to a group; AUTO_EXCHANGE and the rest land in "other". Unknown types are not
# keys here: look them up with roll_forward_group(), which also answers "other" for them.
ROLL_FORWARD_GROUPS: Mapping[str, str] = MappingProxyType(
    {income_type: _GROUPS.get(income_type, "other") for income_type in KNOWN_INCOME_TYPES}
)


def roll_forward_group(income_type: str) -> str:
    """The roll-forward group of an income type; unknown types are "other"."""
    return ROLL_FORWARD_GROUPS.get(income_type, "other")
