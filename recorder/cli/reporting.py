"""Period commands: statement (table, CSV, JSON) and report (one self-contained HTML file).

Both read the database read-only, build one `Statement` (recorder.reports.statement) for
[--since, --until) and render it; neither writes to the database or migrates it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from recorder.cli import cli, querying
from recorder.config import load_settings
from recorder.models import Account
from recorder.queries import find_account
from recorder.reports.render import FORMATS
from recorder.timespec import TIME_HELP, TimeSpec, TimeZoneParam, require_order, require_showable

TIME = TimeSpec()
# The writer's polling interval lives in the database; a reader's own RECORDER_INTERVAL and
# RECORDER_ACCOUNT play no part (the accounts are chosen with --account, default: all).
READER_IGNORES = querying.READER_IGNORES | {"RECORDER_ACCOUNT"}


@contextmanager
def reading_accounts(database_url: str | None, accounts: Sequence[str]) -> Iterator[tuple[Session, list[str]]]:
    """Open the database read-only, check its schema and the accounts; yield a session and the labels.

    No --account means every account in the database, by label.
    """
    settings = load_settings({"database_url": database_url}, ignore=READER_IGNORES)
    with querying.read_session(settings.database_url) as session:
        labels = list(dict.fromkeys(label.strip() for label in accounts))
        for label in labels:
            find_account(session, label)  # ConfigError naming the recorded accounts
        if not labels:
            labels = list(session.scalars(select(Account.label).order_by(Account.label)))
        yield session, labels


def period_options(function):
    """--database-url, --account (repeatable), --since, --until, --tz, --include-derived."""
    function = click.option(
        "--tz", "tz", type=TimeZoneParam(), default="UTC", show_default=True,
        help="Cut days at midnight in this zone and show times in it (IANA name or +02:00); JSON times stay UTC.",
    )(function)
    function = click.option("--until", type=TIME, default="now", show_default=True,
                            help=f"End of the period, not included: {TIME_HELP}.")(function)
    function = click.option("--since", type=TIME, required=True, help=f"Start of the period, included: {TIME_HELP}.")(function)
    function = click.option("--account", "accounts", multiple=True,
                            help="Our label for the account (repeat for several) [default: every recorded account].")(function)
    function = click.option("--database-url",
                            help="SQLAlchemy URL [env RECORDER_DATABASE_URL; default: sqlite:///recorder.db].")(function)
    function = click.option(
        "--include-derived", is_flag=True,
        help="Also the wallet balances `recorder backfill` derived from the income ledger before each asset's first "
             "observation, labelled 'derived' wherever they appear (as in `history --include-derived`).",
    )(function)
    return function


@cli.command()
@period_options
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="Output format; CSV has one 'period' row per account and asset, then its 'day' rows; JSON decimals are strings.")
def statement(database_url, accounts, since, until, tz, include_derived, fmt) -> None:
    """Per account and asset over [--since, --until): opening, closing, change, high, low, coverage, days.

    The balance as of an instant is the last state observed before it (a change observed
    exactly at --since belongs to the period); inside a gap it is marked 'stale'. Times
    without an offset are UTC.
    """
    from recorder.reports.statement import build_statement, write_statement

    require_order("--since", since, "--until", until)
    require_showable(tz, since=since, until=until)
    with reading_accounts(database_url, accounts) as (session, labels):
        built = build_statement(session, since, until, labels, tz, include_derived=include_derived)
    write_statement(built, fmt, sys.stdout, tz)


@cli.command()
@period_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="report.html", show_default=True,
              help="The HTML file to write.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def report(database_url, accounts, since, until, tz, include_derived, out, force) -> None:
    """One self-contained HTML file for [--since, --until): statement, charts, gaps, poll health.

    The file loads nothing from the network (the chart library and data are inside it) and
    prints on A4. An existing --out is refused without --force; the file is written to a
    temporary name and renamed, so a reader never sees half a report.
    """
    from recorder.reports.html import build_report, write_report

    require_order("--since", since, "--until", until)
    require_showable(tz, since=since, until=until)
    if out.exists() and not force:
        raise click.UsageError(f"{out} exists: choose another --out or add --force to replace it")
    with reading_accounts(database_url, accounts) as (session, labels):
        built = build_report(session, since, until, labels, tz, include_derived=include_derived)
    size = write_report(built, out, force=force)
    click.echo(f"wrote {out} ({size} bytes)", err=True)
