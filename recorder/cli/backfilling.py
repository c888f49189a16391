"""Ledger write commands: `recorder backfill` (derived balances, checked against Binance's daily
snapshot) and `recorder import FILE` (income history from Binance's downloaded files).

Both write to the database (they migrate it first, like poll); requests is imported only when the
snapshot check runs.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from recorder.cli import cli
from recorder.cli.options import database_options
from recorder.cli.params import Bounded
from recorder.cli.recording import _settings, exchange_options
from recorder.db import database_error_line, make_engine, make_sessions
from recorder.errors import StorageError
from recorder.reports.render import format_decimal
from recorder.schema import upgrade_to_head

# Exit status when the derived balances disagree with Binance's daily snapshot on some day.
EXIT_SNAPSHOT_DISAGREES = 3
SNAPSHOT_KEPT_DAYS = 30


@cli.command()
@exchange_options
@click.option("--days", type=Bounded(int, 1, 3660), default=90, show_default=True,
              help="Derive back to this many days before now (the REST ledger keeps three months; "
              "older entries come from `recorder import`).")
@click.option("--asset", "assets", multiple=True, help="Only this asset (repeat for several); default: every asset.")
@click.option("--no-snapshot-check", is_flag=True,
              help="Do not compare with Binance's daily account snapshot (GET /sapi/v1/accountSnapshot, weight 2400).")
def backfill(days: int, assets: tuple[str, ...], no_snapshot_check: bool, **values: Any) -> None:
    """Derive the wallet balance before the first observation from the income ledger.

    Walks each asset's archived income entries back from its first recorded balance and stores
    the result as derived rows (never mixed with observed ones: see `history --include-derived`).
    Stops where the archive stops being complete (a gap in the ledger sync's coverage, see
    `ledger --coverage`, or before the first synced or imported entry), and says where and why. Re-running replaces the derived
    rows. Then compares each of the last 30 days with Binance's daily snapshot: exit 3 when a day
    disagrees.
    """
    from recorder.ledger.backfill import archive_coverage, backfill as derive

    settings = _settings(values)
    now = datetime.now(timezone.utc)
    since = now - timedelta(days=days)
    engine = make_engine(settings.database_url)
    try:
        upgrade_to_head(engine)
        sessions = make_sessions(engine, write=True)
        try:
            wanted = sorted({asset.strip().upper() for asset in assets})
            with sessions.begin() as session:
                # Never across a stretch the ledger sync (or an imported file) did not cover: a
                # balance derived over it would be invented.
                coverage = archive_coverage(session, settings.account)
                result = derive(session, settings.account, since=since, derived_at=now, assets=wanted or None,
                                coverage=coverage)
                missing = sorted(set(wanted) - {asset.asset for asset in result.assets})
                if missing:
                    # Raised inside the transaction: nothing of this run is kept.
                    raise click.UsageError(f"no recorded balance of {', '.join(missing)} in account "
                                           f"{settings.account!r} to backfill from")
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot write the derived balances: {database_error_line(exc)}") from None
        if not result.assets:
            click.echo(f"nothing to backfill: account {settings.account!r} has no recorded balance yet")
            return
        for note in coverage.notes:
            click.echo(f"note: {note}")
        for asset in result.assets:
            click.echo(_asset_line(asset))
        if no_snapshot_check:
            return
        disagreements = _check_snapshots(settings, sessions, result, now)
    finally:
        engine.dispose()
    if disagreements:
        # The derived rows stay stored: the disagreement is the finding, printed above.
        sys.exit(EXIT_SNAPSHOT_DISAGREES)


def _asset_line(asset: Any) -> str:
    if asset.start is None:
        return f"{asset.asset}: nothing derived: {asset.stopped}"
    line = (f"{asset.asset}: {asset.rows} derived balances from {_iso(asset.start)} (opening "
            f"{format_decimal(asset.opening)}, {asset.entries} entries) up to the first observation "
            f"{_iso(asset.anchor_observed_at)} ({format_decimal(asset.anchor_balance)})")
    return line + (f"; stopped early: {asset.stopped}" if asset.stopped else "")


def _check_snapshots(settings: Any, sessions: Any, result: Any, now: datetime) -> int:
    """Print the comparison with Binance's daily snapshot; the number of days that disagree."""
    from recorder.exchange import BinanceFuturesClient, fetch_futures_snapshots
    from recorder.ledger.backfill import AGREE, DISAGREE, check_snapshots

    starts = [asset.start for asset in result.assets if asset.start is not None]
    ends = [asset.anchor_observed_at for asset in result.assets if asset.start is not None]
    window_start = max(min(starts, default=now), now - timedelta(days=SNAPSHOT_KEPT_DAYS))
    window_end = min(max(ends, default=now), now)
    if not starts or window_start >= window_end:
        click.echo(f"snapshot check: no derived day within the last {SNAPSHOT_KEPT_DAYS} days, which is all "
                   "Binance's daily snapshot keeps")
        return 0
    client = BinanceFuturesClient.from_settings(settings)
    try:
        snapshots = fetch_futures_snapshots(client, start=window_start, end=window_end)
    finally:
        client.close()
    with sessions() as session:
        comparisons = check_snapshots(session, result.account, snapshots)
    compared = [c for c in comparisons if c.status in (AGREE, DISAGREE)]
    wrong = [c for c in compared if c.status == DISAGREE]
    for c in wrong:
        click.echo(f"snapshot disagrees: {c.asset} {c.day.isoformat()} (at {_iso(c.at)}): derived "
                   f"{format_decimal(c.derived)}, snapshot {format_decimal(c.snapshot)}, difference "
                   f"{format_decimal(c.difference)}")
    click.echo(f"snapshot check: {len(compared) - len(wrong)} asset-days agree, {len(wrong)} disagree "
               f"({len(comparisons) - len(compared)} snapshot figures outside the derived span)")
    return len(wrong)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@cli.command("import")
@database_options
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def import_command(file: Path, **values: Any) -> None:
    """Archive income history from a file downloaded from Binance (zipped or not).

    Reads the futures transaction history (Date(UTC),type,Amount,Asset,Symbol,Transaction ID) or
    the account statement (User_ID,UTC_Time,Account,Operation,Coin,Change,Remark; futures rows
    only). Entries already archived are skipped, so importing a file twice adds nothing; a bad
    file stores nothing. An account never polled is created (label from --account, environment
    from BINANCE_BASE_URL), so old files can be archived before the first poll.
    """
    from recorder.config import load_settings
    from recorder.ledger.imports import import_file

    settings = load_settings(values)
    engine = make_engine(settings.database_url)
    try:
        upgrade_to_head(engine)
        try:
            with make_sessions(engine, write=True).begin() as session:
                result = import_file(session, settings.account, file, recorded_at=datetime.now(timezone.utc),
                                     base_url=settings.base_url)
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot store the entries of {file}: {database_error_line(exc)}") from None
    finally:
        engine.dispose()
    line = (f"imported {result.file} ({result.kind}): {result.rows} entries, {result.added} added, "
            f"{result.already_archived} already archived")
    if result.other_accounts:
        line += f", {result.other_accounts} rows of other accounts skipped"
    if result.unknown_types:
        line += f"; unknown income types stored and flagged: {', '.join(result.unknown_types)}"
    click.echo(line)
