"""Every exchange fault: the poll is logged as failed, nothing partial is stored, the next poll works."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from recorder.errors import AuthError, BadPayload, ClockSkew, ExchangeError, ExchangeUnavailable, RateLimited
from recorder.exchange import RETRY_ATTEMPTS, BinanceFuturesClient
from recorder.models import Balance, Poll
from recorder.service import Recorder
from tests.conftest import SIM_KEY, SIM_SECRET

FAULTS = {
    "http-500": (ExchangeUnavailable, 500, -1000),
    "http-502": (ExchangeUnavailable, 502, None),
    "http-503": (ExchangeUnavailable, 503, -1001),
    "http-503-html": (ExchangeUnavailable, 503, None),
    "html-200": (ExchangeUnavailable, 200, None),
    "reset": (ExchangeUnavailable, None, None),
    "stall": (ExchangeUnavailable, None, None),
    "malformed-json": (BadPayload, None, None),
    "truncated-json": (BadPayload, None, None),
    "not-a-list": (BadPayload, None, None),
    "empty-list": (BadPayload, None, None),
    "bad-decimal": (BadPayload, None, None),
    "wrong-type": (BadPayload, None, None),
    "missing-field": (BadPayload, None, None),
    "auth-2015": (AuthError, 401, -2015),
    "auth-1022": (AuthError, 400, -1022),
    "waf-403": (RateLimited, 403, None),
    "rate-429": (RateLimited, 429, -1003),
    "rate-1003": (RateLimited, 429, -1003),
    "ban-418": (RateLimited, 418, -1003),
}


class FakeMonotonic:
    """Monotonic time the test advances, to step past Retry-After without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def monotonic() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def recorder(simulator, sessions, monotonic):
    client = BinanceFuturesClient(
        base_url=simulator.base_url,
        api_key=SIM_KEY,
        api_secret=SIM_SECRET,
        timeout=0.5,
        monotonic=monotonic,
        sleep=lambda seconds: None,
    )
    yield Recorder(client=client, sessions=sessions, account="default")
    client.close()


def counts(sessions) -> tuple[int, int, int]:
    with sessions() as session:
        polls = session.scalar(select(func.count()).select_from(Poll))
        failed = session.scalar(select(func.count()).select_from(Poll).where(Poll.outcome == "failed"))
        balances = session.scalar(select(func.count()).select_from(Balance))
    return polls, failed, balances


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_is_recorded_and_the_next_poll_stores(fault, simulator, recorder, sessions, monotonic):
    error_class, http_status, code = FAULTS[fault]
    recorder.poll_once()
    assert counts(sessions) == (1, 0, 8)
    simulator.step(SIM_KEY)
    # Transient failures are retried inside the poll: inject enough to exhaust the retries.
    retried = error_class in (ExchangeUnavailable, BadPayload)
    simulator.inject(fault, times=RETRY_ATTEMPTS if retried else 1, seconds=1.5, retry_after=30)
    with pytest.raises(ExchangeError) as caught:
        recorder.poll_once()
    assert type(caught.value) is error_class
    assert "signature=" not in str(caught.value) and SIM_SECRET not in str(caught.value)
    with sessions() as session:
        failed = session.scalars(select(Poll).where(Poll.outcome == "failed")).one()
        assert (failed.error_class, failed.http_status, failed.error_code) == (error_class.__name__, http_status, code)
        assert failed.error_message == str(caught.value)
        assert failed.error_message.endswith(f"(after {RETRY_ATTEMPTS} attempts)") == retried
    assert counts(sessions) == (2, 1, 8)
    if error_class is RateLimited:
        # Retry-After holds across ticks: the next tick sends nothing until it passes.
        sent = len(simulator.requests_log)
        with pytest.raises(RateLimited, match="not sent"):
            recorder.poll_once()
        assert len(simulator.requests_log) == sent
        monotonic.now += 300
    if fault == "ban-418":
        simulator.clear_faults()
    outcome = recorder.poll_once()
    assert outcome.outcome == "ok" and outcome.changed_count >= 1
    served = {row["asset"]: row for row in simulator.served[-1].rows}
    with sessions() as session:
        usdt = session.scalars(select(Balance).where(Balance.asset == "USDT").order_by(Balance.id.desc())).first()
    assert format(usdt.balance, "f") == served["USDT"]["balance"]
    assert format(usdt.cross_un_pnl, "f") == served["USDT"]["crossUnPnl"]


def test_clock_rejection_resyncs_and_retries_once(simulator, recorder, sessions):
    simulator.inject("clock-1021", times=1)
    assert recorder.poll_once().outcome == "ok"
    time_requests = [r for r in simulator.requests_log if r.path == "/fapi/v1/time"]
    assert len(time_requests) == 2  # the first sync, then the resync after -1021
    simulator.inject("clock-1021", times=2)
    with pytest.raises(ClockSkew):
        recorder.poll_once()
    assert counts(sessions) == (2, 1, 8)


def test_used_weight_is_kept_in_the_poll_log(simulator, recorder, sessions):
    recorder.poll_once()
    recorder.poll_once()
    with sessions() as session:
        weights = session.scalars(select(Poll.used_weight).order_by(Poll.finished_at)).all()
    assert weights == [11, 21]


@pytest.mark.parametrize("fault", ["http-503", "malformed-json", "reset"])
def test_one_transient_failure_is_retried_inside_the_poll(fault, simulator, recorder, sessions):
    simulator.inject(fault, times=1)
    outcome = recorder.poll_once()
    assert outcome.outcome == "ok"
    balance_requests = [r for r in simulator.requests_log if r.path == "/fapi/v2/balance"]
    assert len(balance_requests) == 2
    assert counts(sessions) == (1, 0, 8)


def test_repeated_auth_failures_back_off_hard(simulator, recorder, sessions, monotonic):
    simulator.inject("auth-2015", times=5)
    with pytest.raises(AuthError, match="HTTP 401 code -2015"):
        recorder.poll_once()
    with pytest.raises(AuthError, match="next attempt in 120s"):
        recorder.poll_once()  # the first failure does not block the next tick; the second does
    sent = len(simulator.requests_log)
    for _ in range(3):
        with pytest.raises(AuthError, match="not sent"):
            recorder.poll_once()
    assert len(simulator.requests_log) == sent
    monotonic.now += 121
    with pytest.raises(AuthError, match="next attempt in 240s"):
        recorder.poll_once()
    assert counts(sessions) == (6, 6, 0)


def test_recorder_slows_down_before_the_weight_limit(simulator, sessions, monotonic):
    # Start the exchange clock 1 s into a minute so the weight window cannot roll over mid-test.
    simulator.clock_offset_ms = 61_000 - time.time_ns() // 1_000_000 % 60_000
    client = BinanceFuturesClient(
        base_url=simulator.base_url, api_key=SIM_KEY, api_secret=SIM_SECRET, weight_limit=60, monotonic=monotonic
    )
    recorder = Recorder(client=client, sessions=sessions, account="default")
    outcomes = []
    for _ in range(8):
        try:
            outcomes.append(recorder.poll_once().outcome)
        except RateLimited as error:
            outcomes.append("throttled" if "not sent" in str(error) else "429")
    client.close()
    # 1 (time) + 10 per poll: 5 polls reach 51 of 60; the 6th would pass 90% of the limit.
    assert "429" not in outcomes and simulator.bans_issued == 0
    assert outcomes[:5] == ["ok"] * 5 and set(outcomes[5:]) == {"throttled"}


def test_connection_refused_is_recorded_and_the_service_goes_on(sessions):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = BinanceFuturesClient(
        base_url=f"http://127.0.0.1:{port}", api_key=SIM_KEY, api_secret=SIM_SECRET, sleep=lambda seconds: None
    )
    recorder = Recorder(client=client, sessions=sessions, account="default")
    with pytest.raises(ExchangeUnavailable, match="/fapi/v1/time: connection refused"):
        recorder.poll_once()
    client.close()
    with sessions() as session:
        failed = session.scalars(select(Poll)).one()
    assert (failed.outcome, failed.error_class) == ("failed", "ExchangeUnavailable")
    assert counts(sessions) == (1, 1, 0)
