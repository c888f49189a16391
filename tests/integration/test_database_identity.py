"""Migration 0004 gives every database one random id, kept across upgrades and readable in one query."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from recorder.identity import database_id


def test_database_identity_is_one_uuid_per_database(engine, tmp_path):
    first = database_id(engine)
    assert str(uuid.UUID(first)) == first
    with engine.connect() as connection:
        assert database_id(connection) == first
        assert connection.execute(text("SELECT count(*) FROM database_identity")).scalar_one() == 1


def test_database_identity_refuses_a_second_row(engine):
    with pytest.raises(IntegrityError):
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO database_identity (singleton, database_id, created_at) VALUES (2, 'x', '2026-01-01')")
            )
    assert database_id(engine)
