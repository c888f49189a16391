"""`recorder status`: each account's health from the database and the spool, as a check.

Exit codes: 0 every account healthy, 1 one or more unhealthy, or the database missing,
unreadable or at another schema (one line on stderr), 2 usage or configuration error.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from recorder.cli import cli
from recorder.config import load_settings
from recorder.db import database_error_line, make_read_engine
from recorder.errors import StorageError
from recorder.health import health_document, read_health
from recorder.cli.querying import READER_IGNORES, _require_existing_sqlite_file
from recorder.schema import require_current_schema

# The writer's settings: a reader's own interval, metrics or key-check settings change no answer.
STATUS_IGNORES = READER_IGNORES
COLUMNS = ("account", "health", "last_ok_at", "due_at", "failures", "used_weight", "spool", "ledger_covered_until",
           "ledger_failures", "problems")


@cli.command()
@click.option(
    "--database-url",
    help="SQLAlchemy URL, e.g. sqlite:///recorder.db or postgresql://user@host/db "
    "[env RECORDER_DATABASE_URL; default: sqlite:///recorder.db].",
)
@click.option(
    "--account",
    "accounts",
    multiple=True,
    help="Only this account label (repeat for several); default: every account in the database.",
)
@click.option("--spool-dir", help="The recorder's spool folder [env RECORDER_SPOOL_DIR; default .recorder-spool].")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="Output format.")
def status(database_url: str | None, accounts: tuple[str, ...], spool_dir: str | None, fmt: str) -> None:
    """Each account's last good poll, failures, weight, spool and ledger; exit 1 when one is unhealthy.

    Reads the database (read-only, never migrates) and the spool folder, so it works without
    a running service. Unhealthy: the last successful poll is older than the gap tolerance of
    the account's schedule, or polls wait in the spool, or the income ledger (when synced) has
    not been covered for 3 days. Exit 0 healthy, 1 unhealthy or the database unreadable, 2 usage error.
    """
    settings = load_settings({"database_url": database_url, "spool_dir": spool_dir}, ignore=STATUS_IGNORES)
    _require_existing_sqlite_file(settings.database_url)
    read_engine = make_read_engine(settings.database_url)
    try:
        with read_engine.engine.connect() as connection:
            try:
                require_current_schema(connection)
                found = read_health(
                    connection, now=datetime.now(timezone.utc), spool_base=settings.spool_dir, accounts=accounts
                )
            except SQLAlchemyError as exc:
                raise StorageError(f"cannot read the database: {database_error_line(exc)}") from None
        read_engine.verify_unchanged()
    finally:
        read_engine.close()
    document = health_document(found)
    if fmt == "json":
        from recorder.reports.render import write_json

        write_json(document, sys.stdout)
    else:
        _write_table(document)
    sys.exit(0 if document["status"] == "healthy" else 1)


def _write_table(document: dict[str, Any]) -> None:
    from recorder.reports.render import write_table

    records = [
        {
            "account": item["account"],
            "health": "ok" if item["healthy"] else "UNHEALTHY",
            "last_ok_at": item["last_ok_at"],
            "due_at": item["due_at"],
            "failures": item["consecutive_failures"],
            "used_weight": item["used_weight"],
            "spool": item["spool_depth"],
            "ledger_covered_until": item["ledger_covered_until"],
            "ledger_failures": item["ledger_failures"],
            "problems": "; ".join(item["problems"]) or None,
        }
        for item in document["accounts"]
    ]
    if not records:
        click.echo("no account recorded in this database yet")
        return
    write_table(COLUMNS, records, sys.stdout)
