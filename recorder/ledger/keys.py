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
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select

from recorder.records import IncomeRecord
from recorder.tables import income_entries

Key = tuple[str, int, str]  # (income type, tran_id, asset), with the account the archive's key

# Keys per SELECT when looking keys up in the archive: far below any bound-parameter limit.
_LOOKUP_CHUNK = 500

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


def archived_with_keys(connection: Any, account_id: int, keys: Iterable[Key]) -> dict[Key, Any]:
    """The archived rows (time, income, symbol, info, trade_id, source) holding any of `keys`, by key.

    `connection`: a Connection or a Session. The type is asked too, so the lookup walks the unique
    key's index (account, type, tran_id, asset) instead of every entry of the account.
    """
    c = income_entries.c
    wanted = list(dict.fromkeys(keys))
    found: dict[Key, Any] = {}
    for start in range(0, len(wanted), _LOOKUP_CHUNK):
        chunk = set(wanted[start:start + _LOOKUP_CHUNK])
        for row in connection.execute(
            select(c.income_type, c.tran_id, c.asset, c.time, c.income, c.symbol, c.info, c.trade_id, c.source)
            .where(c.account_id == account_id, c.income_type.in_(sorted({key[0] for key in chunk})),
                   c.tran_id.in_(sorted({key[1] for key in chunk})))
        ):
            key = (row.income_type, row.tran_id, row.asset)
            if key in chunk:
                found[key] = row
    return found
