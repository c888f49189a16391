"""The income ledger's commands: `sync-ledger` (write, once) and `ledger` (read: entries or coverage).

`ledger` imports nothing of the write side (requests, APScheduler, Alembic); `sync-ledger`
and the `run` job load the sync where they use it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any, TextIO

import click
from sqlalchemy.orm import Session

from recorder.cli import cli
from recorder.cli.options import database_options
from recorder.cli.querying import READER_IGNORES, TIME, read_session
from recorder.cli.recording import _settings, exchange_options
from recorder.config import Settings, load_settings
from recorder.reports import render as reports
from recorder.timespec import TIME_HELP, TimeZoneParam, require_order, require_showable

if TYPE_CHECKING:
    from recorder.locks import LedgerLock
    from recorder.queries.ledger import Coverage

log = logging.getLogger(__name__)

LEDGER_COLUMNS = ("time", "income_type", "asset", "income", "running_balance", "symbol", "tran_id", "trade_id",
                  "info", "known_type", "source")
TABLE_COLUMNS = ("time", "income_type", "asset", "income", "running_balance", "symbol", "tran_id", "known_type")


def ledger_since_option(function: Any) -> Any:
    """--ledger-since: where a first ledger sync starts."""
    return click.option(
        "--ledger-since",
        type=TIME,
        help=f"Where the first ledger sync starts [default: 90 days ago, all Binance keeps; never older]: {TIME_HELP}.",
    )(function)


# How long `sync-ledger` waits for a sync of `recorder run` on the same account to finish.
LEDGER_LOCK_WAIT_SECONDS = 120.0


@cli.command("sync-ledger")
@exchange_options
@ledger_since_option
def sync_ledger(ledger_since: datetime | None, **values: Any) -> None:
    """Sync the income ledger once now (for cron); exit 0 on success, 1 with a one-line error on failure.

    Fetches GET /fapi/v1/income from the newest covered time (or the last 90 days) to now and stores
    every entry once; `recorder run` does the same every --ledger-interval. Works beside a running
    `recorder run` of the same account: it waits for run's own sync if one is under way.
    """
    from recorder.db import make_engine, make_sessions
    from recorder.exchange import BinanceFuturesClient
    from recorder.ledger.sync import LedgerSync
    from recorder.locks import LedgerLock
    from recorder.schema import upgrade_to_head

    settings = _settings(values)
    engine = make_engine(settings.database_url)
    try:
        upgrade_to_head(engine)
        # Not the writer lock: `recorder run` may hold it. The ledger lock keeps two syncs of the
        # account from fetching the same windows at once; entries are insert-if-absent anyway.
        lock = LedgerLock(engine, settings.account)
        _acquire_waiting(lock)
        client = BinanceFuturesClient.from_settings(settings)
        try:
            sync = LedgerSync(client=client, sessions=make_sessions(engine, write=True), account=settings.account,
                              since=ledger_since, before_write=lock.ensure)
            result = sync.sync_once()
        finally:
            client.close()
            lock.release()
    finally:
        engine.dispose()
    state = "paused by the weight budget" if result.paused else "ok"
    covered = result.covered_until.isoformat() if result.covered_until else "-"
    click.echo(f"ledger sync {state}: {result.entries_new} new of {result.entries_fetched} fetched in "
               f"{result.windows} window(s), covered until {covered}")


def _acquire_waiting(lock: LedgerLock) -> None:
    """Take the ledger lock, waiting while another sync of the account (run's job) holds it."""
    from recorder.locks import LockHeld

    deadline = time.monotonic() + LEDGER_LOCK_WAIT_SECONDS
    announced = False
    while True:
        try:
            lock.acquire()
            return
        except LockHeld as held:
            if time.monotonic() >= deadline:
                raise LockHeld(f"{held}; gave up after waiting {LEDGER_LOCK_WAIT_SECONDS:g}s") from None
            if not announced:
                log.info("waiting for the ledger sync under way to finish: %s", held)
                announced = True
            time.sleep(0.2)


@contextmanager
def _reading(database_url: str | None, account: str | None) -> Iterator[tuple[Settings, Session]]:
    """The database read-only at the current schema (querying.read_session); never migrates, never writes."""
    settings = load_settings({"database_url": database_url, "account": account}, ignore=READER_IGNORES)
    with read_session(settings.database_url) as session:
        yield settings, session


@cli.command()
@database_options
@click.option("--since", type=TIME, help=f"Entries from this time on (inclusive): {TIME_HELP}.")
@click.option("--until", type=TIME, help=f"Entries before this time: {TIME_HELP}.")
@click.option("--type", "types", multiple=True, help="Only this income type, e.g. FUNDING_FEE (repeat for several).")
@click.option("--asset", "assets", multiple=True, help="Only this asset (repeat for several).")
@click.option("--format", "fmt", type=click.Choice(reports.FORMATS), default="table", show_default=True,
              help="Output format; JSON amounts and tran_id are strings.")
@click.option("--tz", "tz", type=TimeZoneParam(), default="UTC", show_default=True,
              help="Show times in this zone in table and CSV; JSON is always UTC.")
@click.option("--coverage", "show_coverage", is_flag=True,
              help="Show which stretches of time the archive holds whole, and the gaps between them, instead of entries.")
def ledger(database_url, account, since, until, types, assets, fmt, tz, show_coverage) -> None:
    """The archived income ledger, oldest first, with a running balance per asset.

    The running balance starts at the observed wallet balance before an asset's first listed
    entry (plus the archived entries since that observation); with no observation before it,
    at the first observation after it minus the entries up to it; with none at all, or with
    --type, at 0. The table's header says which, and names any gap in the archive's coverage.
    """
    from recorder.queries.ledger import LedgerListing, coverage

    require_order("--since", since, "--until", until)
    require_showable(tz, since=since, until=until)
    with _reading(database_url, account) as (settings, session):
        covered = coverage(session, settings.account)
        if show_coverage:
            _write_coverage(covered, fmt, sys.stdout, tz)
        else:
            listing = LedgerListing(session, settings.account, since=since, until=until, types=types, assets=assets)
            _write_ledger(listing, covered, settings.account, fmt, sys.stdout, tz)


def _coverage_lines(covered: Coverage, tz: tzinfo) -> list[str]:
    def at(moment: datetime) -> str:
        return reports.format_time(moment, tz, "milliseconds")

    if not covered.stretches:
        return ["ledger coverage: nothing synced yet (run `recorder sync-ledger` or `recorder run`)"]
    lines = [f"ledger covered from {at(covered.stretches[0].covered_from)} to {at(covered.stretches[-1].covered_until)}"
             + (f", last sync {at(covered.last_sync_at)} {covered.last_sync_outcome}" if covered.last_sync_at else "")]
    for start, end in covered.gaps:
        lines.append(f"ledger GAP: nothing archived between {at(start)} and {at(end)}")
    if covered.last_sync_outcome == "failed" and covered.last_error:
        lines.append(f"last sync failed: {covered.last_error}")
    return lines


def _write_coverage(covered: Coverage, fmt: str, stream: TextIO, tz: tzinfo) -> None:
    records = [{"kind": "covered", "from": s.covered_from, "until": s.covered_until, "windows": s.windows}
               for s in covered.stretches]
    records += [{"kind": "gap", "from": start, "until": end, "windows": None} for start, end in covered.gaps]
    records.sort(key=lambda record: record["from"])
    if fmt == "table":
        for line in _coverage_lines(covered, tz):
            stream.write(f"# {line}\n")
    reports.write(fmt, stream, ("kind", "from", "until", "windows"), records, dict, tz=tz)


def _write_ledger(listing: Any, covered: Coverage, account: str, fmt: str, stream: TextIO, tz: tzinfo) -> None:
    if fmt == "table":
        # Streamed in pages like every table; where each running balance started is known once
        # its asset's first entry was read, so those lines follow the table.
        stream.write(f"# account {account}; " + "\n# ".join(_coverage_lines(covered, tz)) + "\n")
        reports.write_table(TABLE_COLUMNS, (_record(line) for line in listing), stream, tz)
        for anchor in listing.anchors.values():
            stream.write(f"# running balance {anchor.asset} starts at {reports.format_decimal(anchor.value)}: "
                         f"{_anchor_text(anchor, tz)}\n")
        return
    for line in _coverage_lines(covered, tz):
        if "GAP" in line or "nothing synced" in line or "failed" in line:
            click.echo(f"note: {line}", err=True)
    if fmt == "csv":
        reports.write_csv(LEDGER_COLUMNS, (_record(line) for line in listing), stream, tz)
        return
    # JSON streamed one entry at a time; tran_id as a string, since a JSON reader may hold numbers as floats.
    stream.write("[")
    for index, line in enumerate(listing):
        document = {**_record(line), "tran_id": str(line.tran_id)}
        stream.write(("," if index else "") + "\n  " + json.dumps(reports._jsonable(document), ensure_ascii=False))
    stream.write("\n]\n")


def _anchor_text(anchor: Any, tz: tzinfo) -> str:
    when = reports.format_time(anchor.state_time, tz, "milliseconds") if anchor.state_time else ""
    if anchor.kind == "observed":
        return f"the wallet balance observed at {when} (Binance's update time) plus the archived entries since"
    if anchor.kind == "derived":
        return f"the wallet balance observed at {when} minus the archived entries up to it"
    return "0 (a running total: no observed balance, or filtered by --type)"


def _record(line: Any) -> dict[str, Any]:
    return {name: getattr(line, name) for name in LEDGER_COLUMNS}

