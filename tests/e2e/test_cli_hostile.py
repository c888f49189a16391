"""`recorder poll` against a hostile exchange: a deadline that holds, and a redirect that is not followed."""

from __future__ import annotations

import re
import time

from tests.e2e.test_cli_recording import recorder, stored
from tests.integration.test_hostile_exchange import counter  # noqa: F401 - a fixture used below

# Each attempt is cut at 2 s; a generous bound covers CLI start-up on a busy machine and proves "no hang".
DID_NOT_HANG_SECONDS = 60.0


def test_poll_timeout_is_a_deadline_against_a_trickling_exchange(simulator, cli_env, db_url):
    """The issue's case: a body trickling a byte every 0.5 s held a `--timeout 2` poll for 31 s."""
    simulator.inject("trickle", times=5, seconds=0.5)  # more than the poll's attempts: every one trickles
    began = time.monotonic()
    result = recorder("poll", "--timeout", "2", env=cli_env, timeout=120)
    elapsed = time.monotonic() - began
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: ExchangeUnavailable: /fapi/v2/balance: no complete answer within [0-9.]+s \(timeout\)"
                        r"( \(after \d attempts\))?", last), last
    assert "Traceback" not in result.stderr and "signature" not in result.stderr
    assert elapsed < DID_NOT_HANG_SECONDS
    balances, polls = stored(db_url)
    assert balances == [] and [(p.outcome, p.error_class) for p in polls] == [("failed", "ExchangeUnavailable")]


def test_poll_against_a_redirect_sends_nothing_elsewhere(simulator, cli_env, db_url, counter):  # noqa: F811
    simulator.inject("redirect-302", times=5, location=counter.origin)
    result = recorder("poll", env=cli_env)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: ExchangeUnavailable: /fapi/v2/balance: HTTP 302 redirect to {counter.origin}, "
                           "not followed"), last
    assert "signature" not in result.stderr
    assert counter.connections == 0
    _, polls = stored(db_url)
    assert [(p.outcome, p.http_status) for p in polls] == [("failed", 302)]
