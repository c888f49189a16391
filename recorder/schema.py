"""Bring a database to the newest schema with the migrations that ship in the package.

Alembic is imported only inside the functions that migrate: read commands check the
schema version with plain SQL against the revisions found by scanning the migrations
folder, so they never pay for importing Alembic (about a third of a second). So does
`upgrade_to_head` before it decides to migrate: a service started on a current database
never loads Alembic, Mako and their templates (8 MB of its peak memory, which a long-lived
process would otherwise keep for nothing: Python never gives imported modules back).
"""

from __future__ import annotations

import logging
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from recorder.db import database_error_line
from recorder.errors import StorageError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

log = logging.getLogger(__name__)

# Any fixed bigint: it only has to be the same for every recorder that migrates this database.
MIGRATION_LOCK_KEY = 0x7265636F72646572  # b"recorder"
# A big upgrade rewrites whole tables; a second `recorder migrate` (or the first `run` of a
# service started at the same time) waits for it instead of failing after the usual 10 s.
MIGRATION_BUSY_TIMEOUT_MS = 30 * 60 * 1000

_REVISION_LINE = re.compile(r"^(revision|down_revision)\s*(?::[^=]*)?=\s*(.+?)\s*$", re.MULTILINE)
_QUOTED = re.compile(r"""["']([^"']+)["']""")


def migrations_dir() -> Path:
    """The migrations folder: inside an installed wheel, or the checkout's top-level one."""
    packaged = Path(__file__).resolve().parent / "_migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "migrations"


def alembic_config() -> Config:
    """An Alembic config that needs no alembic.ini, so it works from an installed wheel."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["configure_logger"] = False
    return config


def _migration_scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str | None:
    """The newest migration's revision id, as Alembic computes it."""
    return _migration_scripts().get_current_head()


@cache
def shipped_revisions() -> tuple[frozenset[str], str | None]:
    """Every revision id in the migrations folder and the head, read without Alembic.

    Each migration file declares `revision = "..."` and `down_revision = ...` at top level;
    the head is the one revision no other names as its parent. A test holds this equal to
    Alembic's own head, so a migration written another way fails CI rather than a user.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((migrations_dir() / "versions").glob("*.py")):
        declared = dict(_REVISION_LINE.findall(path.read_text(encoding="utf-8")))
        if "revision" not in declared:
            continue
        revisions.update(_QUOTED.findall(declared["revision"]))
        parents.update(_QUOTED.findall(declared.get("down_revision", "None")))
    heads = revisions - parents
    if len(heads) > 1:
        raise StorageError(f"the shipped migrations have several heads ({', '.join(sorted(heads))}): a broken install")
    return frozenset(revisions), next(iter(heads), None)


def schema_head() -> str | None:
    """The newest shipped revision id, read without importing Alembic."""
    return shipped_revisions()[1]


def require_current_schema(connection: Connection) -> None:
    """Refuse, in one line, a database whose schema is not exactly this recorder's; never migrate.

    Reads alembic_version with plain SQL, so it works through a read-only connection.
    """
    revisions, head = shipped_revisions()
    found = stored_revisions(connection)
    if found == {head}:
        return
    if not found:
        raise StorageError(f"the database has no recorder schema (expected {head}): run `recorder migrate`")
    unknown = sorted(found - revisions)
    if unknown:
        raise StorageError(
            f"the database's schema ({', '.join(unknown)}) is newer than this recorder's ({head}): upgrade recorder"
        )
    raise StorageError(
        f"the database's schema ({', '.join(sorted(found))}) is older than this recorder's ({head}): "
        "run `recorder migrate`"
    )


def stored_revisions(connection: Connection) -> set[str]:
    """The revisions alembic_version holds (none for an empty database), read with plain SQL."""
    # Asked first rather than caught: a failed SELECT would abort a PostgreSQL transaction.
    if not connection.dialect.has_table(connection, "alembic_version"):
        return set()
    return {row[0] for row in connection.execute(text("SELECT version_num FROM alembic_version"))}


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade_to_head(engine: Engine) -> bool:
    """Upgrade when behind; return whether anything ran.

    The version is read and the migrations run inside one transaction that holds the
    database's migration lock (SQLite: the write lock, taken at BEGIN IMMEDIATE; PostgreSQL:
    a transaction-level advisory lock), so of two recorders started together on a fresh
    database the second waits, then finds the schema at head and does nothing.
    """
    try:
        # Cheap check first, without Alembic: an up-to-date database (every start of a
        # service) takes no lock and imports nothing more.
        with engine.connect() as connection:
            if stored_revisions(connection) == {schema_head()}:
                return False
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot migrate the database: {database_error_line(exc)}") from None
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    try:
        scripts = _migration_scripts()
        head = scripts.get_current_head()
        with engine.connect() as connection:
            restore_timeout = _lengthen_sqlite_busy_timeout(connection)
            try:
                with connection.execution_options(sqlite_begin_immediate=True).begin():
                    if connection.dialect.name == "postgresql":
                        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                    current = MigrationContext.configure(connection).get_current_revision()
                    if current == head:
                        return False
                    if current is not None and current not in {script.revision for script in scripts.walk_revisions()}:
                        # Written by a newer recorder: migrating (or even reading) it with this one could
                        # misread it, so say what to do instead of Alembic's "can't locate revision".
                        raise StorageError(
                            f"the database's schema ({current}) is newer than this recorder's ({head}): upgrade recorder"
                        )
                    config = alembic_config()
                    config.attributes["connection"] = connection
                    command.upgrade(config, "head")
            finally:
                if restore_timeout is not None:
                    connection.exec_driver_sql(f"PRAGMA busy_timeout={restore_timeout}")
                    connection.commit()
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot migrate the database: {database_error_line(exc)}") from None
    log.info("database upgraded to schema %s", head)
    return True


def _lengthen_sqlite_busy_timeout(connection: Connection) -> int | None:
    """On SQLite, wait as long as a migration may take for the write lock; return the old timeout."""
    if connection.dialect.name != "sqlite":
        return None
    previous = int(connection.exec_driver_sql("PRAGMA busy_timeout").scalar_one())
    connection.exec_driver_sql(f"PRAGMA busy_timeout={MIGRATION_BUSY_TIMEOUT_MS}")
    connection.commit()
    return previous

