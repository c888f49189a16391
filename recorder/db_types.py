"""Column types that keep money exact and time in UTC on SQLite and PostgreSQL.

Migrations import these by this module path (`recorder.db_types.ExactDecimal`): never move it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import DateTime, Dialect, Numeric, String
from sqlalchemy.types import TypeDecorator, TypeEngine


def decimal_text(value: Decimal) -> str:
    """Canonical plain notation (`0.00000001`, never `1E-8`), keeping the scale Binance sent."""
    return format(value, "f")


class ExactDecimal(TypeDecorator[Decimal]):
    """Exact decimal: NUMERIC on PostgreSQL, plain-notation TEXT on SQLite.

    SQLite's REAL keeps ~15 significant digits and its NUMERIC affinity converts to REAL,
    so TEXT is the only exact storage there; the decimal SQL functions (`decimal_sum`,
    `COLLATE decimal`) make it sortable and summable in SQL (see recorder.db).
    """

    impl = Numeric
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String())
        # No precision/scale: PostgreSQL NUMERIC then keeps any value and its scale exactly.
        return dialect.type_descriptor(Numeric(asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, Decimal) or isinstance(value, bool):
            raise TypeError(f"ExactDecimal takes Decimal, not {type(value).__name__}")
        if not value.is_finite():
            raise ValueError(f"ExactDecimal cannot store {value}")
        return decimal_text(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if isinstance(value, Decimal):
            return value
        if isinstance(value, float):
            raise TypeError("ExactDecimal read a float: the column lost exactness")
        return Decimal(str(value))


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetime; naive values are refused instead of guessed.

    PostgreSQL stores TIMESTAMP WITH TIME ZONE; SQLite stores fixed-width
    `YYYY-MM-DD HH:MM:SS.ffffff` text in UTC, which sorts and compares as time.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"UtcDateTime takes datetime, not {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("UtcDateTime refuses a naive datetime: attach a time zone")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def aware_utc(value: datetime | str | None) -> datetime | None:
    """A value read from a UtcDateTime column as an aware UTC datetime.

    An aggregate over the column (max(), min()) comes back untyped on SQLite (ISO text, no
    offset); the column's own values come back aware already.
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
