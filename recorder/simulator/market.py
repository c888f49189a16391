"""The simulated market: accounts, their balance rows as Binance sends them, and how they move.

The exchange calls `_move` and `_wire_rows` under its lock.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from recorder.simulator.income import _IncomeBook

_Q8 = Decimal("0.00000001")
# Binance's answer for a key with only "Enable Reading" ticked (api-key-permission docs).
READ_ONLY_RESTRICTIONS: dict[str, Any] = {
    "ipRestrict": False,
    "createTime": 1623840271000,
    "enableReading": True,
    "enableWithdrawals": False,
    "enableInternalTransfer": False,
    "enableMargin": False,
    "enableFutures": False,
    "permitsUniversalTransfer": False,
    "enableVanillaOptions": False,
    "enableFixApiTrade": False,
    "enableFixReadOnly": True,
    "enableSpotAndMarginTrading": False,
    "enablePortfolioMarginTrading": False,
}


@dataclass
class _Account:
    api_key: str
    api_secret: str = field(repr=False)
    alias: str
    rows: list[dict[str, Any]]
    rng: random.Random = field(repr=False)
    steps: int = 0
    # An Ed25519 or RSA public key (a `cryptography` object) for asymmetric accounts; None for HMAC.
    public_key: Any = field(default=None, repr=False)
    # GET /sapi/v1/account/apiRestrictions: what the key may do; a read-only key by default.
    restrictions: dict[str, Any] = field(default_factory=lambda: dict(READ_ONLY_RESTRICTIONS))
    # Every wallet move below is booked here too (GET /fapi/v1/income).
    ledger: _IncomeBook = field(default_factory=_IncomeBook, repr=False)
    # A demanding account's true wallet history, (time_ms, asset, balance) per move (simulator.strict).
    history: list[tuple[int, str, str]] = field(default_factory=list, repr=False)


def _money(value: Decimal) -> str:
    # Plain notation with exactly 8 places, as Binance sends; "-0.00000000" never appears.
    q = value.quantize(_Q8)
    return format(q.copy_abs() if q.is_zero() else q, "f")


def _units(n: int) -> Decimal:
    return Decimal(n).scaleb(-8)


def _default_rows(now_ms: int) -> list[dict[str, Any]]:
    def row(asset: str, amount: str, update_time: int) -> dict[str, Any]:
        return {"asset": asset, "balance": amount, "crossWalletBalance": amount,
                "crossUnPnl": "0.00000000", "availableBalance": amount, "maxWithdrawAmount": amount,
                "marginAvailable": True, "updateTime": update_time}

    # updateTime 0 marks assets the account never touched, as Binance's placeholder rows do.
    return [
        row("USDT", "10342.57183620", now_ms - 3_600_000),
        row("BNB", "0.84213500", now_ms - 86_400_000),
        row("BTC", "0.00000000", 0),
        row("ETH", "0.00000000", 0),
        row("USDC", "0.00000000", now_ms - 30 * 86_400_000),
        row("FDUSD", "0.00000000", 0),
        row("BFUSD", "0.00000000", 0),
        row("TUSD", "0.00000000", 0),
    ]


def _move(account: _Account, now: int) -> None:
    """Advance one account's market one step; now is the exchange clock in epoch ms."""
    rng = account.rng
    account.steps += 1
    by_asset = {row.get("asset"): row for row in account.rows}
    try:
        _move_usdt(account, by_asset.get("USDT"), now)
        bnb = by_asset.get("BNB")
        # BNB only moves when it pays a fee (the "pay fees with BNB" discount), and rarely.
        if rng.random() < 0.05 and bnb is not None:
            wallet = Decimal(bnb["balance"])
            fee = min(wallet, _units(rng.randint(10_000, 200_000)))
            if fee > 0:
                for key in ("balance", "crossWalletBalance", "availableBalance", "maxWithdrawAmount"):
                    bnb[key] = _money(max(Decimal(bnb[key]) - fee, Decimal(0)))
                bnb["updateTime"] = now
                account.ledger.book("COMMISSION", "BNB", -fee, now, tran_id=account.ledger.next_tran_id(),
                                    symbol="BTCUSDT")
        account.ledger.prune(now)
    except (InvalidOperation, KeyError, TypeError):
        # Rows planted through set_balances may be deliberately malformed; leave them as they are.
        pass


def _move_usdt(account: _Account, row: dict[str, Any] | None, now: int) -> None:
    if row is None:
        return
    rng = account.rng
    wallet, cross = Decimal(row["balance"]), Decimal(row["crossWalletBalance"])
    if cross <= 0:
        return  # no collateral, so no position
    # Draws are made in a fixed order regardless of outcome so a seed replays exactly.
    drift = cross * _units(rng.randint(-200_000, 200_000))  # +/-0.2 % of the wallet per step
    commission = cross * _units(rng.randint(100, 30_000)) if rng.random() < 0.3 else Decimal(0)
    funding = cross * _units(rng.randint(-5_000, 5_000)) if account.steps % 8 == 0 else Decimal(0)
    realize = rng.random() < 0.08
    # Mean reversion keeps the open position's PnL plausible over a long demo.
    unpnl = (Decimal(row["crossUnPnl"]) * Decimal("0.9") + drift).quantize(_Q8)
    # Each amount is rounded on its own, so the wallet moves by exactly the sum of its entries.
    funding, commission = funding.quantize(_Q8), commission.quantize(_Q8)
    realized = (unpnl / 2).quantize(_Q8) if realize else Decimal(0)
    unpnl -= realized
    # Transfers draw from the ledger's own generator, so the balance moves above replay as before.
    ledger = account.ledger
    transfer = Decimal(0)
    if ledger.rng.random() < 0.02:
        transfer = _units(ledger.rng.randint(1, 50_000) * 1_000_000)  # 0.01 to 500 USDT
        if ledger.rng.random() < 0.4 and wallet > transfer * 2:
            transfer = -transfer
    trade = ledger.next_tran_id()
    entries = [("REALIZED_PNL", realized, trade), ("COMMISSION", -commission, trade),
               ("FUNDING_FEE", funding, None), ("TRANSFER", transfer, None)]
    booked = Decimal(0)
    for income_type, amount, tran_id in entries:
        if not amount:
            continue
        booked += amount
        symbol = "" if income_type == "TRANSFER" else "BTCUSDT"
        trade_id = str(tran_id) if tran_id is not None else ""
        if tran_id is None:
            tran_id = ledger.next_tran_id(big=income_type == "FUNDING_FEE")
        ledger.book(income_type, "USDT", amount, now, tran_id=tran_id, symbol=symbol, trade_id=trade_id)
    if booked:
        wallet += booked
        cross += booked
        row["updateTime"] = now
    margin = (cross * Decimal("0.05")).quantize(_Q8)  # initial margin of the open position
    available = max(cross + unpnl - margin, Decimal(0))
    row["balance"], row["crossWalletBalance"] = _money(wallet), _money(cross)
    row["crossUnPnl"] = _money(unpnl)
    row["availableBalance"] = _money(available)
    # Unrealized profit counts as margin but cannot be transferred out.
    row["maxWithdrawAmount"] = _money(max(available - max(unpnl, Decimal(0)), Decimal(0)))


def _wire_rows(account: _Account) -> list[dict[str, Any]]:
    """The account's rows as served: accountAlias first, then each row's fields, all deep copies."""
    rows = []
    for row in account.rows:
        wire = {"accountAlias": account.alias}
        wire.update((k, copy.deepcopy(v)) for k, v in row.items() if k != "accountAlias")
        rows.append(wire)
    return rows
