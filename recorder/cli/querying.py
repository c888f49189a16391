"""Read commands: history, balances, diff, changes, series, gaps.

Each one parses its options, makes one library call in `recorder.queries` and renders the
result with `recorder.reports`. An unknown asset or a malformed time is a usage error
(exit 2); an unknown account or an unreachable database a RecorderError (exit 1).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from recorder import queries
from recorder.reports import render as reports
from recorder.cli import cli
from recorder.cli.options import database_options
from recorder.cli.params import Bounded
from recorder.config import Settings, load_settings
from recorder.db import database_error_line, make_read_engine, make_sessions, sqlite_file_path
from recorder.errors import StorageError
from recorder.models import AMOUNT_FIELDS
from recorder.schema import require_current_schema
from recorder.timespec import TIME_HELP, TimeSpec, TimeZoneParam, require_order, require_showable

F = Callable[..., Any]
TIME = TimeSpec()


def read_options(function: F) -> F:
    """--database-url, --account, --asset, --format and --tz, shared by every read command."""
    function = click.option(
        "--tz",
        "tz",
        type=TimeZoneParam(),
        default="UTC",
        show_default=True,
        help="Show times in this zone (IANA name like Europe/Berlin, or +02:00) in table and CSV; "
        "JSON is always UTC.",
    )(function)
    function = click.option(
        "--format",
        "fmt",
        type=click.Choice(reports.FORMATS),
        default="table",
        show_default=True,
        help="Output format; JSON decimals are strings.",
    )(function)
    function = click.option(
        "--asset",
        "assets",
        multiple=True,
        help="Only this asset (repeat for several); default: every asset.",
    )(function)
    return database_options(function)


def range_options(function: F) -> F:
    """--since and --until: a half-open range [since, until)."""
    function = click.option("--until", type=TIME, help=f"Up to, not including, this time: {TIME_HELP}.")(function)
    function = click.option("--since", type=TIME, help=f"From this time on (inclusive): {TIME_HELP}.")(function)
    return function


# The polling interval is the writer's (stored in the database); a reader's own
# RECORDER_INTERVAL, even a malformed one, must not change or break any answer. Nor may the
# settings only `run` uses (the metrics endpoint, the key check), shared in one environment file.
READER_IGNORES = frozenset({
    "RECORDER_INTERVAL", "RECORDER_METRICS_ADDR", "RECORDER_METRICS_ALLOW_REMOTE",
    "RECORDER_REQUIRE_READ_ONLY_KEY", "BINANCE_SPOT_BASE_URL", "RECORDER_LEDGER_INTERVAL",
})


@contextmanager
def read_session(database_url: str) -> Iterator[Session]:
    """A session on the database opened read-only at the current schema; never migrates, never writes.

    A schema behind this recorder's is a one-line error telling the user to run `recorder
    migrate`; a database error inside the block is a one-line StorageError; after the block the
    database is checked byte-identical (before the caller renders anything).
    """
    _require_existing_sqlite_file(database_url)
    read_engine = make_read_engine(database_url)
    try:
        with make_sessions(read_engine.engine)() as session:
            try:
                require_current_schema(session.connection())
                yield session
            except SQLAlchemyError as exc:
                raise StorageError(f"cannot read the database: {database_error_line(exc)}") from None
        read_engine.verify_unchanged()
    finally:
        read_engine.close()


@contextmanager
def reading(database_url: str | None, account: str | None, assets: Sequence[str]) -> Iterator[tuple[Settings, Session, list[str]]]:
    """Open the database read-only (see read_session), check the account and assets, and yield a session."""
    settings = load_settings({"database_url": database_url, "account": account}, ignore=READER_IGNORES)
    with read_session(settings.database_url) as session:
        known = queries.list_assets(session, settings.account)
        wanted = sorted({asset.strip().upper() for asset in assets})
        unknown = [asset for asset in wanted if asset not in known]
        if unknown:
            raise click.UsageError(
                f"no asset {', '.join(unknown)} in account {settings.account!r}; "
                f"recorded assets: {', '.join(known) or 'none'}"
            )
        yield settings, session, wanted


def _require_existing_sqlite_file(url: str) -> None:
    # A read must never create a file; without this check the user would see "unable to
    # open database file" instead of the real problem: a wrong path.
    path = sqlite_file_path(url)
    if path is not None and not path.is_file():
        raise StorageError(f"no database at {path}: check --database-url / RECORDER_DATABASE_URL")


@cli.command()
@read_options
@range_options
@click.option("--include-derived", is_flag=True,
              help="Also the backfilled wallet balances (`recorder backfill`), with a source column: observed or derived.")
def history(database_url, account, assets, fmt, tz, since, until, include_derived) -> None:
    """Every recorded distinct state per asset, oldest first.

    A row is written only when an asset's state changed; rows with present=false mark an
    asset that vanished from Binance's response. Times without an offset are UTC.
    """
    require_order("--since", since, "--until", until)
    require_showable(tz, since=since, until=until)
    with reading(database_url, account, assets) as (settings, session, wanted):
        if include_derived:
            from recorder.ledger.backfill import history_records, iter_derived

            states = queries.iter_history(session, settings.account, assets=wanted or None, since=since, until=until)
            derived = iter_derived(session, settings.account, assets=wanted or None, since=since, until=until)
            records = history_records(settings.account, states, derived)
            reports.write(fmt, sys.stdout, (*reports.HISTORY_COLUMNS, "source"), records, lambda record: record, tz=tz)
        elif fmt == "csv" and tz is reports.UTC:
            # The export's path, byte for byte the same CSV: text rows made by the database,
            # written by csv in C, with no Decimal or datetime per row (15x faster on a year).
            from recorder.queries.flat import history_rows
            from recorder.reports.export import write_csv

            rows = history_rows(session, settings.account, assets=wanted or None, since=since, until=until, csv_lines=True)
            write_csv(rows.columns, rows.batches, sys.stdout, lineterminator="\n", lines=True)
        else:
            # Written while the rows are read: constant memory whatever the range.
            states = queries.iter_history(session, settings.account, assets=wanted or None, since=since, until=until)
            reports.write_history(states, settings.account, fmt, sys.stdout, tz)



# A year: no recorder polls less often, and a larger value would only hide every gap.
MAX_TOLERANCE_SECONDS = 366 * 86400


def tolerance_option(function: F) -> F:
    """--tolerance: how long without a successful poll counts as a gap."""
    return click.option(
        "--tolerance",
        # Finite and bounded: `nan` would compare false everywhere and `inf` overflow a timedelta.
        type=Bounded(float, 0.001, MAX_TOLERANCE_SECONDS, "s"),
        help="Seconds without a successful poll that make a gap, 0.001 to 31622400 (a year) [default: from the schedule the recorder "
        "stored: 1.5 x the interval it polled at (90 s where none was declared); RECORDER_INTERVAL "
        "in this shell plays no part].",
    )(function)


def _tolerance(seconds: float | None) -> timedelta | None:
    # None: the queries take the tolerance from the schedule stored in the database.
    return None if seconds is None else timedelta(seconds=seconds)


def _note(line: str | None) -> None:
    if line:
        click.echo(line, err=True)


@cli.command()
@read_options
@click.option("--at", "at", type=TIME, default="now", help=f"The instant [default: now]: {TIME_HELP}.")
@tolerance_option
def balances(database_url, account, assets, fmt, tz, at, tolerance) -> None:
    """Each asset's balance at an instant: the last state observed at or before it.

    Shows when each state was observed and how stale it is (seconds since the last
    successful poll); inside a gap the status says 'stale' instead of pretending to be
    fresh. Times without an offset are UTC.
    """
    require_showable(tz, at=at)
    with reading(database_url, account, assets) as (settings, session, wanted):
        result = queries.as_of(session, settings.account, at, assets=wanted or None, tolerance=_tolerance(tolerance))
    _note(reports.describe_freshness(result.freshness, "--at", tz))
    reports.write_balances(result, fmt, sys.stdout, tz)


@cli.command()
@read_options
@click.option("--from", "start", type=TIME, required=True, help=f"The earlier instant: {TIME_HELP}.")
@click.option("--to", "end", type=TIME, default="now", help=f"The later instant [default: now]: {TIME_HELP}.")
@tolerance_option
@click.option("--explain", is_flag=True,
              help="Break each balance change down by income type from the ledger, with what it leaves unexplained.")
def diff(database_url, account, assets, fmt, tz, start, end, tolerance, explain) -> None:
    """Per asset, the state at --from and at --to and the exact change of every amount (to - from).

    Assets that appeared or vanished in between are shown as such. With --explain, the
    wallet balance's change is broken down by income type (the entries between the two
    states' update times, as `recorder reconcile` counts them). Times without an
    offset are UTC.
    """
    require_order("--from", start, "--to", end)
    require_showable(tz, **{"from": start, "to": end})
    explanations = None
    with reading(database_url, account, assets) as (settings, session, wanted):
        result = queries.diff(session, settings.account, start, end, assets=wanted or None, tolerance=_tolerance(tolerance))
        if explain:
            from recorder.ledger.reconcile import explain_diff

            explanations = explain_diff(session, settings.account, result)
    _note(reports.describe_freshness(result.start, "--from", tz))
    _note(reports.describe_freshness(result.end, "--to", tz))
    reports.write_diff(result, fmt, sys.stdout, tz, explanations)


@cli.command()
@read_options
@range_options
def changes(database_url, account, assets, fmt, tz, since, until) -> None:
    """Every change event, oldest first, with the previous value and the delta of each amount.

    Times without an offset are UTC.
    """
    require_order("--since", since, "--until", until)
    require_showable(tz, since=since, until=until)
    with reading(database_url, account, assets) as (settings, session, wanted):
        if fmt == "csv" and tz is reports.UTC:
            # As in history: the export's text rows, byte for byte the same CSV, 5x faster.
            from recorder.queries.flat import change_rows
            from recorder.reports.export import write_csv

            rows = change_rows(session, settings.account, assets=wanted or None, since=since, until=until)
            write_csv(rows.columns, rows.batches, sys.stdout, lineterminator="\n")
        else:
            events = queries.iter_changes(session, settings.account, assets=wanted or None, since=since, until=until)
            reports.write_changes(events, settings.account, fmt, sys.stdout, tz)


@cli.command()
@read_options
@click.option("--since", type=TIME, help=f"From this time on [default: the first poll]: {TIME_HELP}.")
@click.option("--until", type=TIME, default="now", help=f"Up to this time [default: now]: {TIME_HELP}.")
@tolerance_option
def gaps(database_url, account, assets, fmt, tz, since, until, tolerance) -> None:
    """Stretches without a successful poll longer than the tolerance, with the failures inside.

    The tolerance is the recorder's: 1.5 x the interval it stored for the account (so one
    failed or missed poll is a gap), whatever this shell's RECORDER_INTERVAL says; --tolerance
    overrides it. A gap runs from the last successful poll before it to the next one; one still going on
    at --until is marked ongoing. A poll reads every asset at once, so the gaps are the same
    for every asset: --asset only checks that the asset was recorded. Times without an
    offset are UTC.
    """
    require_order("--since", since, "--until", until)
    require_showable(tz, since=since, until=until)
    with reading(database_url, account, assets) as (settings, session, _):
        found = queries.gaps(session, settings.account, since=since, until=until, tolerance=_tolerance(tolerance))
        reports.write_gaps(found, fmt, sys.stdout, tz)


@cli.command()
@database_options
@click.option("--asset", required=True, help="The asset, e.g. USDT.")
@click.option("--field", type=click.Choice(AMOUNT_FIELDS), default="balance", show_default=True, help="The amount to follow.")
@click.option("--every", type=click.Choice(list(queries.BUCKETS)), default="hour", show_default=True, help="Bucket size.")
@click.option("--since", type=TIME, default="24h", show_default=True, help=f"Start of the range: {TIME_HELP}.")
@click.option("--until", type=TIME, default="now", show_default=True, help=f"End of the range (exclusive): {TIME_HELP}.")
@click.option("--format", "fmt", type=click.Choice(reports.FORMATS), default="table", show_default=True, help="Output format.")
@click.option("--tz", "tz", type=TimeZoneParam(), default="UTC", show_default=True,
              help="Day buckets start at midnight in this zone; table and CSV show times in it. JSON is UTC.")
@tolerance_option
def series(database_url, account, asset, field, every, since, until, fmt, tz, tolerance) -> None:
    """The value of one amount at the end of each minute, hour or day.

    Values are carried forward through quiet periods and left empty (status 'gap') where the
    last successful poll is older than the tolerance. Times without an offset are UTC.
    """
    require_order("--since", since, "--until", until)
    require_showable(tz, since=since, until=until)
    with reading(database_url, account, (asset,)) as (settings, session, wanted):
        try:
            points = queries.iter_series(session, settings.account, wanted[0], field, since, until, every=every,
                                         tolerance=_tolerance(tolerance), tz=tz)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        reports.write_series(points, wanted[0], field, fmt, sys.stdout, tz)
