"""Alembic environment: the schema is recorder.models' metadata, the URL the recorder's own."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from recorder.config import load_settings
from recorder.db import make_engine
from recorder.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _configure(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=True,
        user_module_prefix="recorder.db_types.",
        compare_type=True,
    )


def run_migrations_online() -> None:
    """Run on the caller's connection (recorder migrate) or on RECORDER_DATABASE_URL (alembic CLI)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(load_settings().database_url)
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run against a database")
run_migrations_online()
