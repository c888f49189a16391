"""GET /sapi/v1/accountSnapshot?type=FUTURES: each UTC day's wallet balance per asset, from a history.

Binance serves this on the spot API host; the simulator serves it on its own address, which is
where the client sends it for a loopback base URL. Each day's snapshot is stamped 23:59:59.999 UTC
and carries every asset's walletBalance at that instant: the latest state of the account's wallet
history at or before it (`ExchangeSimulator.set_wallet_history`), or, after the history ends, the
account's current row when its updateTime is before the stamp. Only the last 30 days are kept,
and only days that have ended. https://developers.binance.com/docs/wallet/account/daily-account-snapshoot
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from decimal import Decimal
from typing import Any
from urllib.parse import unquote_plus

from recorder.simulator.responses import _Response, _error, _json

SNAPSHOT_PATH = "/sapi/v1/accountSnapshot"
SNAPSHOT_PARAMS = frozenset({"type", "startTime", "endTime", "limit"})
_DAY_MS = 86_400_000
_KEPT_DAYS = 30


class _WalletHistory:
    """One account's wallet balance per asset over time: sorted (time_ms, balance text) states."""

    def __init__(self) -> None:
        self.states: dict[str, list[tuple[int, str]]] = {}

    def replace(self, states: Iterable[tuple[int, str, str]]) -> None:
        """Replace the history with (time_ms, asset, walletBalance) states."""
        by_asset: dict[str, list[tuple[int, str]]] = {}
        for time_ms, asset, balance in states:
            by_asset.setdefault(asset, []).append((int(time_ms), format(Decimal(balance), "f")))
        # Stable by time only: of two states in one millisecond the later given is the one that holds.
        self.states = {asset: sorted(rows, key=lambda row: row[0]) for asset, rows in by_asset.items()}

    def at(self, asset: str, time_ms: int) -> str | None:
        """The asset's balance at time_ms (its latest state then), or None before the history starts."""
        rows = self.states.get(asset, [])
        index = bisect_right(rows, time_ms, key=lambda row: row[0])
        return rows[index - 1][1] if index else None

    def last_time(self, asset: str) -> int | None:
        """When the asset's last recorded state began."""
        rows = self.states.get(asset)
        return rows[-1][0] if rows else None


def _snapshot_response(history: _WalletHistory, rows: list[dict[str, Any]], query: str, now_ms: int) -> _Response:
    """The answer to one authenticated request (its signature already checked)."""
    params = {name: unquote_plus(value) for name, _, value in (part.partition("=") for part in query.split("&"))}
    if params.get("type") != "FUTURES":
        # Only the futures account exists here; Binance also knows SPOT and MARGIN.
        return _error(400, -1102, "Mandatory parameter 'type' was not sent, was empty/null, or malformed.")
    try:
        limit = int(params.get("limit", "7"))
        start = int(params["startTime"]) if "startTime" in params else None
        end = int(params["endTime"]) if "endTime" in params else None
    except ValueError:
        return _error(400, -1100, "Illegal characters found in a parameter.")
    if not 7 <= limit <= 30:
        return _error(400, -1130, "Data sent for parameter 'limit' is not valid.")
    if start is not None and end is not None:
        if start > end:
            return _error(400, -1023, "Start time is greater than end time.")
        if end - start >= 30 * _DAY_MS:
            return _error(400, -1127, "Lookup interval is too big.")
    last_stamp = now_ms // _DAY_MS * _DAY_MS - 1  # the end of the last finished UTC day
    stamps = [last_stamp - day * _DAY_MS for day in range(_KEPT_DAYS)][::-1]
    stamps = [s for s in stamps if (start is None or s >= start) and (end is None or s <= end)]
    stamps = stamps[:limit] if start is not None else stamps[-limit:]
    days = []
    for stamp in stamps:
        assets = []
        for asset in sorted({*history.states, *(row.get("asset") for row in rows)}):
            balance = _balance_at(history, rows, asset, stamp)
            if balance is not None:
                # marginBalance is documented as "can be ignored" (not updated in real time).
                assets.append({"asset": asset, "marginBalance": balance, "walletBalance": balance})
        days.append({"type": "futures", "updateTime": stamp, "data": {"assets": assets, "position": []}})
    return _json(200, {"code": 200, "msg": "", "snapshotVos": days})


def _balance_at(history: _WalletHistory, rows: list[dict[str, Any]], asset: str, stamp: int) -> str | None:
    current = next((row for row in rows if row.get("asset") == asset), None)
    last = history.last_time(asset)
    if current is not None and (last is None or last <= int(current.get("updateTime", 0))):
        # The current row is newer than the history: it holds from its updateTime on.
        if 0 < int(current.get("updateTime", 0)) <= stamp:
            return str(current.get("balance"))
    return history.at(asset, stamp)
