"""Prepared statements (the poll's hot path) send what SQLAlchemy sends and fail as it fails."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError

from recorder import coverage, store
from recorder.db import write_sessions
from recorder.prepared import Prepared
from recorder.tables import balances, polls

AT = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


def sent_by(engine, run) -> list[tuple[str, object]]:
    """(SQL, parameters) of each statement `run` sends on the engine."""
    sent: list[tuple[str, object]] = []

    def record(_connection, _cursor, statement, parameters, *_rest) -> None:
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return [(sql, params) for sql, params in sent if not sql.startswith("BEGIN")]


def poll_values(account_id: int, at: datetime) -> dict[str, object]:
    return {"finished_at": at, "started_at": at - timedelta(seconds=1), "account_id": account_id, "used_weight": 7,
            "asset_count": 1, "changed_count": 1, "outcome": "ok", "endpoint": "v2", "recorded_at": None}


def state_values(account_id: int, at: datetime) -> dict[str, object]:
    return {"account_id": account_id, "observed_at": at, "asset": "USDT", "present": True,
            "balance": Decimal("12.30000000"), "cross_wallet_balance": Decimal("1E-8"), "cross_un_pnl": Decimal("-0.5"),
            "available_balance": Decimal("0"), "max_withdraw_amount": Decimal("99999999999.12345678"),
            "margin_available": True, "update_time": at}


@pytest.fixture
def connection(engine):
    with write_sessions(engine).bind.connect() as connection:
        with connection.begin():
            store.ensure_account(connection, "a", "http://127.0.0.1:1", AT)
        yield connection


def test_the_same_sql_and_parameters_as_sqlalchemy_and_the_same_rows(engine, connection):
    dialect = engine.dialect.name
    insert_poll = store._insert_poll_statement(dialect)
    insert_state = store.insert(balances).returning(balances.c.id)
    lookup = {"account_id": 1, "at": AT + timedelta(minutes=1)}
    with connection.begin() as transaction:
        by_sqlalchemy = sent_by(engine, lambda: (
            connection.execute(insert_poll, poll_values(1, AT)),
            connection.execute(insert_state, state_values(1, AT)),
            connection.execute(coverage._NEIGHBOURS.statement, lookup).all(),
        ))
        expected_neighbours = [tuple(row) for row in connection.execute(coverage._NEIGHBOURS.statement, lookup)]
        transaction.rollback()
    with connection.begin() as transaction:
        rows = {}
        by_prepared = sent_by(engine, lambda: rows.update(
            poll=Prepared(insert_poll, list(poll_values(1, AT))).execute(connection, poll_values(1, AT)),
            state=Prepared(insert_state, list(state_values(1, AT))).execute(connection, state_values(1, AT)),
            neighbours=coverage._NEIGHBOURS.execute(connection, lookup),
        ))
        stored = connection.execute(select(balances).where(balances.c.id == rows["state"][0][0])).one()
        transaction.rollback()
    assert by_prepared == by_sqlalchemy
    assert rows["poll"] == [(1,)]
    # Result processing as SQLAlchemy's: the previous poll comes back as an aware UTC time.
    assert rows["neighbours"] == expected_neighbours == [(AT, None, None, None)]
    assert {name: stored._mapping[name] for name in state_values(1, AT)} == state_values(1, AT)


def test_a_database_refusal_is_sqlalchemys_error_and_the_transaction_rolls_back(engine, connection):
    """An insert the database refuses raises SQLAlchemy's IntegrityError, which the service classifies."""
    orphan = state_values(1, AT + timedelta(hours=1))  # no poll row with this key: the foreign key refuses it
    insert_state = Prepared(store.insert(balances).returning(balances.c.id), list(orphan))
    with pytest.raises(IntegrityError):
        with connection.begin():
            Prepared(store._insert_poll_statement(engine.dialect.name), list(poll_values(1, AT))).execute(
                connection, poll_values(1, AT)
            )
            insert_state.execute(connection, orphan)
    assert connection.execute(select(polls)).all() == []
