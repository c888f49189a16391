"""One bad poll never blocks the others: hostile responses are stored as failed polls, cleaned,
and the healthy polls after them reach the database at once, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from recorder.db import make_sessions
from recorder.errors import ExchangeError, RejectedPoll, StorageError
from recorder.exchange import BinanceFuturesClient
from recorder.identity import database_id
from recorder.models import Account, Balance, Poll
from recorder.records import AssetBalance, FetchedBalances
from recorder.service import Recorder, utcnow
from recorder.spool import PollFailure, Spool, SpooledPoll
from recorder.storable import TEXT_LIMIT

ALIAS = "SgsR"
HUGE = 10**20  # beyond int64: PostgreSQL and SQLite both refuse it as an integer


def healthy_body(balance: str = "100.00000000", alias: str = ALIAS) -> bytes:
    return json.dumps(
        [
            {
                "accountAlias": alias,
                "asset": "USDT",
                "balance": balance,
                "crossWalletBalance": balance,
                "crossUnPnl": "0.00000000",
                "availableBalance": balance,
                "maxWithdrawAmount": balance,
                "marginAvailable": True,
                "updateTime": 1764000000123,
            }
        ]
    ).encode()


class HostileExchange:
    """A tiny Binance look-alike answering the balance endpoint from a script, then healthily."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str], bytes]] = []
        self.healthy = healthy_body()
        exchange = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.startswith("/fapi/v1/time"):
                    status, headers, body = 200, {}, json.dumps({"serverTime": int(time.time() * 1000)}).encode()
                elif not self.path.startswith("/fapi/"):
                    # `recorder run`'s key check (/sapi/...) must not take the balance script's answers.
                    status, headers, body = 404, {}, b'{"code": -5000, "msg": "Path not found"}'
                elif exchange.script:
                    status, headers, body = exchange.script.pop(0)
                else:
                    status, headers, body = 200, {"X-MBX-USED-WEIGHT-1M": "10"}, exchange.healthy
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile():
    exchange = HostileExchange()
    yield exchange
    exchange.close()


class MinuteClock:
    """A wall clock a minute further at each poll: the client's per-minute weight budget restarts."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def next_minute(self) -> None:
        self.now += 61


def make_recorder(base_url: str, engine, tmp_path, wall_clock=None) -> Recorder:
    client = BinanceFuturesClient(
        base_url=base_url,
        api_key="k",
        api_secret="s",
        # One request per poll: the scripted hostile answer is that poll's whole story.
        retry_attempts=1,
        sleep=lambda seconds: None,
        **({"wall_clock": wall_clock} if wall_clock else {}),
    )
    identity = database_id(engine)
    return Recorder(
        client=client,
        sessions=make_sessions(engine, write=True),
        account="default",
        spool=Spool(tmp_path / "spool", database_id=identity, account="default"),
    )


def polls(engine) -> list[Poll]:
    with make_sessions(engine)() as session:
        return list(session.scalars(select(Poll).order_by(Poll.finished_at)))


HOSTILE_ERRORS = {
    "nul in msg": (400, {}, {"code": -1100, "msg": "Illegal characters\u0000 found\u0000"}),
    "huge code": (400, {}, {"code": HUGE, "msg": "odd"}),
    "code beyond int32": (400, {}, {"code": 2**31, "msg": "odd"}),
    "huge weight": (400, {"X-MBX-USED-WEIGHT-1M": str(HUGE)}, {"code": -1100, "msg": "bad"}),
    "control characters, long": (400, {}, {"code": -1100, "msg": "line1\nline2\r\x1b[31m\u2028" + "x" * 5000}),
}


@pytest.mark.parametrize("name", HOSTILE_ERRORS)
def test_hostile_error_is_stored_failed_and_healthy_polls_follow_at_once(hostile, engine, tmp_path, name):
    status, headers, body = HOSTILE_ERRORS[name]
    clock = MinuteClock()
    recorder = make_recorder(hostile.base_url, engine, tmp_path, clock)
    hostile.script.append((status, headers, json.dumps(body).encode()))
    with pytest.raises(ExchangeError):
        recorder.poll_once()
    for _ in range(2):
        clock.next_minute()
        recorder.poll_once()
        assert recorder.spool.pending() == []  # stored at once, nothing queued behind the bad poll
    failed, *healthy = polls(engine)
    assert [p.outcome for p in healthy] == ["ok", "ok"]
    assert all(p.recorded_at is None for p in healthy)
    assert failed.outcome == "failed"
    assert failed.error_message.isprintable()  # no NUL, line break or escape sequence survives
    assert len(failed.error_message) <= TEXT_LIMIT
    if name == "nul in msg":
        assert "Illegal characters\\x00 found\\x00" in failed.error_message
        assert failed.error_code == -1100
    if name in ("huge code", "code beyond int32"):
        # Binance's codes are small negatives: the client reads a code past 32 bits as no code
        # at all (an unexpected answer, retried on the next tick), and says so in the message.
        assert failed.error_class == "ExchangeUnavailable"
        assert failed.error_code is None
        assert f"error code {body['code']} out of range" in failed.error_message
    else:
        assert failed.error_class == "ExchangeError"
    if name == "huge weight":
        assert failed.used_weight is None
        assert failed.error_message.endswith(f"[used weight {HUGE} out of range, stored as NULL]")
    if name == "control characters, long":
        assert "\\x1b[31m" in failed.error_message
    recorder.client.close()


def test_healthy_answer_with_a_huge_weight_header_stays_ok_with_the_reason(hostile, engine, tmp_path):
    recorder = make_recorder(hostile.base_url, engine, tmp_path)
    hostile.script.append((200, {"X-MBX-USED-WEIGHT-1M": str(HUGE)}, healthy_body()))
    outcome = recorder.poll_once()
    assert outcome.outcome == "ok"
    (stored,) = polls(engine)
    assert (stored.outcome, stored.used_weight, stored.asset_count) == ("ok", None, 1)
    # An ok poll keeps the note in error_message: the one place the poll log has for it.
    assert stored.error_message == f"[used weight {HUGE} out of range, stored as NULL]"
    recorder.client.close()


def test_alias_with_control_characters_is_stored_cleaned_and_still_matches(engine, tmp_path):
    # The exchange client refuses such an alias (BadPayload); this is storage's own line of
    # defence, for a value that reaches it another way (a spool file written by hand).
    recorder = make_recorder("http://127.0.0.1:9", engine, tmp_path)
    alias = "Sg\u0000s\nR"
    recorder.client = FakeExchange(FetchedBalances(alias, (usdt(Decimal("100.00000000")),), "/fapi/v2/balance", 10))
    recorder.poll_once()
    recorder.client = FakeExchange(FetchedBalances(alias, (usdt(Decimal("101.00000000")),), "/fapi/v2/balance", 10))
    recorder.poll_once()  # the same alias: not refused as another account
    with make_sessions(engine)() as session:
        assert session.scalars(select(Account.account_alias)).one() == "Sg\\x00s\\x0aR"
        assert [format(b, "f") for b in session.scalars(select(Balance.balance).order_by(Balance.id))] == [
            "100.00000000",
            "101.00000000",
        ]


class FakeExchange:
    """The outside world only: a client returning what the test gives it."""

    base_url = "http://127.0.0.1:9"
    balance_path = "/fapi/v2/balance"

    def __init__(self, fetched: FetchedBalances) -> None:
        self.fetched = fetched

    def fetch_balances(self) -> FetchedBalances:
        return self.fetched

    def close(self) -> None:
        pass


def usdt(balance: Decimal, name: str = "USDT") -> AssetBalance:
    return AssetBalance(
        asset=name,
        balance=balance,
        cross_wallet_balance=Decimal("1"),
        cross_un_pnl=Decimal("0"),
        available_balance=Decimal("1"),
        max_withdraw_amount=Decimal("1"),
        margin_available=True,
        update_time=datetime(2026, 1, 1, tzinfo=timezone.utc),
    )


@pytest.mark.parametrize(
    "assets, reason",
    [
        ((usdt(Decimal("NaN")),), "balance of USDT is NaN"),
        ((usdt(Decimal("1E+999999")),), "more than 1000 digits"),
        ((usdt(Decimal("1"), "A\u0000"), usdt(Decimal("1"), "A\\x00")), "two assets have the same name"),
    ],
)
def test_unstorable_answer_is_recorded_as_a_failed_poll_with_the_reason(engine, tmp_path, assets, reason):
    good = FetchedBalances(ALIAS, (usdt(Decimal("1")),), "/fapi/v2/balance", 10)
    exchange = FakeExchange(replace(good, assets=assets))
    recorder = make_recorder("http://127.0.0.1:9", engine, tmp_path)
    recorder.client = exchange
    with pytest.raises(RejectedPoll, match=reason):
        recorder.poll_once()
    exchange.fetched = good
    recorder.poll_once()
    assert recorder.spool.pending() == []
    rejected, healthy = polls(engine)
    assert (rejected.outcome, rejected.error_class) == ("failed", "RejectedPoll")
    assert reason in rejected.error_message
    assert healthy.outcome == "ok"


def test_spooled_entries_refused_for_content_are_set_aside_and_the_queue_goes_on(engine, tmp_path, caplog):
    recorder = make_recorder("http://127.0.0.1:9", engine, tmp_path)
    recorder.client = FakeExchange(FetchedBalances(ALIAS, (usdt(Decimal("1")),), "/fapi/v2/balance", 10))
    start = utcnow() - timedelta(minutes=10)

    def entry(uid: str, minute: int, **changes) -> SpooledPoll:
        at = start + timedelta(minutes=minute)
        fetched = FetchedBalances(ALIAS, (usdt(Decimal(minute)),), "/fapi/v2/balance", 10)
        return replace(SpooledPoll(uid, "default", "http://127.0.0.1:9", "/fapi/v2/balance", at, at, fetched), **changes)

    recorder.spool.put(entry("good-1", 1))
    recorder.spool.put(
        entry("unknown-endpoint", 2, endpoint="/fapi/v9/balance", fetched=None, failure=PollFailure("X", "y"))
    )
    recorder.spool.put(entry("ends-before-start", 3, started_at=start + timedelta(minutes=4)))
    recorder.spool.put(entry("live-data-in-a-local-account", 4, base_url="https://fapi.binance.com"))
    recorder.spool.put(entry("good-2", 5))
    with caplog.at_level(logging.ERROR, logger="recorder"):
        recorder.poll_once()
    assert recorder.spool.pending() == []
    rejected = sorted(p.name.split("-", 1)[1] for p in (recorder.spool.directory / "rejected").iterdir())
    assert rejected == ["ends-before-start.json", "live-data-in-a-local-account.json", "unknown-endpoint.json"]
    assert len([r for r in caplog.records if "is refused" in r.getMessage()]) == 3  # one line each
    assert [p.outcome for p in polls(engine)] == ["ok", "ok", "ok"]


def test_unstorable_answer_during_an_outage_is_spooled_as_its_refusal(db_url, tmp_path):
    """Spooled as it is, a NaN would be set aside at replay and leave no row at all."""
    from recorder.db import make_engine
    from recorder.schema import upgrade_to_head
    from tests.integration.test_outages import database_down

    engine = make_engine(db_url, sqlite_busy_timeout_ms=100)
    upgrade_to_head(engine)
    recorder = make_recorder("http://127.0.0.1:9", engine, tmp_path)
    bad = FetchedBalances(ALIAS, (usdt(Decimal("NaN")),), "/fapi/v2/balance", 10)
    recorder.client = FakeExchange(bad)
    with database_down(db_url):
        with pytest.raises(StorageError, match="will be stored when the database is back"):
            recorder.poll_once()
    recorder.client.fetched = replace(bad, assets=(usdt(Decimal("1")),))
    recorder.poll_once()
    rejected, healthy = polls(engine)
    assert (rejected.outcome, rejected.error_class, healthy.outcome) == ("failed", "RejectedPoll", "ok")
    assert "balance of USDT is NaN" in rejected.error_message
    assert not (recorder.spool.directory / "corrupt").exists()
    engine.dispose()
