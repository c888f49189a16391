"""Exports: flat rows to CSV, JSONL or Parquet, written whole or not at all; no database access.

Rows arrive as batches of text tuples with a (name, kind) per column (recorder.queries.flat,
or the converters below for what the query module returns as objects). Every writer takes
them batch by batch, so an export of any size holds one batch in memory:

    csv      RFC 4180: UTF-8, a header row, CRLF line ends, quotes only where needed.
    jsonl    one JSON object a line; amounts are strings (exact), booleans true/false.
    parquet  one row group per batch; amounts decimal128(38, 18), times timestamp[us, UTC],
             never a float column (needs the `parquet` extra: pyarrow).

A file is written under a temporary name in its own folder and renamed once complete, so an
interrupted export (an error, Ctrl-C, SIGTERM) never leaves a half file under the final name.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, TextIO

from recorder.models import AMOUNT_FIELDS
from recorder.queries.flat import BOOL, DECIMAL, INT, TEXT, TIME, batch_rows
from recorder.reports.render import UTC, format_decimal, format_time

FORMATS = ("csv", "jsonl", "parquet")
DATE = "date"

Columns = Sequence[tuple[str, str]]
Batch = list[tuple[Any, ...]]

# Buffered writes in large chunks: a few hundred thousand short lines a second otherwise
# cost one small write() each.
WRITE_BUFFER = 1 << 20


class Progress:
    """Rows written and their rate, redrawn on one stderr line at most 5 times a second.

    Silent unless stderr is a terminal, so a cron job's log stays clean.
    """

    def __init__(self, stream: TextIO | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.clock = clock
        self.rows = 0
        self.started = clock()
        self.drawn = self.started

    def add(self, rows: int) -> None:
        """Count `rows` more rows; redraw when the last drawing is old enough."""
        self.rows += rows
        if self.enabled and self.clock() - self.drawn >= 0.2:
            self._draw()

    def finish(self) -> None:
        """Draw the final count and end the line."""
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        self.drawn = self.clock()
        elapsed = max(self.drawn - self.started, 1e-9)
        self.stream.write(f"\rexported {self.rows:,} rows  {self.rows / elapsed:,.0f} rows/s ")
        self.stream.flush()


# --- writers -----------------------------------------------------------------------------


def write_csv(columns: Columns, batches: Iterable[Batch], stream: TextIO, progress: Progress | None = None,
              *, lineterminator: str = "\r\n", lines: bool = False) -> int:
    """RFC 4180 CSV with a header row; None is an empty cell. Returns the number of rows.

    `lines`: each row is a 1-tuple holding its whole CSV line already (queries.flat.Flat.csv_lines).
    """
    writer = csv.writer(stream, lineterminator=lineterminator)
    writer.writerow([name for name, _ in columns])
    rows = 0
    for batch in batches:
        if lines:
            stream.write(lineterminator.join([row[0] for row in batch]))
            stream.write(lineterminator)
        else:
            # writerows over tuples of text runs in C: no Python code per row.
            writer.writerows(batch)
        rows += len(batch)
        if progress is not None:
            progress.add(len(batch))
    return rows


def write_jsonl(columns: Columns, batches: Iterable[Batch], stream: TextIO, progress: Progress | None = None) -> int:
    """One JSON object per line; amounts and times as strings, booleans true/false, ints numbers."""
    names = [name for name, _ in columns]
    booleans = [index for index, (_, kind) in enumerate(columns) if kind == BOOL]
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    truth = {"true": True, "false": False, None: None}
    rows = 0
    for batch in batches:
        lines = []
        for row in batch:
            if booleans:
                row = list(row)
                for index in booleans:
                    row[index] = truth[row[index]]
            lines.append(encode(dict(zip(names, row))))
        if lines:
            stream.write("\n".join(lines))
            stream.write("\n")
        rows += len(batch)
        if progress is not None:
            progress.add(len(batch))
    return rows


def parquet_schema(columns: Columns) -> Any:
    """The Parquet schema: decimal128(38, 18) amounts, UTC microsecond times; never a float."""
    import pyarrow as pa

    types = {
        TEXT: pa.string(),
        DECIMAL: pa.decimal128(38, 18),
        TIME: pa.timestamp("us", tz="UTC"),
        BOOL: pa.bool_(),
        INT: pa.int64(),
        DATE: pa.date32(),
    }
    return pa.schema([pa.field(name, types[kind]) for name, kind in columns])


def write_parquet(columns: Columns, batches: Iterable[Batch], path: Path, progress: Progress | None = None) -> int:
    """Parquet, one row group per batch (zstd); a value that decimal128(38, 18) cannot hold exactly is an error."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ExportError("--format parquet needs pyarrow: pip install 'recorder[parquet]'") from None
    schema = parquet_schema(columns)
    rows = 0
    with pq.ParquetWriter(str(path), schema, compression="zstd") as writer:
        for batch in batches:
            arrays = []
            for (name, kind), values in zip(columns, zip(*batch)):
                source = pa.int64() if kind == INT else pa.string()
                try:
                    # Text to decimal and timestamp is parsed by Arrow in C, exactly; a cast that
                    # would drop a digit raises instead of rounding.
                    arrays.append(pa.array(values, type=source).cast(schema.field(name).type))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise ExportError(f"column {name}: {exc}".splitlines()[0]) from None
            if batch:
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            rows += len(batch)
            if progress is not None:
                progress.add(len(batch))
    return rows


# Rows per batch (and Parquet row group): converting a batch of Python rows to Arrow columns
# holds both at once; 5,000 keeps a year's export at 124 MB where 10,000 took 139 MB.
PARQUET_BATCH_ROWS = 5_000


class ExportError(Exception):
    """An export that cannot be written as asked (refused overwrite, a missing extra, a value out of range)."""


# --- files -------------------------------------------------------------------------------


@contextmanager
def replacing(path: Path, *, force: bool) -> Iterator[Path]:
    """A temporary path beside `path`, renamed to `path` when the block succeeds, removed otherwise.

    Without `force` an existing file is refused, before anything is written and again at the
    rename (a hard link, which fails on an existing name, so a file that appeared meanwhile
    is never overwritten either).
    """
    if path.exists() and not force:
        raise ExportError(f"{path} exists: choose another --out or add --force to replace it")
    folder = path.parent
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=folder)
    os.close(fd)
    temporary = Path(name)
    try:
        # mkstemp creates 0600; the export gets the mode any new file of this user gets.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        if force:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)
            except FileExistsError:
                raise ExportError(f"{path} appeared while exporting: left it alone; add --force to replace it") from None
            os.unlink(temporary)
    finally:
        temporary.unlink(missing_ok=True)


def write_rows(fmt: str, columns: Columns, batches: Iterable[Batch], out: Path | None, *, force: bool = False,
               progress: Progress | None = None, csv_lines: bool = False) -> int:
    """Write the rows in `fmt` to `out` (atomically) or to stdout; returns the number of rows."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    if out is None:
        if fmt == "parquet":
            raise ExportError("--format parquet needs --out FILE: Parquet is not written to a pipe")
        stream = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="", write_through=False)
        try:
            return _write_text(fmt, columns, batches, stream, progress, csv_lines)
        finally:
            stream.flush()
            stream.detach()
    with replacing(out, force=force) as temporary:
        if fmt == "parquet":
            return write_parquet(columns, batches, temporary, progress)
        with open(temporary, "w", encoding="utf-8", newline="", buffering=WRITE_BUFFER) as stream:
            return _write_text(fmt, columns, batches, stream, progress, csv_lines)


def _write_text(fmt: str, columns: Columns, batches: Iterable[Batch], stream: TextIO, progress: Progress | None,
                csv_lines: bool) -> int:
    if fmt == "csv":
        return write_csv(columns, batches, stream, progress, lines=csv_lines)
    return write_jsonl(columns, batches, stream, progress)


# --- objects to text rows ----------------------------------------------------------------


def text(value: Any, name: str = "") -> Any:
    """One cell as the writers take it: exact text for amounts and times, ints as they are."""
    if value is None or isinstance(value, (str, int)) and not isinstance(value, bool):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format_decimal(value)
    if isinstance(value, datetime):
        return format_time(value, UTC, "milliseconds" if name.endswith("update_time") else "microseconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return format_decimal(seconds(value))
    if isinstance(value, Mapping):
        return " ".join(f"{key}={count}" for key, count in value.items())
    raise TypeError(f"cannot export {type(value).__name__} in column {name}")


def seconds(span: timedelta) -> Decimal:
    """A span in exact seconds with microseconds (never a float)."""
    micros = (span.days * 86_400 + span.seconds) * 1_000_000 + span.microseconds
    return (Decimal(micros) / 1_000_000).quantize(Decimal("0.000001"))


def kind_of(name: str) -> str:
    """The kind of a report column, from its name (the `changes` and `balances` columns)."""
    base = name.removeprefix("previous_").removeprefix("delta_").removeprefix("from_").removeprefix("to_")
    if base in AMOUNT_FIELDS or name.endswith("_seconds"):
        return DECIMAL
    if base in ("observed_at", "update_time", "last_poll_at", "start", "end", "day_start", "day_end"):
        return TIME
    if base in ("present", "margin_available", "ongoing", "fully_observed"):
        return BOOL
    if base in ("failed_polls", "changes"):
        return INT
    return TEXT


def batched(records: Iterable[Mapping[str, Any]], names: Sequence[str], size: int | None = None) -> Iterator[Batch]:
    """Records (mappings) as batches of text tuples in the order of `names`."""
    size = size or batch_rows()
    batch: Batch = []
    for record in records:
        batch.append(tuple(text(record.get(name), name) for name in names))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
