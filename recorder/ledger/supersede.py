"""File entries without Binance's key that an exact entry now also records: dropped in the sync's transaction.

An account statement CSV carries no tranId, and a futures export's row with Transaction ID 0 or
below none that can key it, so such entries get synthetic ids and cannot meet the API's entries on
the archive's key. This is the import's match rule run the other way, on Core tables only, so the
running service's ledger sync loads no ORM.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, delete, or_, select, update

from recorder.ledger.types import ACCOUNT_STATEMENT, FUTURES_EXPORT
from recorder.tables import derived_balances, income_entries


def supersede_statement_entries(session: Any, account_id: int, since: datetime, until: datetime) -> int:
    """Drop file entries without Binance's key that an exact entry (API, or a keyed export row) now also records.

    Those are account-statement entries and futures-export entries whose row had no usable
    Transaction ID (stored under a synthetic, negative id; 0 by imports before that rule).
    For the ledger sync to call after it stored entries with time in [since, until), so a file
    imported before the API caught up leaves no duplicate. Per (income type, asset, time to the
    second, amount), as many unkeyed file entries as exact ones are dropped; a derived balance that
    followed a dropped entry follows its exact twin. Returns how many were dropped.
    `session`: an ORM Session or the write path's CoreSession (both have execute()).
    """
    entries = income_entries.c
    in_range = (entries.account_id == account_id, entries.time >= since.replace(microsecond=0), entries.time < until)
    unkeyed = or_(entries.source == ACCOUNT_STATEMENT, and_(entries.source == FUTURES_EXPORT, entries.tran_id <= 0))
    # Most accounts never import such a file: then one indexed probe, not every entry read back.
    if session.execute(select(entries.id).where(*in_range, unkeyed).limit(1)).first() is None:
        return 0
    rows = session.execute(
        select(entries.id, entries.source, entries.tran_id, entries.income_type, entries.asset, entries.time,
               entries.income)
        .where(*in_range)
        .order_by(entries.time, entries.id)
    ).all()
    exact: dict[tuple[str, str, datetime, Decimal], list[int]] = {}
    copies: dict[tuple[str, str, datetime, Decimal], list[int]] = {}
    for row in rows:
        key = (row.income_type, row.asset, row.time.replace(microsecond=0), row.income)
        is_copy = row.source == ACCOUNT_STATEMENT or (row.source == FUTURES_EXPORT and row.tran_id <= 0)
        (copies if is_copy else exact).setdefault(key, []).append(row.id)
    dropped = 0
    for key, copy_ids in copies.items():
        for copy_id, exact_id in zip(copy_ids, exact.get(key, [])):
            session.execute(update(derived_balances).where(derived_balances.c.income_entry_id == copy_id)
                            .values(income_entry_id=exact_id))
            session.execute(delete(income_entries).where(income_entries.c.id == copy_id))
            dropped += 1
    return dropped
