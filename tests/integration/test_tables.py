"""One schema definition: the ORM classes map recorder.tables, the Core tables the write path uses."""

from __future__ import annotations

import typing

import pytest
from sqlalchemy import inspect

from recorder import models, tables

MAPPED = sorted(models.Base.__subclasses__(), key=lambda cls: cls.__name__)


def test_every_table_has_exactly_one_mapped_class():
    assert sorted(cls.__table__.name for cls in MAPPED) == sorted(tables.metadata.tables)
    assert all(cls.__table__ is tables.metadata.tables[cls.__table__.name] for cls in MAPPED)


@pytest.mark.parametrize("cls", MAPPED, ids=lambda cls: cls.__name__)
def test_annotations_match_the_table_columns_and_their_nullability(cls):
    """A class's `Mapped[X | None]` annotations are exactly its table's NULL-able columns."""
    hints = typing.get_type_hints(cls)
    columns = inspect(cls).columns
    assert list(cls.__annotations__) == [column.key for column in columns]
    for column in columns:
        (inner,) = typing.get_args(hints[column.key])
        optional = type(None) in typing.get_args(inner)
        assert optional == column.nullable, f"{cls.__name__}.{column.key}"
