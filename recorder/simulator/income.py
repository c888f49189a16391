"""The income ledger of a simulated account, and GET /fapi/v1/income over it.

Every move of an asset's wallet `balance` is booked here as income entries whose amounts sum to
exactly that move, with `time` equal to the asset's new `updateTime`; so the identity Binance
states (wallet balance = transfers + realized PnL + funding - commission) holds on the simulator,
except where a test asks it to withhold an entry. The exchange calls these under its lock.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import unquote_plus

from recorder.simulator.responses import _Response, _error, _json

INCOME_PATH = "/fapi/v1/income"
INCOME_PARAMS = frozenset({"startTime", "endTime", "limit", "page", "incomeType", "symbol"})
# Binance keeps three months; 90 days is the shortest reading of that.
RETENTION_MS = 90 * 86_400_000
_DEFAULT_SPAN_MS = 7 * 86_400_000
_DEFAULT_LIMIT, _MAX_LIMIT = 100, 1000
_MAX_LONG = 2**63 - 1
# Funding fees get tranIds past 2**53, where a float (JavaScript, a naive JSON reader) rounds them.
_BIG_TRAN_ID_BASE = 2**53 + 1


def _money(value: Decimal) -> str:
    return format(value.quantize(Decimal("0.00000001")), "f")


@dataclass
class _IncomeBook:
    """One account's ledger, sorted by (time, booking order), plus what is withheld from answers."""

    rng: random.Random = field(repr=False, default_factory=random.Random)
    entries: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)
    withheld: list[dict[str, Any]] = field(default_factory=list)
    withhold_next: int = 0
    # Not None: every TRANSFER booked from now on carries this tranId (third parties report 0).
    transfer_tran_id: int | None = None
    _order: int = 0
    _trade_ids: int = 1_000_000_000
    _big_ids: int = _BIG_TRAN_ID_BASE

    def next_tran_id(self, *, big: bool = False) -> int:
        """A fresh tranId; `big` ones exceed 2**53."""
        if big:
            self._big_ids += 7
            return self._big_ids
        self._trade_ids += 1
        return self._trade_ids

    def book(self, income_type: str, asset: str, amount: Decimal, time_ms: int, *, tran_id: int,
             symbol: str = "", info: str = "", trade_id: str = "") -> None:
        """Book one entry (the wallet has moved by `amount`), unless it is to be withheld."""
        if income_type == "TRANSFER" and self.transfer_tran_id is not None:
            tran_id = self.transfer_tran_id
        row = {"symbol": symbol, "incomeType": income_type, "income": _money(amount), "asset": asset,
               "info": info, "time": time_ms, "tranId": tran_id, "tradeId": trade_id}
        if self.withhold_next > 0:
            self.withhold_next -= 1
            self.withheld.append(row)
            return
        self.add(row)

    def add(self, row: dict[str, Any]) -> None:
        """Insert a wire row as it is (tests plant odd ones: unknown types, one crowded millisecond)."""
        self._order += 1
        time_ms = row.get("time")
        bisect.insort(self.entries, (time_ms if isinstance(time_ms, int) else 0, self._order, row),
                      key=lambda item: (item[0], item[1]))

    def served(self, start_ms: int, end_ms: int, now_ms: int) -> list[dict[str, Any]]:
        """Entries with start <= time <= end that Binance still keeps, oldest first."""
        start_ms = max(start_ms, now_ms - RETENTION_MS)
        low = bisect.bisect_left(self.entries, start_ms, key=lambda item: item[0])
        high = bisect.bisect_right(self.entries, end_ms, key=lambda item: item[0])
        return [row for _, _, row in self.entries[low:high]]

    def prune(self, now_ms: int) -> None:
        """Forget what is past retention, so a long-running simulator's memory stays bounded by it."""
        cut = bisect.bisect_left(self.entries, now_ms - RETENTION_MS, key=lambda item: item[0])
        if cut:
            del self.entries[:cut]


def _long(values: dict[str, str], name: str) -> int | None | _Response:
    text = values.get(name)
    if text is None:
        return None
    if not text.isdigit() or len(text) > 19 or int(text) > _MAX_LONG:
        return _error(400, -1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.")
    return int(text)


def _income_response(book: _IncomeBook, query: str, now_ms: int, *, pages: bool = True) -> _Response:
    """GET /fapi/v1/income: Binance's parameters, defaults and errors, oldest first.

    pages=False answers as Binance did before `page` existed (2024-10): accepted, and ignored.
    """
    values = {unquote_plus(name): unquote_plus(value)
              for name, _, value in (part.partition("=") for part in query.split("&"))}
    numbers: dict[str, int | None] = {}
    for name in ("startTime", "endTime", "limit", "page"):
        parsed = _long(values, name)
        if isinstance(parsed, _Response):
            return parsed
        numbers[name] = parsed
    limit = _DEFAULT_LIMIT if numbers["limit"] is None else numbers["limit"]
    if not 1 <= limit <= _MAX_LIMIT:
        return _error(400, -1130, "Data sent for parameter 'limit' is not valid.")
    page = 1 if numbers["page"] is None else numbers["page"]
    if page < 1:
        return _error(400, -1130, "Data sent for parameter 'page' is not valid.")
    if not pages:
        page = 1
    start, end = numbers["startTime"], numbers["endTime"]
    # Binance: with neither time, the most recent 7 days.
    if start is None and end is None:
        start, end = now_ms - _DEFAULT_SPAN_MS, now_ms
    elif start is None:
        start = end - _DEFAULT_SPAN_MS
    elif end is None:
        end = now_ms
    if start > end:
        return _error(400, -1023, "Start time is greater than end time.")
    rows = book.served(start, end, now_ms)
    if "incomeType" in values:
        rows = [row for row in rows if row.get("incomeType") == values["incomeType"]]
    if "symbol" in values:
        rows = [row for row in rows if row.get("symbol") == values["symbol"]]
    offset = (page - 1) * limit
    return _json(200, rows[offset:offset + limit])


# Faults that corrupt a real income page instead of a balance body.
_CORRUPTING = frozenset({"bad-decimal", "wrong-type", "missing-field", "truncated-json"})


def _corrupt_income(fault_name: str, rows: list[dict[str, Any]]) -> _Response:
    """The page `rows` with the defect the fault names; an empty ledger gets a planted row to spoil."""
    rows = [dict(row) for row in rows] or [{"symbol": "", "incomeType": "TRANSFER", "income": "1.00000000",
                                            "asset": "USDT", "info": "", "time": 1, "tranId": 1, "tradeId": ""}]
    match fault_name:
        case "bad-decimal":
            rows[-1]["income"] = "12.3.4"
        case "wrong-type":
            # A float tranId: a reader that accepted it would have rounded a Java long.
            rows[-1]["tranId"] = float(rows[-1]["tranId"]) + 0.5
        case "missing-field":
            del rows[-1]["tradeId"]
    body = _json(200, rows).body
    if fault_name == "truncated-json":
        return _Response(200, body[: len(body) // 2])
    return _Response(200, body)
