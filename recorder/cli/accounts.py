"""`recorder accounts`: the accounts file's accounts with their poll state, never their secrets."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from recorder.cli import cli
from recorder.config import ENVIRONMENT, load_settings
from recorder.reports import render as reports
from recorder.timespec import TimeZoneParam

COLUMNS = ("label", "endpoint", "interval_s", "base_url", "credentials", "last_ok_at", "failures_since_ok",
           "last_poll_at")
TABLE_COLUMNS = ("label", "endpoint", "interval_s", "credentials", "last_ok_at", "failures_since_ok")


@cli.command("accounts")
@click.option("--config", "config_file", help="The accounts file [env RECORDER_CONFIG].")
@click.option(
    "--database-url",
    help="Where to read the poll state [env RECORDER_DATABASE_URL; default: the file's database_url, "
    "else sqlite:///recorder.db].",
)
@click.option("--format", "fmt", type=click.Choice(reports.FORMATS), default="table", show_default=True,
              help="Output format.")
@click.option("--tz", "tz", type=TimeZoneParam(), default="UTC", show_default=True,
              help="Show times in this zone in table and CSV; JSON is always UTC.")
def accounts_command(config_file: str | None, database_url: str | None, fmt: str, tz: Any) -> None:
    """List the accounts of the accounts file: endpoint, interval, where the credentials come from,
    the last successful poll and the failed polls since. Reads the database only; never migrates."""
    from recorder.accounts import load_accounts_file, process_settings
    from recorder.cli.querying import read_session
    from recorder.db import sqlite_file_path
    from recorder.queries.account_health import AccountHealth, account_health

    path = config_file or load_settings(ignore=frozenset(ENVIRONMENT) - {"RECORDER_CONFIG"}).config_file
    if not path:
        raise click.UsageError("give the accounts file with --config FILE or RECORDER_CONFIG")
    accounts = load_accounts_file(path)
    settings = process_settings(accounts, os.environ, {"database_url": database_url})
    labels = [entry.label for entry in accounts.accounts]
    health = {label: AccountHealth(None, None, None) for label in labels}
    sqlite_file = sqlite_file_path(settings.database_url)
    if sqlite_file is None or sqlite_file.is_file():  # no database yet: nothing was polled
        with read_session(settings.database_url) as session:
            health = account_health(session, labels)
    records = []
    for entry in accounts.accounts:
        state = health[entry.label]
        records.append({
            "label": entry.label,
            "endpoint": entry.settings_base.endpoint,
            "interval_s": f"{entry.settings_base.interval:g}",
            "base_url": entry.settings_base.base_url,
            "credentials": entry.credential_source,
            "last_ok_at": state.last_ok_at,
            "failures_since_ok": state.failures_since_ok,
            "last_poll_at": state.last_poll_at,
        })
    reports.write(fmt, sys.stdout, COLUMNS, records, dict, tz=tz, table_columns=TABLE_COLUMNS)
