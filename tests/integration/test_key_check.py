"""BinanceFuturesClient.fetch_api_restrictions: Binance's answer through the client's transport, and the
same contract as every other call: only ExchangeError subclasses, one clean line, no query in any log."""

from __future__ import annotations

import logging

import pytest

from recorder.errors import AuthError, ExchangeError, RateLimited
from recorder.exchange import API_RESTRICTIONS_PATH
from recorder.simulator.market import READ_ONLY_RESTRICTIONS
from tests.conftest import SIM_KEY
from tests.integration.test_hostile_exchange import (  # noqa: F401 - `hostile` is a fixture
    UPSTREAM_FAILURES,
    assert_clean_message,
    hostile,
    make_client,
    raw,
)


def test_restrictions_come_back_with_binances_names(simulator):
    simulator.set_api_restrictions(SIM_KEY, enableWithdrawals=True)
    client = make_client(simulator.base_url)
    try:
        found = client.fetch_api_restrictions(simulator.base_url)
    finally:
        client.close()
    # Only the booleans: createTime is a number and not a permission.
    assert found == {k: v for k, v in {**READ_ONLY_RESTRICTIONS, "enableWithdrawals": True}.items() if isinstance(v, bool)}
    assert [r.path for r in simulator.requests_log] == ["/fapi/v1/time", API_RESTRICTIONS_PATH]
    assert simulator.requests_log[-1].status == 200


def test_unsigned_or_wrongly_signed_check_is_refused_like_any_signed_call(simulator):
    client = make_client(simulator.base_url, api_secret="not-the-secret")
    try:
        with pytest.raises(AuthError, match=r"^/sapi/v1/account/apiRestrictions: HTTP 400 code -1022"):
            client.fetch_api_restrictions(simulator.base_url)
    finally:
        client.close()


def test_a_failed_check_leaves_the_futures_budget_and_backoff_untouched(simulator, hostile):
    """A 429 from the spot API is the spot API's limit: the next balance poll still goes out at once."""
    spot = hostile(raw('HTTP/1.1 429 Too Many\nRetry-After: 600\nContent-Length: {length}\n\n', b'{"code":-1003,"msg":"too many"}'))
    client = make_client(simulator.base_url, retry_attempts=1)
    try:
        with pytest.raises(RateLimited):
            client.fetch_api_restrictions(spot.origin)
        assert client.fetch_balances().account_alias == "SgsR"
    finally:
        client.close()


@pytest.mark.parametrize("case", sorted(UPSTREAM_FAILURES))
def test_every_upstream_failure_of_the_check_is_an_exchange_error(case, simulator, hostile, caplog):
    answer, _, _ = UPSTREAM_FAILURES[case]
    spot = hostile(answer)
    client = make_client(simulator.base_url, retry_attempts=1)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ExchangeError) as caught:
            client.fetch_api_restrictions(spot.origin)
    client.close()
    assert assert_clean_message(caught.value).startswith(API_RESTRICTIONS_PATH + ": ")
    for record in caplog.records:
        assert "signature=" not in record.getMessage() and "timestamp=" not in record.getMessage()
