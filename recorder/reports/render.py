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


def write(
    fmt: str,
    stream: TextIO,
    columns: Sequence[str],
    records: Sequence[Mapping[str, Any]],
    documents: Sequence[Any],
    tz: tzinfo = UTC,
    table_columns: Sequence[str] | None = None,
) -> None:
    """Write flat `records` as a table or CSV, or `documents` as a JSON list.

    `table_columns` narrows what a terminal shows; CSV always has every column.
    """
    if fmt == "json":
        write_json(documents, stream)
    elif fmt == "csv":
        write_csv(columns, records, stream, tz)
    elif fmt == "table":
        write_table(table_columns or columns, records, stream, tz)
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


def write_balances(result: AsOf, fmt: str, stream: TextIO, tz: tzinfo = UTC) -> None:
    """Each asset's state at an instant, with when it was observed and how stale the evidence is."""
    freshness = result.freshness
    columns = ("account", "asset", "status", "observed_at", "stale_seconds", "last_poll_at", "present",
               *AMOUNT_FIELDS, "margin_available", "update_time")
    records = []
    for position in result.positions:
        fields = state_fields(position.state)
        # The asset is named even with no state yet (an instant before its first record).
        del fields["asset"]
        records.append({
            "account": result.account,
            "asset": position.asset,
            "status": position.status,
            "observed_at": fields.pop("observed_at"),
            "stale_seconds": freshness.stale_seconds,
            "last_poll_at": freshness.last_poll_at,
            **fields,
        })
    table = ("asset", "status", *AMOUNT_FIELDS, "margin_available", "observed_at", "stale_seconds")
    write(fmt, stream, columns, records, records, tz, table)


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


def write_diff(result: Diff, fmt: str, stream: TextIO, tz: tzinfo = UTC, explanations: Mapping[str, Any] | None = None) -> None:
    """Per asset, the state at each end and the exact change (to - from) of every amount.

    `explanations` (asset -> recorder.ledger.reconcile.Explanation, from `diff --explain`) adds
    the balance change's breakdown by income type: an `explanation` object in JSON, the
    `explained`/`unexplained`/`unknown_types` columns in CSV, one line per asset under the table.
    """
    documents = []
    records = []
    for row in result.assets:
        documents.append({
            "account": result.account,
            "asset": row.asset,
            "status": row.status,
            "from": _state_document(row.before),
            "to": _state_document(row.after),
            "change": dict(row.change) if row.change is not None else None,
        })
        record: dict[str, Any] = {"account": result.account, "asset": row.asset, "status": row.status}
        for side, state in (("from", row.before), ("to", row.after)):
            for name, value in state_fields(state).items():
                if name != "asset":
                    record[f"{side}_{name}"] = value
        for name in AMOUNT_FIELDS:
            record[f"change_{name}"] = row.change[name] if row.change is not None else None
        if explanations is not None:
            explanation = explanations.get(row.asset)
            documents[-1]["explanation"] = None if explanation is None else {
                "explained": dict(explanation.explained), "unexplained": explanation.residual,
                "unknown_types": list(explanation.unknown_types), "text": explanation.text,
            }
            record["explained"] = None if explanation is None else " ".join(
                f"{income_type}={format_decimal(amount)}" for income_type, amount in explanation.explained.items())
            record["unexplained"] = None if explanation is None else explanation.residual
            record["unknown_types"] = None if explanation is None else ",".join(explanation.unknown_types)
        records.append(record)
    sides = [f"{side}_{name}" for side in ("from", "to") for name in STATE_COLUMNS if name not in ("asset", "present")]
    columns = ("account", "asset", "status", *sides, *(f"change_{name}" for name in AMOUNT_FIELDS))
    table = ("asset", "status", "from_balance", "to_balance", *(f"change_{name}" for name in AMOUNT_FIELDS),
             "from_observed_at", "to_observed_at")
    if explanations is not None:
        columns += ("explained", "unexplained", "unknown_types")
    write(fmt, stream, columns, records, documents, tz, table)
    if explanations is not None and fmt == "table":
        stream.write("\n")
        for row in result.assets:
            explanation = explanations.get(row.asset)
            stream.write((explanation.text if explanation is not None else f"{row.asset}: {row.status}, not explained") + "\n")


def _state_document(state: AssetState | None) -> dict[str, Any] | None:
    if state is None:
        return None
    return {name: value for name, value in state_fields(state).items() if name != "asset"}


def write_changes(events: Sequence[Change], account: str, fmt: str, stream: TextIO, tz: tzinfo = UTC) -> None:
    """Every change event, oldest first, with the previous value and the delta per amount."""
    documents = []
    records = []
    for event in events:
        delta = dict(event.delta) if event.delta is not None else None
        documents.append({
            "account": account,
            "asset": event.asset,
            "observed_at": event.observed_at,
            "kind": event.kind,
            "changed": list(event.changed),
            "previous": _state_document(event.previous),
            "current": _state_document(event.current),
            "delta": delta,
        })
        current, previous = state_fields(event.current), state_fields(event.previous)
        record: dict[str, Any] = {"account": account, "asset": event.asset, "observed_at": event.observed_at, "kind": event.kind}
        for name in (*AMOUNT_FIELDS, "margin_available", "update_time"):
            record[name] = current[name]
            record[f"previous_{name}"] = previous[name]
            if name in AMOUNT_FIELDS:
                record[f"delta_{name}"] = delta[name] if delta is not None else None
        record["changed"] = ",".join(event.changed)
        records.append(record)
    columns = ("account", "asset", "observed_at", "kind")
    for name in (*AMOUNT_FIELDS, "margin_available", "update_time"):
        columns += (name, f"previous_{name}") + ((f"delta_{name}",) if name in AMOUNT_FIELDS else ())
    # Last, so CSV readers that address the older columns by position keep working.
    columns += ("changed",)
    # `changed` last: for an appearing asset it names every field, and would push the numbers aside.
    table = ("observed_at", "asset", "kind", "balance", "delta_balance", "delta_cross_wallet_balance",
             "delta_cross_un_pnl", "delta_available_balance", "delta_max_withdraw_amount", "margin_available", "changed")
    write(fmt, stream, columns, records, documents, tz, table)


def write_gaps(found: Sequence[Gap], fmt: str, stream: TextIO, tz: tzinfo = UTC) -> None:
    """Stretches without a successful poll, with the failures recorded inside each."""
    documents = [
        {"start": gap.start, "end": gap.end, "seconds": gap.seconds, "failures": dict(gap.failures), "ongoing": gap.open_end}
        for gap in found
    ]
    records = [
        {**document, "failed_polls": sum(gap.failures.values())} for document, gap in zip(documents, found)
    ]
    columns = ("start", "end", "seconds", "ongoing", "failed_polls", "failures")
    write(fmt, stream, columns, records, documents, tz)


def write_series(points: Sequence[SeriesPoint], asset: str, field: str, fmt: str, stream: TextIO, tz: tzinfo = UTC) -> None:
    """One row per bucket: the value at its end, or why there is none."""
    records = [
        {"asset": asset, "field": field, "start": p.start, "end": p.end, "value": p.value,
         "observed_at": p.observed_at, "status": p.status}
        for p in points
    ]
    write(fmt, stream, ("asset", "field", "start", "end", "value", "status", "observed_at"), records, records, tz)
