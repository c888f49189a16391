"""Read commands: history, balances, diff, changes, series, gaps.

Each one parses its options, makes one library call in `recorder.queries` and renders the
result with `recorder.reports`. An unknown asset or a malformed time is a usage error
(exit 2); an unknown account or an unreachable database a RecorderError (exit 1).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from recorder import queries, reports
from recorder.cli import cli
from recorder.cli.options import database_options
from recorder.config import Settings, load_settings
from recorder.db import make_engine, make_sessions
from recorder.errors import StorageError
from recorder.schema import upgrade_to_head
from recorder.timespec import TIME_HELP, TimeSpec, TimeZoneParam

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


@contextmanager
def reading(database_url: str | None, account: str | None, assets: Sequence[str]) -> Iterator[tuple[Settings, Session, list[str]]]:
    """Open the database read-only, check the account and assets, and yield a session."""
    settings = load_settings({"database_url": database_url, "account": account})
    _require_existing_sqlite_file(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        upgrade_to_head(engine)
        with make_sessions(engine)() as session:
            try:
                known = queries.list_assets(session, settings.account)
                wanted = sorted({asset.strip().upper() for asset in assets})
                unknown = [asset for asset in wanted if asset not in known]
                if unknown:
                    raise click.UsageError(
                        f"no asset {', '.join(unknown)} in account {settings.account!r}; "
                        f"recorded assets: {', '.join(known) or 'none'}"
                    )
                yield settings, session, wanted
            except SQLAlchemyError as exc:
                raise StorageError(f"cannot read the database: {_one_line(exc)}") from None
    finally:
        engine.dispose()


def _require_existing_sqlite_file(url: str) -> None:
    # make_engine would create an empty file, and the user would see "no account" instead
    # of the real problem: a wrong path.
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).exists():
            raise StorageError(f"no database at {parsed.database}: check --database-url / RECORDER_DATABASE_URL")


def _one_line(exc: SQLAlchemyError) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


@cli.command()
@read_options
@range_options
def history(database_url, account, assets, fmt, tz, since, until) -> None:
    """Every recorded distinct state per asset, oldest first.

    A row is written only when an asset's state changed; rows with present=false mark an
    asset that vanished from Binance's response. Times without an offset are UTC.
    """
    with reading(database_url, account, assets) as (settings, session, wanted):
        states = queries.history(session, settings.account, assets=wanted or None, since=since, until=until)
    reports.write_history(states, settings.account, fmt, sys.stdout, tz)

