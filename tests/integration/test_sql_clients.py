"""The views opened where people open SQLite: Datasette (through our plugin) and plain sqlite3.

SQLite only: these are SQLite clients. The views use `COLLATE decimal` and `decimal_sub()`,
which a bare sqlite3 connection lacks, so each test also shows that the bare connection fails.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from recorder.db import connect_sqlite
from tests.integration.test_views import asset, record

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def recorded(sessions) -> None:
    # 9 before 10 as text, 10 before 9 as numbers: a test of the collation, not only of presence.
    record(sessions, T0, [asset("USDT", "9.00000000"), asset("BTC", "10.00000000")])
    record(sessions, T0 + timedelta(minutes=1), [asset("USDT", "123456789012345678901.12345678"), asset("BTC", "10.00000000")])


def path_of(db_url: str) -> Path:
    return Path(db_url.removeprefix("sqlite:///"))


def test_connect_sqlite_gives_views_their_decimal_functions(sessions, db_url):
    recorded(sessions)
    for target in (path_of(db_url), str(path_of(db_url)), db_url):
        connection = connect_sqlite(target)
        try:
            ordered = connection.execute("SELECT asset, balance FROM latest_balances ORDER BY balance DESC").fetchall()
            delta = connection.execute(
                "SELECT delta_balance FROM balance_changes WHERE asset = 'USDT' AND kind = 'changed'"
            ).fetchall()
        finally:
            connection.close()
        assert ordered == [("USDT", "123456789012345678901.12345678"), ("BTC", "10.00000000")]
        assert delta == [("123456789012345678892.12345678",)]
    bare = sqlite3.connect(path_of(db_url))
    try:
        with pytest.raises(sqlite3.OperationalError, match="decimal"):
            bare.execute("SELECT * FROM balance_changes").fetchall()
    finally:
        bare.close()


def test_connect_sqlite_is_read_only_and_refuses_a_missing_file(sessions, db_url, tmp_path):
    recorded(sessions)
    connection = connect_sqlite(path_of(db_url))
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            connection.execute("DELETE FROM polls")
    finally:
        connection.close()
    writable = connect_sqlite(path_of(db_url), read_only=False)
    try:
        assert writable.execute("SELECT decimal_sum(balance) FROM balances WHERE asset = 'BTC'").fetchone() == ("10.00000000",)
    finally:
        writable.close()
    missing = tmp_path / "absent.db"
    with pytest.raises(FileNotFoundError, match="no recorder database"):
        connect_sqlite(missing)
    assert not missing.exists()


def test_datasette_serves_the_views_through_the_plugin(sessions, db_url):
    """Datasette loads recorder's plugin from its entry point and the views answer with exact rows."""
    # Imported here, not skipped when absent: the test extra installs Datasette.
    from datasette.app import Datasette

    recorded(sessions)
    database = path_of(db_url)

    async def fetch() -> tuple[list, list, list]:
        datasette = Datasette([str(database)])
        plugins = await datasette.client.get("/-/plugins.json")
        latest = await datasette.client.get(f"/{database.stem}/latest_balances.json?_shape=array&_sort_desc=balance")
        changes = await datasette.client.get(
            f"/{database.stem}/balance_changes.json?_shape=array&kind=changed&asset=USDT"
        )
        for response in (plugins, latest, changes):
            assert response.status_code == 200, response.text
        return plugins.json(), latest.json(), changes.json()

    plugins, latest, changes = asyncio.run(fetch())
    assert {"name": "recorder", "hooks": ["prepare_connection"]}.items() <= next(
        plugin for plugin in plugins if plugin["name"] == "recorder"
    ).items()
    assert [(row["asset"], Decimal(row["balance"])) for row in latest] == [
        ("USDT", Decimal("123456789012345678901.12345678")),
        ("BTC", Decimal("10")),
    ]
    assert [row["delta_balance"] for row in changes] == ["123456789012345678892.12345678"]
