"""A demanding account: every ledger quirk Binance documents or is known to show, at once.

`ExchangeSimulator(demanding=True)` moves accounts with `_move_demanding` instead of the plain
market step. What it adds, each something a recorder must get right to the last unit:

- a trade's REALIZED_PNL and COMMISSION are stamped at the fill, up to 40 ms before the account
  update that carries them (entry `time` < the asset's `updateTime`), and the entries become
  visible in the ledger only at that update (booked late, after their own `time`);
- served first, moved after: with `auto_move` the balance body is taken before the step, so an
  entry stamped before the served moment is not in the state served (only `updateTime`
  matching places it right, never the poll time);
- several entries in one millisecond (a fill's PnL and commission; funding of several symbols);
- FUNDING_FEE and TRANSFER exactly on the state's `updateTime` (the poll boundary);
- a BNB commission (the BNB fee discount) moving BNB, not USDT;
- AUTO_EXCHANGE in multi-assets mode: BNB converted into USDT, two legs sharing one tranId;
- INSURANCE_CLEAR, and an income type no recorder knows today (UNKNOWN_INCOME_TYPE);
- `_book_burst`: more entries in one millisecond than one page holds.

The invariant kept (the only one a recorder may rely on): a state served with `updateTime` U
includes every entry whose `time` <= U, and none after. So an asset's state changes at most
once per millisecond, and a fill is never stamped at or before the previous update.

Every wallet move is also written to the account's true history (time, asset, balance), which
tests compare a derived timeline with and GET /sapi/v1/accountSnapshot answers from.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from recorder.simulator.market import _Account, _money, _units

# Invented on purpose: a type Binance may add tomorrow, which a recorder must store and flag.
UNKNOWN_INCOME_TYPE = "UNANNOUNCED_ADJUSTMENT"
_FILL_LAG_MAX_MS = 40
_MOVED = ("balance", "crossWalletBalance", "availableBalance", "maxWithdrawAmount")


def _record_initial_history(account: _Account) -> None:
    if account.history:
        return
    for row in account.rows:
        update_time = row.get("updateTime")
        if isinstance(update_time, int) and "balance" in row:
            account.history.append((update_time, str(row["asset"]), str(row["balance"])))


def _apply(account: _Account, row: dict[str, Any], delta: Decimal, now: int) -> None:
    """Move one asset's wallet by `delta` at `now`: its amounts, updateTime and true history."""
    for key in _MOVED:
        row[key] = _money(Decimal(row[key]) + delta)
    row["updateTime"] = now
    account.history.append((now, str(row["asset"]), row["balance"]))


def _last_update(rows: list[dict[str, Any] | None]) -> int:
    return max((int(row.get("updateTime") or 0) for row in rows if row is not None), default=0)


def _move_demanding(account: _Account, now: int, *, fill: bool = False) -> None:
    """One step of a demanding account at exchange time `now` (epoch ms); draws replay from the seed.

    fill=True makes the step a trade whatever the draw says (the step after a served answer, so
    that every answer has a fill stamped before the moment it was served).
    """
    by_asset = {row.get("asset"): row for row in account.rows}
    usdt, bnb = by_asset.get("USDT"), by_asset.get("BNB")
    if usdt is None or bnb is None:
        return
    if now <= _last_update([usdt, bnb]):
        return  # one state per asset per millisecond: a served updateTime then covers all of its entries
    _record_initial_history(account)
    rng, ledger = account.rng, account.ledger
    account.steps += 1
    wallet, bnb_wallet = Decimal(usdt["balance"]), Decimal(bnb["balance"])
    fill_ms = max(_last_update([usdt, bnb]) + 1, now - rng.randint(0, _FILL_LAG_MAX_MS))
    # Every draw is made whatever the outcome, so a seed replays the same moves.
    trades, pnl_units, fee_units = rng.random() < 0.5, rng.randint(-300_000, 300_000), rng.randint(100, 20_000)
    bnb_fee, bnb_fee_units = rng.random() < 0.25, rng.randint(1_000, 100_000)
    funding, symbols, funding_units = rng.random() < 0.25, rng.randint(1, 4), rng.randint(-5_000, 5_000)
    transfer, transfer_units, transfer_out = rng.random() < 0.06, rng.randint(1, 50_000), rng.random() < 0.4
    insurance, insurance_units = rng.random() < 0.03, rng.randint(1, 2_000_000)
    unknown, unknown_units = rng.random() < 0.03, rng.randint(-1_000_000, 1_000_000)
    exchange, exchange_units = rng.random() < 0.04, rng.randint(100_000, 1_000_000)
    drift = rng.randint(-200_000, 200_000)
    # (incomeType, asset, amount, time, tranId, symbol, tradeId), in booking order.
    entries: list[tuple[str, str, Decimal, int, int, str, str]] = []
    if (trades or fill) and wallet > 0:
        trade = ledger.next_tran_id()
        entries.append(("REALIZED_PNL", "USDT", (wallet * _units(pnl_units)).quantize(_units(1)), fill_ms, trade,
                        "BTCUSDT", str(trade)))
        fee = _units(bnb_fee_units)
        if bnb_fee and bnb_wallet >= fee:
            entries.append(("COMMISSION", "BNB", -fee, fill_ms, trade, "BTCUSDT", str(trade)))
            bnb_wallet -= fee
        else:
            entries.append(("COMMISSION", "USDT", -(wallet * _units(fee_units)).quantize(_units(1)), fill_ms, trade,
                            "BTCUSDT", str(trade)))
    if funding and wallet > 0:
        for index in range(symbols):
            amount = (wallet * _units(funding_units + index * 7)).quantize(_units(1))
            entries.append(("FUNDING_FEE", "USDT", amount, now, ledger.next_tran_id(big=True),
                            ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT")[index], ""))
    if transfer:
        amount = _units(transfer_units * 1_000_000)
        if transfer_out and wallet > amount * 2:
            amount = -amount
        entries.append(("TRANSFER", "USDT", amount, now, ledger.next_tran_id(), "", ""))
    if insurance:
        entries.append(("INSURANCE_CLEAR", "USDT", -_units(insurance_units), fill_ms, ledger.next_tran_id(),
                        "ETHUSDT", ""))
    if unknown:
        entries.append((UNKNOWN_INCOME_TYPE, "USDT", _units(unknown_units), now, ledger.next_tran_id(), "", ""))
    sold = min(_units(exchange_units), (bnb_wallet / 2).quantize(_units(1)))
    if exchange and sold > 0:
        # Multi-assets mode: BNB sold to cover USDT, one tranId for both legs, both assets at once.
        tran_id = ledger.next_tran_id()
        entries.append(("AUTO_EXCHANGE", "BNB", -sold, now, tran_id, "", ""))
        entries.append(("AUTO_EXCHANGE", "USDT", (sold * Decimal("612.5")).quantize(_units(1)), now, tran_id, "", ""))
    moved: dict[str, Decimal] = {}
    for income_type, asset, amount, time_ms, tran_id, symbol, trade_id in entries:
        if not amount:
            continue
        ledger.book(income_type, asset, amount, time_ms, tran_id=tran_id, symbol=symbol, trade_id=trade_id)
        moved[asset] = moved.get(asset, Decimal(0)) + amount
    for asset, delta in moved.items():
        if delta:
            _apply(account, by_asset[asset], delta, now)
    # The open position's unrealized PnL moves every step: a new state row with no wallet move.
    unpnl = Decimal(usdt["crossUnPnl"]) * Decimal("0.9") + Decimal(usdt["crossWalletBalance"]) * _units(drift)
    usdt["crossUnPnl"] = _money(unpnl)
    ledger.prune(now)


def _book_burst(account: _Account, count: int, now: int) -> int:
    """`count` FUNDING_FEE entries in the one millisecond `now`, moving USDT by their sum; the time used.

    `now` is moved past the assets' last update, so the burst is a state of its own.
    """
    by_asset = {row.get("asset"): row for row in account.rows}
    usdt = by_asset["USDT"]
    _record_initial_history(account)
    now = max(now, _last_update(list(by_asset.values())) + 1)
    ledger = account.ledger
    total = Decimal(0)
    for index in range(count):
        amount = -_units(1_000 + index)
        ledger.book("FUNDING_FEE", "USDT", amount, now, tran_id=ledger.next_tran_id(big=True),
                    symbol=f"S{index:04d}USDT")
        total += amount
    _apply(account, usdt, total, now)
    return now
