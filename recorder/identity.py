"""The database's identity: the id migration 0004 stored in it, read with one query."""

from __future__ import annotations

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from recorder.db import database_error_line
from recorder.errors import StorageError

_READ_ID = text("SELECT database_id FROM database_identity WHERE singleton = 1")


def database_id(bind: Engine | Connection) -> str:
    """The id stored in the database (a UUID string); StorageError when it cannot be read."""
    try:
        if isinstance(bind, Engine):
            with bind.connect() as connection:
                value = connection.execute(_READ_ID).scalar_one_or_none()
        else:
            value = bind.execute(_READ_ID).scalar_one_or_none()
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot read the database's identity: {database_error_line(exc)}") from None
    if not value:
        raise StorageError("the database has no identity row: run `recorder migrate`")
    return str(value)
