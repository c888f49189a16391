"""`recorder export`: one file of history, changes, balances, polls, daily figures or gaps.

Reads like every read command (read-only, never migrates), streams rows from the database to
the file, and writes the file under a temporary name renamed when complete. The one write is
`--incremental NAME`'s cursor, in its own short transaction after the file is in place.
"""

from __future__ import annotations

import itertools
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from recorder import queries
from recorder.cli import cli
from recorder.cli.querying import READER_IGNORES, TIME, _require_existing_sqlite_file
from recorder.config import load_settings
from recorder.db import database_error_line, make_engine, make_read_engine, make_sessions
from recorder.errors import StorageError
from recorder.models import AMOUNT_FIELDS, ExportCursor
from recorder.queries import flat
from recorder.queries.daily import iter_daily
from recorder.reports import export
from recorder.reports.render import BALANCE_COLUMNS, GAP_COLUMNS, balance_records, gap_record
from recorder.schema import require_current_schema
from recorder.timespec import TIME_HELP, TimeZoneParam, require_order

WHATS = ("history", "changes", "balances", "polls", "daily", "gaps", "ledger")
# Tax-tool CSVs (recorder.ledger.taxformats.PRESETS), for --what ledger only.
TAX_FORMATS = ("koinly", "cointracking", "binance-futures")
INCREMENTAL = ("history", "changes")
DAILY_COLUMNS = ("account", "asset", "day", "day_start", "day_end", "open", "close", "change", "high", "low",
                 "changes", "gap_seconds", "fully_observed")


@dataclass(frozen=True)
class Request:
    """What to export, as parsed from the command line."""

    what: str
    accounts: tuple[str, ...]
    assets: tuple[str, ...]
    since: datetime | None
    until: datetime | None
    at: datetime
    tz: Any
    field: str
    include_derived: bool = False


@cli.command("export")
@click.option("--what", type=click.Choice(WHATS), required=True, help="What to export (see the README for the columns).")
@click.option("--format", "fmt", type=click.Choice((*export.FORMATS, *TAX_FORMATS)), default="csv", show_default=True,
              help="csv (RFC 4180), jsonl (amounts as strings) or parquet (decimal128(38, 18); needs --out and "
              "the recorder[parquet] extra); --what ledger also koinly, cointracking or binance-futures (tax tools).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file [default: stdout].")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--database-url", help="SQLAlchemy URL [env RECORDER_DATABASE_URL; default: sqlite:///recorder.db].")
@click.option("--account", "accounts", multiple=True,
              help="An account label (repeat for several, one file with an `account` column) [default: RECORDER_ACCOUNT].")
@click.option("--asset", "assets", multiple=True, help="Only this asset (repeat for several); default: every asset.")
@click.option("--since", type=TIME, help=f"From this time on (inclusive): {TIME_HELP}.")
@click.option("--until", type=TIME, help=f"Up to, not including, this time: {TIME_HELP}.")
@click.option("--at", "at", type=TIME, help=f"--what balances: the instant [default: now]: {TIME_HELP}.")
@click.option("--tz", "tz", type=TimeZoneParam(), default="UTC", show_default=True,
              help="--what daily: days start at midnight in this zone. Times in files are always UTC.")
@click.option("--field", type=click.Choice(AMOUNT_FIELDS), default="balance", show_default=True,
              help="--what daily: the amount whose open, close, high and low are computed.")
@click.option("--incremental", metavar="NAME",
              help="Only rows stored since the last export of this NAME (history, changes); remembered in the database.")
@click.option("--include-derived", is_flag=True,
              help="--what history: also the backfilled wallet balances, with a source column: observed or derived.")
def export_command(what, fmt, out, force, database_url, accounts, assets, since, until, at, tz, field, incremental,
                   include_derived) -> None:
    """Export history, changes, balances, polls, daily figures or gaps to CSV, JSONL or Parquet.

    The rows stream from the database to the file in constant memory. With --out the file is
    written under a temporary name and renamed when complete: an interrupted export leaves no
    file under the final name. A progress line is shown on stderr when it is a terminal.
    """
    require_order("--since", since, "--until", until)
    if at is not None and what != "balances":
        raise click.UsageError("--at is for --what balances; use --since/--until for a range")
    if what == "balances" and (since is not None or until is not None):
        raise click.UsageError("--what balances takes --at, not --since/--until")
    if incremental is not None:
        if what not in INCREMENTAL:
            raise click.UsageError(f"--incremental works with --what {' or '.join(INCREMENTAL)}, not {what}")
        if since is not None or until is not None:
            raise click.UsageError("--incremental exports what was stored since its last run: drop --since/--until")
        if not incremental.strip() or len(incremental) > 64:
            raise click.UsageError("--incremental NAME must be 1 to 64 characters")
    if fmt in TAX_FORMATS and what != "ledger":
        raise click.UsageError(f"--format {fmt} is for --what ledger")
    if include_derived and (what != "history" or incremental is not None):
        raise click.UsageError("--include-derived is for --what history, without --incremental")
    if fmt == "parquet" and out is None:
        raise click.UsageError("--format parquet needs --out FILE")
    if out is not None and out.exists() and not force:
        raise click.UsageError(f"{out} exists: choose another --out or add --force to replace it")
    settings = load_settings({"database_url": database_url}, ignore=READER_IGNORES)
    request = Request(what, tuple(dict.fromkeys(accounts)) or (settings.account,),
                      tuple(sorted({asset.strip().upper() for asset in assets})), since, until,
                      at or datetime.now(timezone.utc), tz, field, include_derived)
    _require_existing_sqlite_file(settings.database_url)
    with _terminated_cleanly(out):
        if incremental is None:
            _export_once(settings.database_url, request, fmt, out, force)
        else:
            _export_incremental(settings.database_url, request, incremental, fmt, out, force)


def _export_once(url: str, request: Request, fmt: str, out: Path | None, force: bool) -> None:
    read_engine = make_read_engine(url)
    try:
        with make_sessions(read_engine.engine)() as session, _storage_errors():
            require_current_schema(session.connection())
            _check(session, request)
            if fmt in TAX_FORMATS:
                _write_tax_format(session, request, fmt, out, force)
            else:
                with _batches_for(fmt):
                    columns, batches, lines = _table(session, request, csv_lines=fmt == "csv")
                    _write(fmt, columns, batches, out, force, lines)
        read_engine.verify_unchanged()
    finally:
        read_engine.close()


def _export_incremental(url: str, request: Request, name: str, fmt: str, out: Path | None, force: bool) -> None:
    engine = make_engine(url)
    try:
        wanted = ",".join(request.assets)
        with make_sessions(engine)() as session, _storage_errors():
            require_current_schema(session.connection())
            _check(session, request)
            bounds = {}
            for account in request.accounts:
                account_id = queries.find_account(session, account).id
                cursor = session.get(ExportCursor, (name, account_id))
                if cursor is not None and (cursor.what, cursor.assets) != (request.what, wanted):
                    raise click.UsageError(
                        f"--incremental {name} exported --what {cursor.what} --asset {cursor.assets or '(all)'} "
                        "before: use another NAME for another export"
                    )
                after = cursor.last_balance_id if cursor is not None else 0
                # The upper bound is fixed now: rows stored while the file is written go to the next one.
                bounds[account] = (account_id, after, max(after, flat.last_balance_id(session, account)))
            with _batches_for(fmt):
                columns, batches, lines = _table(session, request, bounds, csv_lines=fmt == "csv")
                _write(fmt, columns, batches, out, force, lines)
        # The file is complete and in place: only now does the cursor move, in one transaction.
        with make_sessions(engine, write=True).begin() as session, _storage_errors():
            for account, (account_id, after, through) in bounds.items():
                _advance(session, name, account_id, request, wanted, after, through)
    finally:
        engine.dispose()


def _advance(session: Session, name: str, account_id: int, request: Request, assets: str, after: int, through: int) -> None:
    cursor = session.get(ExportCursor, (name, account_id), with_for_update=True)
    stored = cursor.last_balance_id if cursor is not None else 0
    if stored != after:
        raise StorageError(
            f"another export named {name!r} ran meanwhile (its cursor moved from {after} to {stored}); "
            "this file repeats its rows: remove it and run again"
        )
    now = datetime.now(timezone.utc)
    if cursor is None:
        session.add(ExportCursor(name=name, account_id=account_id, what=request.what, assets=assets,
                                 last_balance_id=through, exported_at=now))
    else:
        cursor.last_balance_id = through
        cursor.exported_at = now


def _check(session: Session, request: Request) -> None:
    if request.what == "ledger":
        for account in request.accounts:
            queries.find_account(session, account)
        return  # an asset the ledger names may never have had a balance row: no check against balances
    known: set[str] = set()
    for account in request.accounts:
        known.update(queries.list_assets(session, account))
    unknown = [asset for asset in request.assets if asset not in known]
    if unknown:
        raise click.UsageError(
            f"no asset {', '.join(unknown)} in account {', '.join(request.accounts)}; "
            f"recorded assets: {', '.join(sorted(known)) or 'none'}"
        )


def _batches_for(fmt: str) -> AbstractContextManager[None]:
    return flat.fetching(export.PARQUET_BATCH_ROWS) if fmt == "parquet" else nullcontext()


def _table(
    session: Session, request: Request, bounds: dict[str, tuple[int, int, int]] | None = None, *, csv_lines: bool = False
) -> tuple[Sequence[tuple[str, str]], Iterator[export.Batch], bool]:
    """The columns, the batches of rows (lazily, one account after the other), and whether they are CSV lines."""
    assets = list(request.assets) or None
    if request.what == "history":
        parts = []
        for account in request.accounts:
            after, through = (bounds[account][1:] if bounds else (None, None))
            parts.append(flat.history_rows(session, account, assets=assets, since=request.since, until=request.until,
                                           after_id=after, through_id=through,
                                           csv_lines=csv_lines and not request.include_derived))
        if request.include_derived:
            return (*_history_with_derived(session, request, parts), False)
        return flat.HISTORY_COLUMNS, itertools.chain.from_iterable(part.batches for part in parts), csv_lines
    if request.what == "changes":
        parts = []
        for account in request.accounts:
            after, through = (bounds[account][1:] if bounds else (None, None))
            parts.append(flat.change_rows(session, account, assets=assets, since=request.since, until=request.until,
                                          after_id=after, through_id=through))
        return flat.CHANGE_COLUMNS, itertools.chain.from_iterable(part.batches for part in parts), False
    if request.what == "ledger":
        from recorder.ledger.taxformats import LEDGER_COLUMNS, iter_entries

        names = [name for name, _ in LEDGER_COLUMNS]
        records = itertools.chain.from_iterable(
            (entry.record() for entry in iter_entries(session, account, assets=assets, since=request.since,
                                                      until=request.until))
            for account in request.accounts
        )
        return LEDGER_COLUMNS, export.batched(records, names), False
    if request.what == "polls":
        parts = [flat.poll_rows(session, account, since=request.since, until=request.until) for account in request.accounts]
        return flat.POLL_COLUMNS, itertools.chain.from_iterable(part.batches for part in parts), False
    names = {"balances": BALANCE_COLUMNS, "daily": DAILY_COLUMNS,
             "gaps": ("account", *GAP_COLUMNS)}[request.what]
    records = itertools.chain.from_iterable(_records(session, request, account, assets, bounds) for account in request.accounts)
    return [(name, export.kind_of(name)) for name in names], export.batched(records, names), False


def _records(session: Session, request: Request, account: str, assets: list[str] | None,
             bounds: dict[str, tuple[int, int, int]] | None) -> Iterator[dict[str, Any]]:
    if request.what == "balances":
        result = queries.as_of(session, account, request.at, assets=assets)
        last = result.freshness.last_poll_at
        exact = None if last is None else export.seconds(request.at - last)
        return ({**record, "stale_seconds": exact} for record in balance_records(result))
    if request.what == "daily":
        try:
            days = iter_daily(session, account, field=request.field, assets=assets, since=request.since,
                              until=request.until, tz=request.tz)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        return (
            {"account": account, "asset": d.asset, "day": d.day, "day_start": d.start, "day_end": d.end,
             "open": d.open, "close": d.close, "change": d.change, "high": d.high, "low": d.low,
             "changes": d.changes, "gap_seconds": d.gap_seconds, "fully_observed": d.fully_observed}
            for d in days
        )
    found = queries.gaps(session, account, since=request.since, until=request.until)
    return ({"account": account, **gap_record(gap), "seconds": export.seconds(gap.end - gap.start)} for gap in found)


def _history_with_derived(session: Session, request: Request, parts: list[flat.Flat]
                          ) -> tuple[Sequence[tuple[str, str]], Iterator[export.Batch]]:
    """Observed history rows with source 'observed' merged by time with the derived balances ('derived')."""
    import heapq

    from recorder.ledger.backfill import DERIVED, OBSERVED, iter_derived

    columns = (*flat.HISTORY_COLUMNS, ("source", flat.TEXT))
    names = [name for name, _ in columns]
    assets = list(request.assets) or None
    merged = []
    for account, part in zip(request.accounts, parts):
        observed = (row + (OBSERVED,) for batch in part.batches for row in batch)
        derived = (
            tuple(export.text(value, name) for name, value in
                  {**dict.fromkeys(names), "account": account, "asset": state.asset, "observed_at": state.at,
                   "present": True, "balance": state.balance, "source": DERIVED}.items())
            for state in iter_derived(session, account, assets=assets, since=request.since, until=request.until)
        )
        # Both streams are in time order and times are uniform ISO text, so text order is time order.
        merged.append(heapq.merge(derived, observed, key=lambda row: (row[2], row[1])))
    rows = itertools.chain.from_iterable(merged)
    return columns, iter(lambda: list(itertools.islice(rows, flat.batch_rows())), [])


def _write_tax_format(session: Session, request: Request, fmt: str, out: Path | None, force: bool) -> None:
    """A tax tool's CSV of the ledger, to --out (atomically) or stdout."""
    import io

    from recorder.ledger.taxformats import iter_entries, write_preset

    entries = itertools.chain.from_iterable(
        iter_entries(session, account, assets=list(request.assets) or None, since=request.since, until=request.until)
        for account in request.accounts
    )
    if out is None:
        stream = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="")
        try:
            write_preset(fmt, entries, stream)
        finally:
            stream.flush()
            stream.detach()
        return
    try:
        with export.replacing(out, force=force) as temporary:
            with open(temporary, "w", encoding="utf-8", newline="") as stream:
                write_preset(fmt, entries, stream)
    except export.ExportError as exc:
        raise click.UsageError(str(exc)) from None


def _write(fmt: str, columns: Sequence[tuple[str, str]], batches: Iterator[export.Batch], out: Path | None, force: bool,
           csv_lines: bool) -> None:
    progress = export.Progress()
    try:
        rows = export.write_rows(fmt, columns, batches, out, force=force, progress=progress, csv_lines=csv_lines)
    except export.ExportError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        progress.finish()
    if out is not None and progress.enabled:
        click.echo(f"wrote {rows:,} rows to {out}", err=True)


@contextmanager
def _storage_errors() -> Iterator[None]:
    try:
        yield
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot read the database: {database_error_line(exc)}") from None


class Terminated(BaseException):
    """SIGTERM or Ctrl-C arrived: unwinds to the top, so the temporary file is removed on the way out.

    Not a KeyboardInterrupt on purpose: psycopg answers one raised inside its wait by cancelling
    the query and waiting for the server again, which under load was seen to hang an export
    stopped while it waited on a lock; this exception leaves the connection at once, and the
    export discards it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _terminated_cleanly(out: Path | None) -> Iterator[None]:
    def stop(signum: int, _frame: FrameType | None) -> None:
        raise Terminated(signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except Terminated as stopped:
        interrupted = stopped.signum == signal.SIGINT
        click.echo(f"export {'interrupted' if interrupted else 'terminated'}{': no file written' if out else ''}",
                   err=True)
        sys.exit(130 if interrupted else 143)
    except KeyboardInterrupt:
        click.echo(f"export interrupted{': no file written' if out else ''}", err=True)
        sys.exit(130)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
