"""Render query results as an aligned table, CSV or JSON on a stream; no database access here.

Decimals are written exactly as stored (`format(d, "f")`: `0.00000001`, never `1E-8`) and
are JSON strings, so no JSON reader turns them into floats. JSON times are always UTC,
ISO-8601 with a `Z` (`2026-01-01T00:00:00.003000Z`; Binance's `update_time` with
milliseconds); tables and CSV show times in the zone asked for, with its offset.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone, tzinfo
from decimal import Decimal
from typing import Any, TextIO

from recorder.models import AMOUNT_FIELDS
from recorder.queries import AssetState

FORMATS = ("table", "csv", "json")
UTC = timezone.utc

STATE_COLUMNS = ("asset", "observed_at", "present", *AMOUNT_FIELDS, "margin_available", "update_time")


def format_time(value: datetime, tz: tzinfo = UTC, timespec: str = "microseconds") -> str:
    """ISO-8601 in `tz`; UTC is written with a `Z`."""
    text = value.astimezone(tz).isoformat(timespec=timespec)
    return text[:-6] + "Z" if text.endswith("+00:00") and tz is UTC else text


def format_decimal(value: Decimal) -> str:
    """Plain notation with the stored scale."""
    return format(value, "f")


# --- generic writers ---------------------------------------------------------------------


def write(
    fmt: str,
    stream: TextIO,
    columns: Sequence[str],
    records: Sequence[Mapping[str, Any]],
    documents: Sequence[Any],
    tz: tzinfo = UTC,
) -> None:
    """Write flat `records` as a table or CSV, or `documents` as a JSON list."""
    if fmt == "json":
        write_json(documents, stream)
    elif fmt == "csv":
        write_csv(columns, records, stream, tz)
    elif fmt == "table":
        write_table(columns, records, stream, tz)
    else:
        raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")


def write_json(documents: Any, stream: TextIO) -> None:
    """A JSON document; Decimal becomes a string and datetime UTC ISO-8601."""
    json.dump(_jsonable(documents), stream, indent=2, ensure_ascii=False)
    stream.write("\n")


def write_csv(columns: Sequence[str], records: Iterable[Mapping[str, Any]], stream: TextIO, tz: tzinfo = UTC) -> None:
    """CSV with a header row; empty cells for None."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([_cell(name, record.get(name), tz, blank="") for name in columns])


def write_table(columns: Sequence[str], records: Sequence[Mapping[str, Any]], stream: TextIO, tz: tzinfo = UTC) -> None:
    """An aligned plain-text table; numbers right-aligned, '-' for None."""
    cells = [[_cell(name, record.get(name), tz, blank="-") for name in columns] for record in records]
    numeric = [
        any(isinstance(record.get(name), (Decimal, int, float)) and not isinstance(record.get(name), bool) for record in records)
        for name in columns
    ]
    widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(columns)]
    lines = [_line(columns, widths, [False] * len(columns)), _line(["-" * w for w in widths], widths, numeric)]
    lines += [_line(row, widths, numeric) for row in cells]
    stream.write("\n".join(lines) + "\n")


def _line(cells: Sequence[str], widths: Sequence[int], right: Sequence[bool]) -> str:
    parts = [cell.rjust(width) if r else cell.ljust(width) for cell, width, r in zip(cells, widths, right)]
    return "  ".join(parts).rstrip()


def _cell(name: str, value: Any, tz: tzinfo, *, blank: str) -> str:
    if value is None:
        return blank
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format_decimal(value)
    if isinstance(value, datetime):
        return format_time(value, tz, _timespec(name))
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".")
    if isinstance(value, Mapping):
        return " ".join(f"{key}={count}" for key, count in value.items())
    return str(value)


def _timespec(name: str) -> str:
    # Binance's updateTime is milliseconds; our own timestamps have microseconds.
    return "milliseconds" if name.endswith("update_time") else "microseconds"


def _jsonable(value: Any, name: str = "") -> Any:
    if isinstance(value, Mapping):
        return {key: _jsonable(item, key) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item, name) for item in value]
    if isinstance(value, Decimal):
        return format_decimal(value)
    if isinstance(value, datetime):
        return format_time(value, UTC, _timespec(name))
    return value


# --- reports -----------------------------------------------------------------------------


def state_fields(state: AssetState | None) -> dict[str, Any]:
    """The state's fields by name (all None for no state)."""
    return {name: (getattr(state, name) if state is not None else None) for name in STATE_COLUMNS}


def write_history(states: Sequence[AssetState], account: str, fmt: str, stream: TextIO, tz: tzinfo = UTC) -> None:
    """Every recorded state, one row each, with the account label."""
    columns = ("account", *STATE_COLUMNS)
    records = [{"account": account, **state_fields(state)} for state in states]
    write(fmt, stream, columns, records, records, tz)
