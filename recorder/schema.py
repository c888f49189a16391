"""Bring a database to the newest schema with the migrations that ship in the package."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from recorder.db import database_error_line
from recorder.errors import StorageError

log = logging.getLogger(__name__)


def migrations_dir() -> Path:
    """The migrations folder: inside an installed wheel, or the checkout's top-level one."""
    packaged = Path(__file__).resolve().parent / "_migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "migrations"


def alembic_config() -> Config:
    """An Alembic config that needs no alembic.ini, so it works from an installed wheel."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["configure_logger"] = False
    return config


def _migration_scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str | None:
    """The newest migration's revision id."""
    return _migration_scripts().get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade_to_head(engine: Engine) -> bool:
    """Upgrade when behind; return whether anything ran."""
    try:
        scripts = _migration_scripts()
        head = scripts.get_current_head()
        current = current_revision(engine)
        if current == head:
            return False
        if current is not None and current not in {script.revision for script in scripts.walk_revisions()}:
            # Written by a newer recorder: migrating (or even reading) it with this one could
            # misread it, so say what to do instead of Alembic's "can't locate revision".
            raise StorageError(
                f"the database's schema ({current}) is newer than this recorder's ({head}): upgrade recorder"
            )
        config = alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot migrate the database: {database_error_line(exc)}") from None
    log.info("database upgraded to schema %s", head)
    return True
