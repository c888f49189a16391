"""record_poll / record_failure on a real database of each backend."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text

from recorder.errors import ConfigError, ExchangeUnavailable
from recorder.models import Balance, BalanceHead, Poll
from recorder.records import AssetBalance, FetchedBalances
from recorder.store import ensure_account, record_failure, record_poll

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
LOCAL = "http://127.0.0.1:9"


def asset(name: str, balance: str, **overrides) -> AssetBalance:
    values = dict(
        asset=name,
        balance=Decimal(balance),
        cross_wallet_balance=Decimal(balance),
        cross_un_pnl=Decimal("0.00000000"),
        available_balance=Decimal(balance),
        max_withdraw_amount=Decimal(balance),
        margin_available=True,
        update_time=datetime(2025, 12, 31, 23, 0, 0, 123000, tzinfo=timezone.utc),
    )
    values.update(overrides)
    return AssetBalance(**values)


def fetched(*assets: AssetBalance, alias: str = "SgsR") -> FetchedBalances:
    return FetchedBalances(account_alias=alias, assets=assets, endpoint="/fapi/v2/balance", used_weight=15)


def poll(sessions, assets: FetchedBalances, at: datetime, label: str = "default", recorded_at: datetime | None = None):
    with sessions.begin() as session:
        account = ensure_account(session, label, LOCAL, at)
        return record_poll(
            session, account, assets, started_at=at, finished_at=at + timedelta(milliseconds=3), recorded_at=recorded_at
        )


def test_record_poll_stores_exact_amounts_and_reads_them_back(sessions):
    amounts = ["98765432109.12345678", "0.00000001", "-12.50000000"]
    snapshot = fetched(*(asset(f"A{i}", amount) for i, amount in enumerate(amounts)))
    outcome = poll(sessions, snapshot, T0)
    assert (outcome.asset_count, outcome.changed_count, outcome.used_weight) == (3, 3, 15)
    with sessions() as session:
        rows = session.scalars(select(Balance).order_by(Balance.asset)).all()
        assert [row.balance for row in rows] == [Decimal(a) for a in amounts]
        assert [format(row.balance, "f") for row in rows] == amounts
        assert rows[0].update_time == datetime(2025, 12, 31, 23, 0, 0, 123000, tzinfo=timezone.utc)
        assert rows[0].observed_at == T0 + timedelta(milliseconds=3)
        raw = session.execute(text("SELECT balance FROM balances ORDER BY asset")).scalars().all()
        assert [format(Decimal(str(value)), "f") for value in raw] == amounts


def test_unchanged_state_writes_only_a_poll_row(sessions):
    snapshot = fetched(asset("USDT", "100.00000000"), asset("BNB", "0.00000000"))
    poll(sessions, snapshot, T0)
    second = poll(sessions, snapshot, T0 + timedelta(minutes=1))
    changed = fetched(asset("USDT", "99.50000000"), asset("BNB", "0.00000000"))
    third = poll(sessions, changed, T0 + timedelta(minutes=2))
    assert (second.changed_count, third.changed_count) == (0, 1)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Poll)) == 3
        assert session.scalar(select(func.count()).select_from(Balance)) == 3
        head = session.scalars(
            select(Balance).join(BalanceHead, BalanceHead.balance_id == Balance.id).where(BalanceHead.asset == "USDT")
        ).one()
        assert head.balance == Decimal("99.5")


def test_vanished_asset_gets_a_marker_row_without_amounts(sessions):
    poll(sessions, fetched(asset("USDT", "1"), asset("BTC", "2")), T0)
    outcome = poll(sessions, fetched(asset("USDT", "1")), T0 + timedelta(minutes=1))
    back = poll(sessions, fetched(asset("USDT", "1"), asset("BTC", "2")), T0 + timedelta(minutes=2))
    assert (outcome.changed_count, back.changed_count) == (1, 1)
    with sessions() as session:
        btc = session.scalars(select(Balance).where(Balance.asset == "BTC").order_by(Balance.observed_at)).all()
        assert [(row.present, row.balance) for row in btc] == [(True, Decimal(2)), (False, None), (True, Decimal(2))]


def test_same_poll_is_stored_once(sessions):
    """A poll is keyed by (account, finished_at): a replayed poll stores nothing new."""
    snapshot = fetched(asset("USDT", "1"))
    first = poll(sessions, snapshot, T0)
    again = poll(sessions, fetched(asset("USDT", "2")), T0)
    assert (first.replayed, again.replayed, again.changed_count) == (False, True, 1)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Poll)) == 1
        assert session.scalars(select(Balance.balance)).all() == [Decimal(1)]


def test_poll_row_keeps_recorded_at_only_when_stored_late(sessions):
    snapshot = fetched(asset("USDT", "1"))
    finished = T0 + timedelta(milliseconds=3)
    poll(sessions, snapshot, T0, recorded_at=finished + timedelta(milliseconds=900))
    poll(sessions, snapshot, T0 + timedelta(minutes=1), recorded_at=finished + timedelta(minutes=1, seconds=30))
    with sessions() as session:
        rows = session.execute(select(Poll.finished_at, Poll.recorded_at, Poll.endpoint).order_by(Poll.finished_at)).all()
    assert [(row.recorded_at, row.endpoint) for row in rows] == [
        (None, "v2"),
        (finished + timedelta(minutes=1, seconds=30), "v2"),
    ]


def test_failed_poll_is_logged_without_touching_balances(sessions):
    poll(sessions, fetched(asset("USDT", "1")), T0)
    with sessions.begin() as session:
        account = ensure_account(session, "default", LOCAL, T0)
        error = ExchangeUnavailable("HTTP 503 from exchange", http_status=503, code=-1001)
        record_failure(session, account, error, endpoint="/fapi/v2/balance", started_at=T0, finished_at=T0)
    with sessions() as session:
        failed = session.scalars(select(Poll).where(Poll.outcome == "failed")).one()
        assert (failed.error_class, failed.http_status, failed.error_code) == ("ExchangeUnavailable", 503, -1001)
        assert session.scalar(select(func.count()).select_from(Balance)) == 1


def test_another_alias_is_refused_and_nothing_is_stored(sessions):
    poll(sessions, fetched(asset("USDT", "1"), alias="SgsR"), T0)
    with pytest.raises(ConfigError, match="'Other'"):
        poll(sessions, fetched(asset("USDT", "5"), alias="Other"), T0 + timedelta(minutes=1))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Poll)) == 1


def test_local_data_is_never_mixed_into_a_live_account(sessions):
    with sessions.begin() as session:
        ensure_account(session, "main", "https://fapi.binance.com", T0)
    with pytest.raises(ConfigError, match="live data"):
        with sessions.begin() as session:
            ensure_account(session, "main", LOCAL, T0)


def test_sql_sum_and_sort_are_exact(sessions):
    amounts = ["98765432109.12345678", "0.00000001", "-12.50000000", "9.99999999"]
    poll(sessions, fetched(*(asset(f"A{i}", amount) for i, amount in enumerate(amounts))), T0)
    engine = sessions.kw["bind"]
    is_sqlite = engine.dialect.name == "sqlite"
    total_sql = "SELECT decimal_sum(balance) FROM balances" if is_sqlite else "SELECT sum(balance) FROM balances"
    order_sql = (
        "SELECT balance FROM balances ORDER BY balance COLLATE decimal"
        if is_sqlite
        else "SELECT balance FROM balances ORDER BY balance"
    )
    with engine.connect() as connection:
        assert Decimal(str(connection.execute(text(total_sql)).scalar())) == Decimal("98765432106.62345678")
        ordered = [format(Decimal(str(v)), "f") for v in connection.execute(text(order_sql)).scalars()]
    assert ordered == ["-12.50000000", "0.00000001", "9.99999999", "98765432109.12345678"]


def test_database_errors_are_classified_by_what_retrying_would_do(db_url):
    """Refused for content: never retried. Unreachable or locked: spooled and retried."""
    from sqlalchemy import Integer, bindparam, cast, insert

    from recorder.db import make_engine
    from recorder.models import Account
    from recorder.schema import upgrade_to_head
    from recorder.store import rejected_for_content
    from tests.integration.test_outages import database_down

    engine = make_engine(db_url, sqlite_busy_timeout_ms=100)
    upgrade_to_head(engine)

    def error_of(statement, parameters=None) -> BaseException:
        try:
            with engine.begin() as connection:
                connection.execute(statement, parameters or {})
        except Exception as exc:  # noqa: BLE001 - the test inspects whatever the stack raises
            return exc
        raise AssertionError("the statement did not fail")

    too_big = error_of(select(cast(bindparam("v", type_=Integer), Integer)), {"v": 10**20})
    duplicate = insert(Account).values(label="x", environment="local", created_at=T0)
    with engine.begin() as connection:
        connection.execute(duplicate)
    assert rejected_for_content(too_big)
    assert rejected_for_content(error_of(duplicate))
    if engine.dialect.name == "postgresql":
        assert rejected_for_content(error_of(select(text(":v")), {"v": "a\x00b"}))
    with database_down(db_url):
        assert not rejected_for_content(error_of(duplicate))
    engine.dispose()
