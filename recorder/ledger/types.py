"""The income types of `GET /fapi/v1/income` we know, and where each goes in a roll-forward.

Binance adds types without notice (SPECIAL_FUNDING_FEE appeared in 2026), so a type not in
KNOWN_INCOME_TYPES is stored and flagged, never dropped or treated as zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# As Binance spells them (DELIVERED_SETTELMENT is Binance's own typo).
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

_GROUPS = {
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
# Every known type not named above (AUTO_EXCHANGE, INSURANCE_CLEAR, ...) goes to "other";
# so does an unknown type.
ROLL_FORWARD_GROUPS: Mapping[str, str] = MappingProxyType(
    {income_type: _GROUPS.get(income_type, "other") for income_type in sorted(KNOWN_INCOME_TYPES)}
)

