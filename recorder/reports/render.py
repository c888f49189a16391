"""Render query results as an aligned table, CSV or JSON on a stream; no database access here.

Decimals are written exactly as stored (`format(d, "f")`: `0.00000001`, never `1E-8`) and
are JSON strings, so no JSON reader turns them into floats. JSON times are always UTC,
ISO-8601 with a `Z` (`2026-01-01T00:00:00.003000Z`; Binance's `update_time` with
milliseconds); tables and CSV show times in the zone asked for, with its offset.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone, tzinfo
from decimal import Decimal
from typing import Any, TextIO

from recorder.models import AMOUNT_FIELDS
from recorder.queries import AsOf, AssetState, Change, Diff, Freshness, Gap, SeriesPoint

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

# The aligned table is written in pages: column widths come from the first PAGE_ROWS rows,
# and when a later row needs a wider column the header is written again with the new widths.
# Memory stays constant (one page) whatever the number of rows.
PAGE_ROWS = 1_000

Record = Mapping[str, Any]


def write(
    fmt: str,
    stream: TextIO,
    columns: Sequence[str],
    items: Iterable[Any],
    to_record: Callable[[Any], Record],
    to_document: Callable[[Any], Any] | None = None,
    tz: tzinfo = UTC,
    table_columns: Sequence[str] | None = None,
) -> None:
    """Stream `items` as a table or CSV (flat records) or a JSON array (documents).

    Each item is turned into its record or document as it is written, so any number of
    items costs the memory of one (a page for the table). `table_columns` narrows what a
    terminal shows; CSV always has every column.
    """
    if fmt == "json":
        write_json_array(map(to_document or to_record, items), stream)
    elif fmt == "csv":
        write_csv(columns, map(to_record, items), stream, tz)
    elif fmt == "table":
        write_table(table_columns or columns, map(to_record, items), stream, tz)
    else:
        raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")


def write_json(documents: Any, stream: TextIO) -> None:
    """A JSON document; Decimal becomes a string and datetime UTC ISO-8601."""
    json.dump(_jsonable(documents), stream, indent=2, ensure_ascii=False)
    stream.write("\n")


def write_json_array(documents: Iterable[Any], stream: TextIO) -> None:
    """A JSON array written element by element, byte-identical to json.dump(list, indent=2)."""
    separator = "[\n  "
    for document in documents:
        stream.write(separator)
        stream.write(json.dumps(_jsonable(document), indent=2, ensure_ascii=False).replace("\n", "\n  "))
        separator = ",\n  "
    stream.write("[]\n" if separator == "[\n  " else "\n]\n")


def write_csv(columns: Sequence[str], records: Iterable[Mapping[str, Any]], stream: TextIO, tz: tzinfo = UTC) -> None:
    """CSV with a header row; empty cells for None."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([_cell(name, record.get(name), tz, blank="") for name in columns])


def write_table(columns: Sequence[str], records: Iterable[Mapping[str, Any]], stream: TextIO, tz: tzinfo = UTC) -> None:
    """An aligned plain-text table in pages of PAGE_ROWS; numbers right-aligned, '-' for None."""
    widths: list[int] = [len(name) for name in columns]
    numeric = [False] * len(columns)
    header_widths: list[int] | None = None
    for page in _pages(records, PAGE_ROWS):
        cells = [[_cell(name, record.get(name), tz, blank="-") for name in columns] for record in page]
        if header_widths is None:
            numeric = [
                any(isinstance(record.get(name), (Decimal, int, float)) and not isinstance(record.get(name), bool)
                    for record in page)
                for name in columns
            ]
        widths = [max([width, *(len(row[i]) for row in cells)]) for i, width in enumerate(widths)]
        if widths != header_widths:
            if header_widths is not None:
                stream.write("\n")
            _write_header(columns, widths, numeric, stream)
            header_widths = list(widths)
        stream.write("".join(_line(row, widths, numeric) + "\n" for row in cells))
    if header_widths is None:
        _write_header(columns, widths, numeric, stream)


def _write_header(columns: Sequence[str], widths: Sequence[int], numeric: Sequence[bool], stream: TextIO) -> None:
    stream.write(_line(columns, widths, [False] * len(columns)) + "\n")
    stream.write(_line(["-" * w for w in widths], widths, numeric) + "\n")


def _pages(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    page: list[Record] = []
    for record in records:
        page.append(record)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page


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


HISTORY_COLUMNS = ("account", *STATE_COLUMNS)


def write_history(states: Iterable[AssetState], account: str, fmt: str, stream: TextIO, tz: tzinfo = UTC) -> None:
    """Every recorded state, one row each, with the account label; streamed."""
    write(fmt, stream, HISTORY_COLUMNS, states, lambda state: {"account": account, **state_fields(state)}, tz=tz)


BALANCE_COLUMNS = ("account", "asset", "status", "observed_at", "stale_seconds", "last_poll_at", "present",
                   *AMOUNT_FIELDS, "margin_available", "update_time")


def balance_records(result: AsOf) -> Iterator[dict[str, Any]]:
    """One flat record per asset of an as-of result (the `balances` columns)."""
    freshness = result.freshness
    for position in result.positions:
        fields = state_fields(position.state)
        # The asset is named even with no state yet (an instant before its first record).
        del fields["asset"]
        yield {
            "account": result.account,
            "asset": position.asset,
            "status": position.status,
            "observed_at": fields.pop("observed_at"),
            "stale_seconds": freshness.stale_seconds,
            "last_poll_at": freshness.last_poll_at,
            **fields,
        }


def write_balances(result: AsOf, fmt: str, stream: TextIO, tz: tzinfo = UTC) -> None:
    """Each asset's state at an instant, with when it was observed and how stale the evidence is."""
    table = ("asset", "status", *AMOUNT_FIELDS, "margin_available", "observed_at", "stale_seconds")
    write(fmt, stream, BALANCE_COLUMNS, balance_records(result), dict, tz=tz, table_columns=table)


def describe_freshness(freshness: Freshness, label: str, tz: tzinfo = UTC) -> str | None:
    """One line for stderr when an instant is not backed by a recent successful poll."""
    if freshness.status == "before_first_poll":
        return f"note: {label} {format_time(freshness.at, tz)} is before the first successful poll: nothing was recorded yet"
    if freshness.in_gap:
        return (
            f"note: {label} {format_time(freshness.at, tz)} is inside a gap: the last successful poll was "
            f"{format_time(freshness.last_poll_at, tz)}, {_cell('', freshness.stale_seconds, tz, blank='')} s earlier, "
            "so values may be stale"
        )
    return None


def write_diff(result: Diff, fmt: str, stream: TextIO, tz: tzinfo = UTC) -> None:
    """Per asset, the state at each end and the exact change (to - from) of every amount."""

    def document(row: Any) -> dict[str, Any]:
        return {
            "account": result.account,
            "asset": row.asset,
            "status": row.status,
            "from": _state_document(row.before),
            "to": _state_document(row.after),
            "change": dict(row.change) if row.change is not None else None,
        }

    def record(row: Any) -> dict[str, Any]:
        flat: dict[str, Any] = {"account": result.account, "asset": row.asset, "status": row.status}
        for side, state in (("from", row.before), ("to", row.after)):
            for name, value in state_fields(state).items():
                if name != "asset":
                    flat[f"{side}_{name}"] = value
        for name in AMOUNT_FIELDS:
            flat[f"change_{name}"] = row.change[name] if row.change is not None else None
        return flat

    sides = [f"{side}_{name}" for side in ("from", "to") for name in STATE_COLUMNS if name not in ("asset", "present")]
    columns = ("account", "asset", "status", *sides, *(f"change_{name}" for name in AMOUNT_FIELDS))
    table = ("asset", "status", "from_balance", "to_balance", *(f"change_{name}" for name in AMOUNT_FIELDS),
             "from_observed_at", "to_observed_at")
    write(fmt, stream, columns, result.assets, record, document, tz, table)


def _state_document(state: AssetState | None) -> dict[str, Any] | None:
    if state is None:
        return None
    return {name: value for name, value in state_fields(state).items() if name != "asset"}


CHANGE_COLUMNS: tuple[str, ...] = ("account", "asset", "observed_at", "kind")
for _name in (*AMOUNT_FIELDS, "margin_available", "update_time"):
    CHANGE_COLUMNS += (_name, f"previous_{_name}") + ((f"delta_{_name}",) if _name in AMOUNT_FIELDS else ())
# Last, so CSV readers that address the older columns by position keep working.
CHANGE_COLUMNS += ("changed",)
del _name


def change_record(event: Change, account: str) -> dict[str, Any]:
    """One change event as a flat record (the `changes` CSV columns)."""
    current, previous = state_fields(event.current), state_fields(event.previous)
    delta = event.delta
    record: dict[str, Any] = {"account": account, "asset": event.asset, "observed_at": event.observed_at, "kind": event.kind}
    for name in (*AMOUNT_FIELDS, "margin_available", "update_time"):
        record[name] = current[name]
        record[f"previous_{name}"] = previous[name]
        if name in AMOUNT_FIELDS:
            record[f"delta_{name}"] = delta[name] if delta is not None else None
    record["changed"] = ",".join(event.changed)
    return record


def write_changes(events: Iterable[Change], account: str, fmt: str, stream: TextIO, tz: tzinfo = UTC) -> None:
    """Every change event, oldest first, with the previous value and the delta per amount; streamed."""

    def document(event: Change) -> dict[str, Any]:
        return {
            "account": account,
            "asset": event.asset,
            "observed_at": event.observed_at,
            "kind": event.kind,
            "changed": list(event.changed),
            "previous": _state_document(event.previous),
            "current": _state_document(event.current),
            "delta": dict(event.delta) if event.delta is not None else None,
        }

    # `changed` last: for an appearing asset it names every field, and would push the numbers aside.
    table = ("observed_at", "asset", "kind", "balance", "delta_balance", "delta_cross_wallet_balance",
             "delta_cross_un_pnl", "delta_available_balance", "delta_max_withdraw_amount", "margin_available", "changed")
    write(fmt, stream, CHANGE_COLUMNS, events, lambda event: change_record(event, account), document, tz, table)


GAP_COLUMNS = ("start", "end", "seconds", "ongoing", "failed_polls", "failures")


def gap_document(gap: Gap) -> dict[str, Any]:
    """One gap as a JSON document."""
    return {"start": gap.start, "end": gap.end, "seconds": gap.seconds, "failures": dict(gap.failures), "ongoing": gap.open_end}


def gap_record(gap: Gap) -> dict[str, Any]:
    """One gap as a flat record (the `gaps` CSV columns)."""
    return {**gap_document(gap), "failed_polls": sum(gap.failures.values())}


def write_gaps(found: Iterable[Gap], fmt: str, stream: TextIO, tz: tzinfo = UTC) -> None:
    """Stretches without a successful poll, with the failures recorded inside each."""
    write(fmt, stream, GAP_COLUMNS, found, gap_record, gap_document, tz)


def write_series(points: Iterable[SeriesPoint], asset: str, field: str, fmt: str, stream: TextIO, tz: tzinfo = UTC) -> None:
    """One row per bucket: the value at its end, or why there is none."""

    def record(p: SeriesPoint) -> dict[str, Any]:
        return {"asset": asset, "field": field, "start": p.start, "end": p.end, "value": p.value,
                "observed_at": p.observed_at, "status": p.status}

    write(fmt, stream, ("asset", "field", "start", "end", "value", "status", "observed_at"), points, record, tz=tz)
