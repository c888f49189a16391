"""Make every value of a poll storable before any SQL, on SQLite and PostgreSQL alike.

The exchange (and a spool file) controls text and numbers that end up in our columns. One
value the database refuses (a NUL in a PostgreSQL text column, an integer beyond INTEGER's
int32 on PostgreSQL or int64 on SQLite) would otherwise fail the whole poll's transaction,
and a spooled poll that can never be stored would block every later one. So:

- text loses its control characters (replaced visibly by `\\xNN` escapes: NUL, newlines,
  ESC, lone surrogates) and is cut to its column's length (`String(n)`; our own limit for
  `Text`), bounds read from the tables' column types (recorder.tables);
- an integer outside its column's range on this backend is stored as NULL, and the reason
  (`[used weight 9999... out of range, stored as NULL]`) is appended to the row's
  `error_message`, also on an ok poll;
- an amount or a time that cannot be stored at all (NaN, an exponent of a million, a naive
  time) makes the poll unstorable: `UnstorableValue`, which the caller records as a failed
  poll (live) or sets aside (spooled).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import Any

from sqlalchemy import BigInteger, Integer, SmallInteger, String, Table

from recorder.tables import AMOUNT_FIELDS, accounts, balances
from recorder.records import AssetBalance, FetchedBalances

# The bound of a Text column (the poll log's error message): one readable line, not a dump.
TEXT_LIMIT = 500
# Binance amounts are < 10^20 with 8 decimals; a thousand digits on either side of the point
# keeps anything plausible and stays far inside PostgreSQL NUMERIC's limits (131072 / 16383
# digits) and a sane size as SQLite text (1E+999999999 would be a gigabyte of zeros).
AMOUNT_DIGITS_LIMIT = 1000
# An integer too large to print in full is named by its size (Python refuses str() of
# integers beyond 4300 digits, and a note must stay short).
_PRINTABLE_INTEGER_BITS = 256
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


class UnstorableValue(ValueError):
    """A value no column can hold (NaN, an absurd exponent, a naive time): the poll cannot be stored."""


def clean_text(value: str) -> str:
    """The text with control characters, line breaks and lone surrogates replaced by visible escapes."""
    if value.isprintable():
        return value
    return "".join(_escape(c) if unicodedata.category(c) in _ESCAPED_CATEGORIES else c for c in value)


def _escape(character: str) -> str:
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def text_limit(table: Table, name: str) -> int:
    """How many characters column `name` of `table` keeps: its String length, else TEXT_LIMIT."""
    length = getattr(table.c[name].type, "length", None)
    return length if length else TEXT_LIMIT


def integer_range(table: Table, name: str, dialect: str) -> tuple[int, int]:
    """The smallest and largest integer column `name` holds on `dialect`."""
    column_type = table.c[name].type
    column_type = getattr(column_type, "_variant_mapping", {}).get(dialect, column_type)
    if dialect == "sqlite":
        bits = 64  # SQLite stores every INTEGER in up to 8 bytes, whatever the declared type
    elif isinstance(column_type, SmallInteger):
        bits = 16
    elif isinstance(column_type, BigInteger):
        bits = 64
    else:
        bits = 32  # PostgreSQL INTEGER
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def show_integer(value: int) -> str:
    """An integer for a message: in full when short, else by its size."""
    if abs(value).bit_length() <= _PRINTABLE_INTEGER_BITS:
        return str(value)
    return f"an integer of {abs(value).bit_length()} bits"


def storable_row(
    table: Table, values: Mapping[str, Any], dialect: str, *, note_column: str | None = None
) -> dict[str, Any]:
    """A copy of `values` that `table` can store: text cleaned and cut, out-of-range integers NULL.

    With `note_column`, the reason for each NULLed integer is appended to that text column.
    """
    row = dict(values)
    notes: list[str] = []
    for name, value in values.items():
        if value is None:
            continue
        rule = _column_rule(table, name, dialect)
        if rule is None:
            continue
        kind, low, high = rule
        if kind == "text":
            if isinstance(value, str):
                row[name] = clean_text(value)[:high]
        elif isinstance(value, bool) or not isinstance(value, int):
            row[name] = None
            notes.append(f"[{name.replace('_', ' ')} {clean_text(repr(value))[:40]} is not an integer, stored as NULL]")
        elif not low <= value <= high:
            row[name] = None
            notes.append(f"[{name.replace('_', ' ')} {show_integer(value)} out of range, stored as NULL]")
    if note_column is not None and notes:
        row[note_column] = with_notes(row.get(note_column), notes, text_limit(table, note_column))
    return row


@cache
def _column_rule(table: Table, name: str, dialect: str) -> tuple[str, int, int] | None:
    """What storable_row checks in column `name` ("text", 0, its length; "integer", its range), read
    from the column's type once: the poll row goes through this on every poll."""
    column_type = table.c[name].type
    if isinstance(column_type, String):
        return ("text", 0, text_limit(table, name))
    if isinstance(column_type, Integer):
        return ("integer", *integer_range(table, name, dialect))
    return None


def with_notes(message: str | None, notes: Iterable[str], limit: int) -> str:
    """`message` followed by `notes`, cut so the notes always fit within `limit` characters."""
    tail = " ".join(notes)[:limit]
    if not message:
        return tail
    room = limit - len(tail) - 1
    return f"{message[:room]} {tail}" if room > 0 else tail


def storable_fetched(fetched: FetchedBalances, stored: Mapping[str, AssetBalance] | None = None) -> FetchedBalances:
    """The balances with storable names; UnstorableValue when an amount or time cannot be stored.

    The alias and asset names are cleaned here, before they are compared with what the
    database holds, so a name with a control character keeps matching its stored self.
    `stored` maps asset names to records this function made storable before (the heads'
    sources, recorder.store.HeadCache): a record that is one of them is taken as it is, since
    the records are immutable and the check would give the same answer.
    """
    asset_limit = _ASSET_LIMIT
    assets = []
    for asset in fetched.assets:
        if stored is not None and stored.get(asset.asset) is asset:
            assets.append(asset)
            continue
        name = clean_text(asset.asset)[:asset_limit]
        for field in AMOUNT_FIELDS:
            check_amount(getattr(asset, field), field, name)
        if not isinstance(asset.update_time, datetime) or asset.update_time.utcoffset() is None:
            raise UnstorableValue(f"update_time of {name} is not an aware time")
        if not isinstance(asset.margin_available, bool):
            raise UnstorableValue(f"margin_available of {name} is not a boolean")
        assets.append(asset if name == asset.asset else replace(asset, asset=name))
    names = [asset.asset for asset in assets]
    if len(set(names)) != len(names):
        raise UnstorableValue("two assets have the same name once made storable")
    alias = clean_text(fetched.account_alias)[:_ALIAS_LIMIT]
    if alias == fetched.account_alias and all(a is b for a, b in zip(assets, fetched.assets, strict=True)):
        return fetched
    return replace(fetched, account_alias=alias, assets=tuple(assets))


def check_amount(value: Any, field: str, asset: str = "") -> None:
    """Raise UnstorableValue unless `value` (`field` of `asset`) is a finite Decimal of sane size."""
    if isinstance(value, Decimal) and value.is_finite():
        # Fast paths for every real amount (40 checks a poll); anything else takes the exact rule below.
        if value.is_zero():
            # A zero's digits are just "0", so its exponent is adjusted(): "0.00000000" prints as
            # 0E-8 and would miss the plain-notation test, yet it is most of a poll's amounts.
            if -AMOUNT_DIGITS_LIMIT <= value.adjusted() < AMOUNT_DIGITS_LIMIT:
                return
        else:
            text = str(value)
            if len(text) < 100 and "E" not in text:
                return  # plain notation and short
        exponent = int(value.as_tuple().exponent)
        if value.adjusted() < AMOUNT_DIGITS_LIMIT and -exponent <= AMOUNT_DIGITS_LIMIT:
            return
        problem = f"has more than {AMOUNT_DIGITS_LIMIT} digits on one side of the point"
    elif isinstance(value, Decimal):
        problem = f"is {value}, which no column can hold"
    else:
        problem = "is not a decimal"
    raise UnstorableValue(f"{field} of {asset} {problem}" if asset else f"{field} {problem}")


_ACCOUNTS, _BALANCES = accounts, balances
_ALIAS_LIMIT, _ASSET_LIMIT = text_limit(_ACCOUNTS, "account_alias"), text_limit(_BALANCES, "asset")
