"""Migration 0003 (compact poll log) on both databases: every value survives up, down and up.

The old-layout rows are written with raw SQL as 0002-era code left them: surrogate poll
ids (not in time order), uids, full endpoint paths, recorded_at always set, balance ids
with gaps (balance_heads points at them).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from alembic import command
from sqlalchemy import Boolean, Connection, Engine, bindparam, inspect, text
from sqlalchemy.exc import IntegrityError

from recorder.db import make_engine
from recorder.db_types import ExactDecimal, UtcDateTime, decimal_text
from recorder.schema import alembic_config

AMOUNTS = ("balance", "cross_wallet_balance", "cross_un_pnl", "available_balance", "max_withdraw_amount")
BOOLEANS = {"present", "margin_available", "previous_margin_available"}
DECIMALS = {*AMOUNTS, *(f"previous_{name}" for name in AMOUNTS), *(f"delta_{name}" for name in AMOUNTS)}
TIMES = {"created_at", "started_at", "finished_at", "recorded_at", "observed_at", "update_time",
         "previous_observed_at", "last_poll_at"}
COMPACT_POLL_COLUMNS = ("finished_at", "started_at", "account_id", "used_weight", "asset_count", "changed_count",
                        "outcome", "endpoint", "recorded_at", "error_class", "error_message", "http_status",
                        "error_code")
STATE_COLUMNS = ("id", "account_id", "asset", "observed_at", "present", *AMOUNTS, "margin_available", "update_time")
VIEW_ORDER = {
    "latest_balances": "account_id, asset",
    "balance_changes": "account_id, asset, observed_at",
    "daily_balances": "account_id, asset, day",
    "poll_log": "account_id, finished_at",
}


def at(minute: int, second: int = 0, micro: int = 0) -> datetime:
    return datetime(2026, 1, 1, 10, minute, second, micro, tzinfo=timezone.utc)


CREATED = datetime(2025, 12, 31, 9, 0, tzinfo=timezone.utc)
UPDATE = datetime(2026, 1, 1, 9, 59, 58, 123000, tzinfo=timezone.utc)
LATE = {4: at(2, 30, 999999), 7: at(4, 2, 499999)}  # 30 s late; 1.5 s late from a .999999 finish

ACCOUNTS = [
    {"id": 1, "label": "main", "account_alias": "SgsR", "environment": "live", "created_at": CREATED},
    {"id": 2, "label": "spare", "account_alias": None, "environment": "testnet", "created_at": CREATED},
]


def poll(id_, account_id, finished_at, took, outcome, endpoint, recorded_after, **fields):
    return {
        "id": id_, "uid": f"5f0c2a4e-0d4b-4c5e-9a7e-00000000000{id_}", "account_id": account_id,
        "started_at": finished_at - took, "finished_at": finished_at, "outcome": outcome,
        "endpoint": f"/fapi/{endpoint}/balance", "recorded_at": finished_at + recorded_after,
        "asset_count": None, "changed_count": None, "used_weight": None, "error_class": None,
        "error_message": None, "http_status": None, "error_code": None, **fields,
    }


MS250 = timedelta(milliseconds=250)
POLLS = [
    poll(1, 1, at(0), MS250, "ok", "v2", timedelta(microseconds=37), asset_count=3, changed_count=3, used_weight=5),
    poll(2, 2, at(0), MS250, "ok", "v3", timedelta(microseconds=12), asset_count=1, changed_count=1, used_weight=6),
    poll(3, 1, at(1, 0, 123456), MS250, "failed", "v2", timedelta(microseconds=5), error_class="ExchangeUnavailable",
         error_message="HTTP 503 from /fapi/v2/balance", http_status=503),
    poll(4, 1, at(2, 0, 999999), timedelta(seconds=1), "ok", "v3", timedelta(seconds=30), asset_count=3,
         changed_count=2, used_weight=10),
    # Exactly 1 s late: not "more than 1 s", so recorded_at goes.
    poll(5, 1, at(3, 0, 500000), MS250, "ok", "v2", timedelta(seconds=1), asset_count=2, changed_count=0,
         used_weight=11),
    poll(6, 2, at(5, 0, 1), MS250, "failed", "v3", timedelta(microseconds=3), error_class="ClockSkew",
         error_message="Timestamp for this request was 1000ms ahead of the server's time.", http_status=400,
         error_code=-1021, used_weight=1),
    poll(7, 1, at(4, 0, 999999), MS250, "ok", "v3", timedelta(seconds=1, microseconds=500000), asset_count=2,
         changed_count=0, used_weight=12),
]


def state(id_, account_id, poll_id, asset, observed_at, amounts=None, margin_available=True):
    values = dict(zip(AMOUNTS, (Decimal(amount) for amount in amounts))) if amounts else dict.fromkeys(AMOUNTS)
    return {
        "id": id_, "account_id": account_id, "poll_id": poll_id, "asset": asset, "observed_at": observed_at,
        "present": amounts is not None, **values, "margin_available": margin_available if amounts else None,
        "update_time": UPDATE if amounts else None,
    }


BIG = ("98765432109.12345678", "98765432109.12345678", "0.00000000", "98765432100.00000000", "98765432100.00000000")
BIGGER = ("98765432110.00000000", "98765432110.00000000", "0.00000000", "98765432101.00000000", "98765432101.00000000")
DUST = ("0.00000001", "0.00000001", "0.00000000", "0.00000001", "0.00000001")
BNB = ("1.50000000", "1.50000000", "0.00000000", "1.50000000", "1.50000000")
LOSS = ("100.00000000", "112.50000000", "-12.50000000", "87.50000000", "87.50000000")
# Balance ids have gaps (4-6, 9: rolled-back transactions); balance_heads refers to them.
BALANCES = [
    state(1, 1, 1, "USDT", at(0), BIG),
    state(2, 1, 1, "BTC", at(0), DUST, margin_available=False),
    state(3, 1, 1, "BNB", at(0), BNB),
    state(7, 2, 2, "USDT", at(0), LOSS),
    # observed_at 1 µs off its poll's finished_at: the migration takes the poll's.
    state(8, 1, 4, "USDT", at(2, 0, 999998), BIGGER),
    state(10, 1, 4, "BNB", at(2, 0, 999999)),
]
HEADS = [
    {"account_id": 1, "asset": "BNB", "balance_id": 10},
    {"account_id": 1, "asset": "BTC", "balance_id": 2},
    {"account_id": 1, "asset": "USDT", "balance_id": 8},
    {"account_id": 2, "asset": "USDT", "balance_id": 7},
]


def migrate(engine: Engine, action: str, revision: str) -> None:
    """Run alembic upgrade/downgrade on one of our connections (foreign keys on), in one transaction."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)


def type_of(name: str):
    if name in TIMES:
        return UtcDateTime()
    if name in DECIMALS:
        return ExactDecimal()
    if name in BOOLEANS:
        return Boolean()
    return None


def insert(connection: Connection, table: str, rows: list[dict]) -> None:
    """INSERT as raw SQL; times, amounts and booleans bound with the column types."""
    for row in rows:
        statement = text(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join(':' + name for name in row)})")
        typed = [bindparam(name, type_=type_of(name)) for name in row if type_of(name) is not None]
        connection.execute(statement.bindparams(*typed), row)


def decode(name: str, value):
    """SQLite returns times and amounts as text and booleans as 0/1; amounts become exact text here."""
    if value is None:
        return None
    if name in TIMES:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
        return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)
    if name in DECIMALS:
        return decimal_text(Decimal(str(value)))
    if name in BOOLEANS:
        return bool(value)
    if name == "day":
        return str(value)
    return value


def rows(connection: Connection, sql: str) -> list[dict]:
    result = connection.execute(text(sql))
    names = list(result.keys())
    return [{name: decode(name, value) for name, value in zip(names, row)} for row in result]


def write_0002_data(engine: Engine) -> None:
    with engine.begin() as connection:
        insert(connection, "accounts", ACCOUNTS)
        insert(connection, "polls", POLLS)
        insert(connection, "balances", BALANCES)
        insert(connection, "balance_heads", HEADS)
        if connection.dialect.name == "postgresql":
            # Where the sequences would be had 0002-era code inserted these rows.
            for table in ("accounts", "polls", "balances"):
                connection.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"))


def schema(connection: Connection) -> dict:
    """What the inspector sees of every table, plus the views' SQL: comparable across migrations."""
    inspector = inspect(connection)
    tables = {}
    for name in inspector.get_table_names():
        tables[name] = {
            "columns": {c["name"]: (str(c["type"]), c["nullable"], c.get("default")) for c in inspector.get_columns(name)},
            "pk": (inspector.get_pk_constraint(name)["name"], inspector.get_pk_constraint(name)["constrained_columns"]),
            "fks": sorted((fk["name"], tuple(fk["constrained_columns"]), fk["referred_table"],
                           tuple(fk["referred_columns"])) for fk in inspector.get_foreign_keys(name)),
            "uniques": sorted((u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(name)),
            "indexes": sorted((i["name"], tuple(i["column_names"]), i["unique"]) for i in inspector.get_indexes(name)),
            "checks": sorted((c["name"], c["sqltext"]) for c in inspector.get_check_constraints(name)),
        }
    if connection.dialect.name == "sqlite":
        views = dict(connection.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'view'")).all())
    else:
        # Not the definitions: PostgreSQL stores `b.*` expanded, in balances' column order, and a
        # downgrade adds poll_id back as the last column (balances is altered in place there).
        views = {name: [(c["name"], str(c["type"])) for c in inspector.get_columns(name)]
                 for name in inspector.get_view_names()}
    return {"tables": tables, "views": views}


def contents(connection: Connection) -> dict:
    """Every row of the tables and views the migration touches, in a stable order."""
    result = {
        "polls": rows(connection, f"SELECT {', '.join(COMPACT_POLL_COLUMNS)} FROM polls ORDER BY account_id, finished_at"),
        "balances": rows(connection, f"SELECT {', '.join(STATE_COLUMNS)} FROM balances ORDER BY id"),
        "balance_heads": rows(connection, "SELECT * FROM balance_heads ORDER BY account_id, asset"),
        "accounts": rows(connection, "SELECT * FROM accounts ORDER BY id"),
    }
    for view, order in VIEW_ORDER.items():
        result[view] = rows(connection, f"SELECT * FROM {view} ORDER BY {order}")
    return result


@pytest.fixture
def old_engine(db_url: str):
    """An engine on a database at 0002 holding POLLS, BALANCES and HEADS in the old layout."""
    engine = make_engine(db_url)
    migrate(engine, "upgrade", "0002")
    write_0002_data(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def expected_polls() -> list[dict]:
    expected = []
    for old in sorted(POLLS, key=lambda p: (p["account_id"], p["finished_at"])):
        row = {name: old[name] for name in COMPACT_POLL_COLUMNS}
        row["endpoint"] = old["endpoint"].split("/")[2]
        row["recorded_at"] = LATE.get(old["id"])
        expected.append(row)
    return expected


def expected_balances() -> list[dict]:
    finished = {p["id"]: p["finished_at"] for p in POLLS}
    return [
        {**{name: decode(name, old[name]) for name in STATE_COLUMNS}, "observed_at": finished[old["poll_id"]]}
        for old in BALANCES
    ]


def test_migration_0003_upgrade_keeps_every_poll_state_and_head(old_engine):
    """0002 -> 0003: polls re-keyed, endpoints shortened, recorded_at kept only when late, states untouched."""
    migrate(old_engine, "upgrade", "head")
    with old_engine.connect() as connection:
        got = contents(connection)
        assert got["polls"] == expected_polls()
        assert [(p["endpoint"], p["recorded_at"] is not None) for p in got["polls"]] == [
            ("v2", False), ("v2", False), ("v3", True), ("v2", False), ("v3", True), ("v3", False), ("v3", False)]
        assert got["balances"] == expected_balances()
        assert {b["id"]: b["balance"] for b in got["balances"]} == {
            1: "98765432109.12345678", 2: "0.00000001", 3: "1.50000000", 7: "100.00000000",
            8: "98765432110.00000000", 10: None}
        assert got["balances"][3]["cross_un_pnl"] == "-12.50000000"
        assert got["balances"][4]["observed_at"] == at(2, 0, 999999)
        assert got["balance_heads"] == HEADS
        assert got["accounts"] == ACCOUNTS

        log = got["poll_log"]
        assert list(log[0]) == ["account", "account_id", "started_at", "finished_at", "duration_ms", "outcome",
                                "endpoint", "asset_count", "changed_count", "error_class", "error_message",
                                "http_status", "error_code", "used_weight", "recorded_at"]
        assert len(log) == len(POLLS)
        assert [(r["account"], r["finished_at"], r["recorded_at"]) for r in log if r["recorded_at"]] == [
            ("main", at(2, 0, 999999), LATE[4]), ("main", at(4, 0, 999999), LATE[7])]
        assert float(log[2]["duration_ms"]) == 1000.0
        assert log[-1]["error_code"] == -1021

        latest = got["latest_balances"]
        assert list(latest[0]) == ["account", "account_id", "asset", "observed_at", "present", *AMOUNTS,
                                   "margin_available", "update_time"]
        assert [(r["account"], r["asset"], r["present"], r["balance"], r["cross_un_pnl"]) for r in latest] == [
            ("main", "BNB", False, None, None),
            ("main", "BTC", True, "0.00000001", "0.00000000"),
            ("main", "USDT", True, "98765432110.00000000", "0.00000000"),
            ("spare", "USDT", True, "100.00000000", "-12.50000000"),
        ]
        changes = got["balance_changes"]
        assert "poll_id" not in changes[0]
        assert [(r["asset"], r["kind"], r["delta_balance"]) for r in changes if r["account"] == "main"] == [
            ("BNB", "appeared", None), ("BNB", "vanished", None), ("BTC", "appeared", None),
            ("USDT", "appeared", None), ("USDT", "changed", "0.87654322")]
        daily = got["daily_balances"]
        assert [(r["account"], r["asset"], r["day"], r["last_poll_at"]) for r in daily] == [
            ("main", "BNB", "2026-01-01", at(4, 0, 999999)),
            ("main", "BTC", "2026-01-01", at(4, 0, 999999)),
            ("main", "USDT", "2026-01-01", at(4, 0, 999999)),
            ("spare", "USDT", "2026-01-01", at(0)),
        ]

        tables = schema(connection)["tables"]
        assert tables["polls"]["pk"] == ("pk_polls", ["account_id", "finished_at"])
        assert list(tables["polls"]["columns"]) == list(COMPACT_POLL_COLUMNS)
        assert tables["polls"]["indexes"] == []
        assert ("fk_balances_account_id_polls", ("account_id", "observed_at"), "polls",
                ("account_id", "finished_at")) in tables["balances"]["fks"]
        assert tables["balances"]["uniques"] == [
            ("uq_balances_account_id_asset_observed_at", ("account_id", "asset", "observed_at"))]
        assert "poll_id" not in tables["balances"]["columns"]
        if connection.dialect.name == "sqlite":
            assert connection.execute(text("PRAGMA foreign_key_check")).all() == []
            polls_sql = connection.execute(text("SELECT sql FROM sqlite_master WHERE name = 'polls'")).scalar_one()
            assert "WITHOUT ROWID" in polls_sql
        else:
            assert not connection.execute(text(
                "SELECT 1 FROM pg_attribute WHERE attrelid = 'polls'::regclass AND attisdropped")).first()
            assert not connection.execute(text("SELECT to_regclass('polls_0002')")).scalar_one()

    # The next state gets the next balance id: the sequence (PostgreSQL) or rowid (SQLite) carried on.
    with old_engine.begin() as connection:
        insert(connection, "polls", [{k: v for k, v in expected_polls()[0].items() if k != "recorded_at"}
                                     | {"finished_at": at(9), "started_at": at(9)}])
        new_id = connection.execute(text(
            "INSERT INTO balances (account_id, asset, observed_at, present) VALUES (1, 'ETH', :t, false) RETURNING id"
        ).bindparams(bindparam("t", type_=UtcDateTime())), {"t": at(9)}).scalar_one()
        assert new_id == 11


def test_migration_0003_downgrade_restores_0002_and_upgrades_again(db_url):
    """head -> 0002 gives back 0002's schema and views with the same data; up again equals the first upgrade."""
    engine = make_engine(db_url)
    try:
        migrate(engine, "upgrade", "0002")
        with engine.connect() as connection:
            schema_0002 = schema(connection)
        write_0002_data(engine)
        migrate(engine, "upgrade", "head")
        with engine.connect() as connection:
            first_schema, first_contents = schema(connection), contents(connection)

        migrate(engine, "downgrade", "0002")
        with engine.connect() as connection:
            assert schema(connection) == schema_0002
            polls = rows(connection, "SELECT * FROM polls ORDER BY id")
            # Ids follow (finished_at, account_id); uids are unique and fit the old column.
            assert [(p["id"], p["account_id"], p["finished_at"]) for p in polls] == [
                (n, old["account_id"], old["finished_at"])
                for n, old in enumerate(sorted(POLLS, key=lambda p: (p["finished_at"], p["account_id"])), start=1)]
            assert len({p["uid"] for p in polls}) == len(POLLS)
            assert all(len(p["uid"]) <= 36 for p in polls)
            by_key = {(p["account_id"], p["finished_at"]): p for p in polls}
            for old in POLLS:
                restored = by_key[(old["account_id"], old["finished_at"])]
                assert restored["endpoint"] == old["endpoint"]
                assert restored["recorded_at"] == LATE.get(old["id"], old["finished_at"])
                for name in ("started_at", "outcome", "asset_count", "changed_count", "used_weight",
                             "error_class", "error_message", "http_status", "error_code"):
                    assert restored[name] == old[name], name
            joined = rows(connection, "SELECT b.id, p.account_id, p.finished_at, b.account_id AS b_account,"
                                      " b.observed_at FROM balances b JOIN polls p ON p.id = b.poll_id ORDER BY b.id")
            old_poll = {p["id"]: p for p in POLLS}
            assert [(r["id"], r["account_id"], r["finished_at"]) for r in joined] == [
                (b["id"], b["account_id"], old_poll[b["poll_id"]]["finished_at"]) for b in BALANCES]
            assert all(r["b_account"] == r["account_id"] and r["observed_at"] == r["finished_at"] for r in joined)
            assert rows(connection, f"SELECT {', '.join(STATE_COLUMNS)} FROM balances ORDER BY id") == expected_balances()
            assert rows(connection, "SELECT * FROM balance_heads ORDER BY account_id, asset") == HEADS
            assert [r["id"] for r in rows(connection, "SELECT id FROM poll_log ORDER BY id")] == list(range(1, 8))
            assert "poll_id" in rows(connection, "SELECT * FROM latest_balances")[0]
            if connection.dialect.name == "sqlite":
                assert connection.execute(text("PRAGMA foreign_key_check")).all() == []

        # 0002-era code can write again: polls.id auto-increments past the renumbered ids.
        with engine.connect() as connection, connection.begin() as transaction:
            new = {**POLLS[0], "uid": "after-downgrade", "finished_at": at(9), "started_at": at(9),
                   "recorded_at": at(9)}
            del new["id"]
            insert(connection, "polls", [new])
            assert connection.execute(text("SELECT id FROM polls WHERE uid = 'after-downgrade'")).scalar_one() == 8
            transaction.rollback()

        migrate(engine, "upgrade", "head")
        with engine.connect() as connection:
            assert schema(connection) == first_schema
            assert contents(connection) == first_contents
    finally:
        engine.dispose()


def test_migration_0003_keys_refuse_duplicate_polls_and_orphan_states(engine):
    """A poll key is stored once; a state must name an existing poll of its account (FK on both backends)."""
    with engine.begin() as connection:
        insert(connection, "accounts", ACCOUNTS)
        insert(connection, "polls", [expected_polls()[0]])
    duplicate = {**expected_polls()[0], "started_at": at(0) - timedelta(seconds=2)}
    with pytest.raises(IntegrityError), engine.begin() as connection:
        insert(connection, "polls", [duplicate])
    with pytest.raises(IntegrityError), engine.begin() as connection:
        insert(connection, "balances", [compact_state(observed_at=at(0, 0, 1))])
    with pytest.raises(IntegrityError), engine.begin() as connection:
        insert(connection, "balances", [compact_state(account_id=2)])
    with pytest.raises(IntegrityError), engine.begin() as connection:
        insert(connection, "polls", [{**expected_polls()[0], "finished_at": at(9), "endpoint": "v4"}])
    with engine.begin() as connection:
        insert(connection, "balances", [compact_state()])
        assert connection.execute(text("SELECT count(*) FROM balances")).scalar_one() == 1


def compact_state(**changes) -> dict:
    """BALANCES[0] (account 1's USDT at its 10:00 poll) without id and poll_id, with changes."""
    return {name: value for name, value in BALANCES[0].items() if name not in ("id", "poll_id")} | changes
