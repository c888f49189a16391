"""Synthetic tran_ids split by parity; API entries stored with tranId 0 or below re-keyed.

No table changes. The key (account, income_type, tran_id, asset) now gives an API entry that
Binance sent without a usable id (tranId 0, or negative) an odd negative synthetic id from its
content, and an account-statement row an even negative one (recorder/ledger/keys.py):

    account-statement rows  an odd stored id moves to the even number below it, as
                            imports.statement_tran_id now folds it (re-imports match by content,
                            never by id, so nothing is imported twice);
    api rows with tran_id <= 0
                            at most one per (type, id, asset) could be stored before, so each is
                            occurrence 0 of its content: the id the sync now gives it, so the next
                            sync's overlap meets it instead of storing it again.

The hash is copied here, not imported: a migration must give the same ids whatever the code
becomes. Downgrade leaves the ids as they are: the old code reads any negative id as an id.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from alembic import op

import recorder.db_types

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_entries = sa.table(
    "income_entries",
    sa.column("id", sa.BigInteger()),
    sa.column("time", recorder.db_types.UtcDateTime(timezone=True)),
    sa.column("income_type", sa.String()),
    sa.column("tran_id", sa.BigInteger()),
    sa.column("asset", sa.String()),
    sa.column("income", recorder.db_types.ExactDecimal()),
    sa.column("symbol", sa.String()),
    sa.column("info", sa.String()),
    sa.column("trade_id", sa.String()),
    sa.column("source", sa.String()),
)


def _api_tran_id(time_ms: int, income_type: str, asset: str, income, symbol: str, info: str, trade_id: str,
                 tran_id: int, occurrence: int) -> int:
    """recorder.ledger.keys.api_tran_id as of this revision."""
    content = [time_ms, income_type, asset, format(income.normalize(), "f"), symbol, info, trade_id, tran_id,
               occurrence]
    text = json.dumps(content, separators=(",", ":"))
    digest = int.from_bytes(hashlib.sha256(("api|" + text).encode()).digest()[:8], "big")
    return -1 - 2 * (digest % 2**62)


def upgrade() -> None:
    connection = op.get_bind()
    c = _entries.c
    # SQL's % keeps the dividend's sign on both backends: an odd negative id gives -1, and adding it
    # is the step down to the even number (-(2^63 - 1) becomes -2^63, still a BIGINT).
    connection.execute(
        sa.update(_entries)
        .where(c.source == "account-statement", c.tran_id < 0, c.tran_id % 2 != 0)
        .values(tran_id=c.tran_id + c.tran_id % 2)
    )
    rows = connection.execute(
        sa.select(c.id, c.time, c.income_type, c.tran_id, c.asset, c.income, c.symbol, c.info, c.trade_id)
        .where(c.source == "api", c.tran_id <= 0)
    ).all()
    for row in rows:
        time = row.time if row.time.tzinfo else row.time.replace(tzinfo=timezone.utc)
        time_ms = (time - _EPOCH) // timedelta(milliseconds=1)
        new_id = _api_tran_id(time_ms, row.income_type, row.asset, row.income, row.symbol, row.info, row.trade_id,
                              row.tran_id, 0)
        connection.execute(sa.update(_entries).where(c.id == row.id).values(tran_id=new_id))


def downgrade() -> None:
    pass
