"""`recorder reconcile`: each change of the wallet balance against the income ledger.

Read-only and never migrates, like every read command; the intervals stream from the database
to the output, so a year of minute polls needs no more memory than a day.
"""

from __future__ import annotations

import sys
from decimal import Decimal, InvalidOperation

import click

from recorder.cli import cli
from recorder.cli.reporting import reading_accounts
from recorder.reports.render import FORMATS
from recorder.timespec import TIME_HELP, TimeSpec, TimeZoneParam, require_order, require_showable

TIME = TimeSpec()


class AmountParam(click.ParamType):
    """A finite decimal amount >= 0, kept exact (never a float)."""

    name = "amount"

    def convert(self, value, param, ctx) -> Decimal:
        if isinstance(value, Decimal):
            return value
        try:
            amount = Decimal(str(value).strip())
        except InvalidOperation:
            self.fail(f"{value!r} is not a decimal amount (e.g. 0.00000001)", param, ctx)
        if not amount.is_finite() or amount < 0:
            self.fail(f"{value!r} is not a finite amount >= 0", param, ctx)
        return amount


@cli.command()
@click.option("--database-url", help="SQLAlchemy URL [env RECORDER_DATABASE_URL; default: sqlite:///recorder.db].")
@click.option("--account", "accounts", multiple=True,
              help="Our label for the account (repeat for several) [default: every recorded account].")
@click.option("--asset", "assets", multiple=True, help="Only this asset (repeat for several); default: every asset.")
@click.option("--since", type=TIME, help=f"Intervals whose closing state was observed from this time on: {TIME_HELP}.")
@click.option("--until", type=TIME, help=f"... and before this time (not included): {TIME_HELP}.")
@click.option("--tolerance", type=AmountParam(), default="0", show_default=True,
              help="Flag a residual whose size exceeds this amount (in the asset's own unit).")
@click.option("--flagged-only", is_flag=True, help="List only flagged intervals.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="Output format; JSON decimals are strings, CSV puts the breakdown in one 'explained' cell.")
@click.option("--tz", "tz", type=TimeZoneParam(), default="UTC", show_default=True,
              help="Show times in this zone in table and CSV; JSON is always UTC.")
def reconcile(database_url, accounts, assets, since, until, tolerance, flagged_only, fmt, tz) -> None:
    """Per asset, each change of the wallet balance against the income entries in between.

    An entry belongs to the state the exchange had: it is counted in the interval
    (from, to] between the update times of two consecutive wallet states. The residual
    is change - explained; an interval is flagged when its residual exceeds --tolerance,
    holds an income type unknown when stored, or crosses a gap in the ledger's coverage. Entries after the last observed state are
    listed as 'pending', never as a residual. Times without an offset are UTC.
    """
    from recorder.ledger.reconcile import ledger_coverage_gaps, write_intervals
    from recorder.ledger.reconcile import reconcile as reconcile_intervals

    require_order("--since", since, "--until", until)
    require_showable(tz, since=since, until=until)
    wanted = sorted({asset.strip().upper() for asset in assets})
    with reading_accounts(database_url, accounts) as (session, labels):
        if wanted:
            _require_assets(session, labels, wanted)
        intervals = reconcile_intervals(session, labels, assets=wanted or None, since=since, until=until,
                                        tolerance=tolerance, flagged_only=flagged_only,
                                        ledger_gaps=ledger_coverage_gaps(session))
        # Written while the rows stream; on SQLite read without locks, a write meanwhile is
        # caught after the last row (reading_accounts checks on exit) and fails the command.
        write_intervals(intervals, fmt, sys.stdout, tz)


def _require_assets(session, labels, wanted) -> None:
    from sqlalchemy import select

    from recorder.models import Account, BalanceHead

    known = set(session.scalars(
        select(BalanceHead.asset).join(Account, Account.id == BalanceHead.account_id).where(Account.label.in_(labels))
    ))
    unknown = [asset for asset in wanted if asset not in known]
    if unknown:
        raise click.UsageError(f"no asset {', '.join(unknown)} recorded in {', '.join(map(repr, labels)) or 'any account'}; "
                               f"recorded assets: {', '.join(sorted(known)) or 'none'}")
