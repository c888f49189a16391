"""Synthetic tran_ids: the archive's key for entries that come without a usable Binance id.

The archive keys an entry on (account, income type, tran_id, asset). Binance's tranIds are
positive; the negative half of BIGINT is this recorder's own, split by parity so the two kinds
of synthetic id can never meet, whatever their hashes:

    odd  negative  an API entry Binance sent with tranId 0 or below (`api_tran_id`)
    even negative  a file row: an account-statement row, which has no id at all, or a futures-export
                   row with Transaction ID 0 or below (imports.statement_tran_id)

Migration 0012 moved statement ids stored before the split onto even numbers. This module loads
no ORM: the running service's ledger sync uses it.
"""

from __future__ import annotations

import hashlib
import json

from recorder.records import IncomeRecord

_BIGINT = 2**63


def usable_tran_id(tran_id: int) -> bool:
    """Whether Binance's tranId can key an entry: only a positive one.

    0 is what third-party reports say TRANSFER rows may carry, shared by every such row. A
    negative id is no id Binance documents either, and the negative range is where this
    archive's synthetic ids live, so one taken as it is could meet a statement row's.
    """
    return tran_id > 0


def content_key(entry: IncomeRecord) -> tuple[object, ...]:
    """Everything an entry without an id is, as Binance sent it: what tells two of them apart.

    The amount is normalized ("1.0" and "1.00" are one amount); the raw tranId is kept, so entries
    with different negative ids stay apart.
    """
    return (entry.time_ms, entry.income_type, entry.asset, format(entry.income.normalize(), "f"),
            entry.symbol, entry.info, entry.trade_id, entry.tran_id)


def api_tran_id(entry: IncomeRecord, occurrence: int) -> int:
    """The synthetic tran_id of an API entry without a usable id: odd and negative.

    A SHA-256 of its content (`content_key`) and its occurrence: the n-th of identical entries
    in one answer is occurrence n-1. So the same entry fetched again gets the same id, and two
    identical movements in one millisecond stay two entries.
    """
    text = json.dumps([*content_key(entry), occurrence], separators=(",", ":"))
    digest = int.from_bytes(hashlib.sha256(("api|" + text).encode()).digest()[:8], "big")
    return -1 - 2 * (digest % (_BIGINT // 2))


def is_api_synthetic(tran_id: int) -> bool:
    """Whether a stored tran_id is an API entry's synthetic id (odd and negative)."""
    return tran_id < 0 and tran_id % 2 == 1
