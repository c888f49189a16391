"""The built-in exchange speaks Binance's wire format and rules, checked over real HTTP with our own signer."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from recorder.simulator import FAULTS, ExchangeSimulator, RequestRecord

KEY = "sim-key-0123456789"
SECRET = "sim-secret-abcdef"
FIELDS = ["accountAlias", "asset", "balance", "crossWalletBalance", "crossUnPnl", "availableBalance",
          "maxWithdrawAmount", "marginAvailable", "updateTime"]
DECIMAL_FIELDS = ["balance", "crossWalletBalance", "crossUnPnl", "availableBalance", "maxWithdrawAmount"]
PLAIN_DECIMAL = re.compile(r"-?[0-9]+\.[0-9]{8}")


def row(asset: str, amount: str, *, unpnl: str = "0.00000000", update_time: int = 1700000000000) -> dict:
    return {"asset": asset, "balance": amount, "crossWalletBalance": amount, "crossUnPnl": unpnl,
            "availableBalance": amount, "maxWithdrawAmount": amount, "marginAvailable": True,
            "updateTime": update_time}


ROWS = [
    row("USDT", "98765432109.12345678", unpnl="-12.50000000"),
    row("BNB", "0.00000001"),
    row("BTC", "0.00000000", update_time=0),
]


def sign(secret: str, query: str) -> str:
    return hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()


def server_now(sim: ExchangeSimulator) -> int:
    return time.time_ns() // 1_000_000 + sim.clock_offset_ms


def signed_get(http: requests.Session, sim: ExchangeSimulator, path: str = "/fapi/v3/balance", *,
               query: str | None = None, key: str | None = KEY, secret: str = SECRET,
               timeout: float = 5.0) -> requests.Response:
    query = f"timestamp={server_now(sim)}" if query is None else query
    headers = {} if key is None else {"X-MBX-APIKEY": key}
    url = f"{sim.base_url}{path}?{query}&signature={sign(secret, query)}"
    return http.get(url, headers=headers, timeout=timeout)


@pytest.fixture
def sim() -> Iterator[ExchangeSimulator]:
    # Start the server clock 1 s into a fresh minute so no test straddles a weight-window reset.
    offset = (-(time.time_ns() // 1_000_000)) % 60_000 + 1_000
    with ExchangeSimulator(clock_offset_ms=offset, seed=7) as simulator:
        simulator.add_account(api_key=KEY, api_secret=SECRET, account_alias="SimA", balances=ROWS)
        yield simulator


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def test_ping_and_time(sim: ExchangeSimulator, http: requests.Session) -> None:
    ping = http.get(f"{sim.base_url}/fapi/v1/ping", timeout=5)
    assert (ping.status_code, ping.json(), ping.headers["Content-Type"]) == (200, {}, "application/json")
    assert ping.headers["X-MBX-USED-WEIGHT-1M"] == "1"
    before = server_now(sim)
    server_time = http.get(f"{sim.base_url}/fapi/v1/time", timeout=5).json()["serverTime"]
    assert isinstance(server_time, int) and before <= server_time <= server_now(sim)


def test_clock_offset_shifts_server_time(sim: ExchangeSimulator, http: requests.Session) -> None:
    sim.clock_offset_ms = 0
    unshifted = http.get(f"{sim.base_url}/fapi/v1/time", timeout=5).json()["serverTime"]
    sim.clock_offset_ms = 3_600_000
    shifted = http.get(f"{sim.base_url}/fapi/v1/time", timeout=5).json()["serverTime"]
    assert 3_600_000 <= shifted - unshifted < 3_605_000


@pytest.mark.parametrize("path", ["/fapi/v2/balance", "/fapi/v3/balance"])
def test_balance_serves_rows_verbatim(sim: ExchangeSimulator, http: requests.Session, path: str) -> None:
    response = signed_get(http, sim, path)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body == [{"accountAlias": "SimA", **r} for r in ROWS]
    assert [list(r) for r in body] == [FIELDS] * len(ROWS)
    assert body[0]["balance"] == "98765432109.12345678"
    assert body[0]["crossUnPnl"] == "-12.50000000"
    assert body[1]["balance"] == "0.00000001"
    assert body[0]["marginAvailable"] is True and body[0]["updateTime"] == 1700000000000


def test_set_balances_replaces_rows(sim: ExchangeSimulator, http: requests.Session) -> None:
    new = [row("USDC", "1.10000000")]
    sim.set_balances(KEY, new)
    assert sim.get_balances(KEY) == new
    assert signed_get(http, sim).json() == [{"accountAlias": "SimA", **new[0]}]


def test_weight_header_counts_per_endpoint(sim: ExchangeSimulator, http: requests.Session) -> None:
    weights = [int(signed_get(http, sim, path).headers["X-MBX-USED-WEIGHT-1M"])
               for path in ("/fapi/v2/balance", "/fapi/v3/balance", "/fapi/v2/balance")]
    assert weights == [10, 15, 25]
    assert http.get(f"{sim.base_url}/fapi/v1/time", timeout=5).headers["X-MBX-USED-WEIGHT-1M"] == "26"
    bad = signed_get(http, sim, secret="wrong")
    assert (bad.status_code, bad.headers["X-MBX-USED-WEIGHT-1M"]) == (400, "31")


def test_default_account_has_eight_plain_decimal_assets(sim: ExchangeSimulator, http: requests.Session) -> None:
    sim.add_account(api_key="default-key", api_secret="default-secret", account_alias="SimB")
    body = signed_get(http, sim, key="default-key", secret="default-secret").json()
    assert [r["asset"] for r in body] == ["USDT", "BNB", "BTC", "ETH", "USDC", "FDUSD", "BFUSD", "TUSD"]
    assert all(list(r) == FIELDS and r["accountAlias"] == "SimB" for r in body)
    assert all(PLAIN_DECIMAL.fullmatch(r[f]) for r in body for f in DECIMAL_FIELDS)
    assert body[0]["updateTime"] > 0 and body[2]["updateTime"] == 0


@pytest.mark.parametrize(("key", "secret", "status", "code", "msg"), [
    (None, SECRET, 401, -2014, "API-key format invalid."),
    ("", SECRET, 401, -2014, "API-key format invalid."),
    ("unknown-key", SECRET, 401, -2015, "Invalid API-key, IP, or permissions for action."),
    (KEY, "wrong-secret", 400, -1022, "Signature for this request is not valid."),
])
def test_auth_errors(sim: ExchangeSimulator, http: requests.Session, key: str | None, secret: str,
                     status: int, code: int, msg: str) -> None:
    response = signed_get(http, sim, key=key, secret=secret)
    assert (response.status_code, response.json()) == (status, {"code": code, "msg": msg})
    assert response.headers["Content-Type"] == "application/json"


def raw_get(http: requests.Session, sim: ExchangeSimulator, query: str) -> requests.Response:
    return http.get(f"{sim.base_url}/fapi/v3/balance?{query}", headers={"X-MBX-APIKEY": KEY}, timeout=5)


def test_signature_must_be_last_and_present(sim: ExchangeSimulator, http: requests.Session) -> None:
    query = f"timestamp={server_now(sim)}"
    not_last = raw_get(http, sim, f"signature={sign(SECRET, query)}&{query}")
    missing = raw_get(http, sim, query)
    for response in (not_last, missing):
        assert (response.status_code, response.json()["code"]) == (400, -1022)


def test_signature_is_case_insensitive_hex(sim: ExchangeSimulator, http: requests.Session) -> None:
    query = f"timestamp={server_now(sim)}"
    assert raw_get(http, sim, f"{query}&signature={sign(SECRET, query).upper()}").status_code == 200


@pytest.mark.parametrize(("query", "code", "msg"), [
    ("recvWindow=5000", -1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed."),
    ("timestamp=", -1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed."),
    ("timestamp=12ab", -1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed."),
    ("timestamp={now}&recvWindow=60001", -1131, "recvWindow must be less than 60000"),
    ("timestamp={now}&recvWindow=0", -1131, "recvWindow must be less than 60000"),
    ("timestamp={now}&timestamp={now}", -1101, "Duplicate values for a parameter detected."),
    ("timestamp={now}&asset=USDT",
     -1104, "Not all sent parameters were read; read '2' parameter(s) but was sent '3'."),
    ("timestamp={now}&recvWindow=5000&asset=USDT&symbol=BTCUSDT",
     -1104, "Not all sent parameters were read; read '3' parameter(s) but was sent '5'."),
])
def test_parameter_errors(sim: ExchangeSimulator, http: requests.Session, query: str, code: int, msg: str) -> None:
    response = signed_get(http, sim, query=query.format(now=server_now(sim)))
    assert (response.status_code, response.json()) == (400, {"code": code, "msg": msg})


@pytest.mark.parametrize(("shift_ms", "recv_window", "status", "msg"), [
    (1500, None, 400, "Timestamp for this request was 1000ms ahead of the server's time."),
    (-6000, None, 400, "Timestamp for this request is outside of the recvWindow."),
    (-6000, 10_000, 200, None),
    (-3000, None, 200, None),
    (500, None, 200, None),
])
def test_timestamp_window(sim: ExchangeSimulator, http: requests.Session, shift_ms: int,
                          recv_window: int | None, status: int, msg: str | None) -> None:
    query = f"timestamp={server_now(sim) + shift_ms}"
    if recv_window is not None:
        query += f"&recvWindow={recv_window}"
    response = signed_get(http, sim, query=query)
    assert response.status_code == status
    if msg is not None:
        assert response.json() == {"code": -1021, "msg": msg}


def test_client_signing_with_local_clock_fails_when_server_clock_is_ahead(
        sim: ExchangeSimulator, http: requests.Session) -> None:
    """A client that ignores /fapi/v1/time is rejected once the clocks drift apart."""
    local = time.time_ns() // 1_000_000
    sim.clock_offset_ms = 10_000
    response = signed_get(http, sim, query=f"timestamp={local}")
    assert (response.status_code, response.json()["code"]) == (400, -1021)
    server_time = http.get(f"{sim.base_url}/fapi/v1/time", timeout=5).json()["serverTime"]
    assert signed_get(http, sim, query=f"timestamp={server_time}").status_code == 200


def test_unknown_path_and_method(sim: ExchangeSimulator, http: requests.Session) -> None:
    missing = http.get(f"{sim.base_url}/fapi/v9/nothing?x=1", timeout=5)
    assert (missing.status_code, missing.json()) == (404, {"code": -5000, "msg": "Path /fapi/v9/nothing not found"})
    post = http.post(f"{sim.base_url}/fapi/v3/balance", data="timestamp=1", timeout=5)
    assert post.status_code == 405 and post.json()["code"] == -5000
    assert post.headers["Content-Type"] == "application/json"


JSON_FAULTS = {
    "http-500": (500, {"code": -1000, "msg": "An unknown error occured while processing the request."}),
    "http-503": (503, {"code": -1001, "msg": "Service Unavailable."}),
    "clock-1021": (400, {"code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."}),
    "auth-2015": (401, {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."}),
    "auth-1022": (400, {"code": -1022, "msg": "Signature for this request is not valid."}),
    "not-a-list": (200, {"code": 0, "msg": "ok"}),
    "empty-list": (200, []),
}


@pytest.mark.parametrize("fault", sorted(JSON_FAULTS))
def test_json_faults(sim: ExchangeSimulator, http: requests.Session, fault: str) -> None:
    sim.inject(fault)
    response = signed_get(http, sim)
    assert (response.status_code, response.json()) == JSON_FAULTS[fault]
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["X-MBX-USED-WEIGHT-1M"] == "5"
    assert signed_get(http, sim).status_code == 200  # one shot only
    assert len(sim.served) == 1


@pytest.mark.parametrize(("fault", "status", "marker"), [
    ("http-502", 502, "502 Bad Gateway"),
    ("http-503-html", 503, "503 Service Temporarily Unavailable"),
    ("waf-403", 403, "The request could not be satisfied"),
    ("html-200", 200, "<html>"),
])
def test_html_faults(sim: ExchangeSimulator, http: requests.Session, fault: str, status: int, marker: str) -> None:
    sim.inject(fault)
    response = signed_get(http, sim)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "text/html"
    assert marker in response.text
    with pytest.raises(requests.JSONDecodeError):
        response.json()
    assert sim.served == []


@pytest.mark.parametrize(("fault", "status", "msg"), [
    ("rate-429", 429, "Too many requests; current limit is 2400 requests per minute. "
                      "Please use the websocket for live updates to avoid polling the API."),
    ("rate-1003", 429, "Too many requests; current limit is 2400 requests per minute. "
                       "Please use the websocket for live updates to avoid polling the API."),
    ("ban-418", 418, None),
])
def test_rate_faults_carry_retry_after(sim: ExchangeSimulator, http: requests.Session, fault: str,
                                       status: int, msg: str | None) -> None:
    sim.inject(fault, retry_after=42)
    response = signed_get(http, sim)
    assert (response.status_code, response.headers["Retry-After"]) == (status, "42")
    body = response.json()
    assert body["code"] == -1003
    if msg is None:
        assert re.fullmatch(r"Way too many requests; IP banned until \d{13}\. Please use the websocket "
                            r"for live updates to avoid bans\.", body["msg"])
    else:
        assert body["msg"] == msg
    # An injected limit is not the real limiter: the next request is neither limited nor a ban.
    assert signed_get(http, sim).status_code == 200
    assert sim.bans_issued == 0


def test_malformed_json_fault(sim: ExchangeSimulator, http: requests.Session) -> None:
    sim.inject("malformed-json")
    response = signed_get(http, sim)
    assert (response.status_code, response.text) == (200, '[{"asset": "USDT", "balance": }')
    with pytest.raises(requests.JSONDecodeError):
        response.json()


def test_truncated_json_fault(sim: ExchangeSimulator, http: requests.Session) -> None:
    full = signed_get(http, sim).text
    sim.inject("truncated-json")
    response = signed_get(http, sim)
    assert response.status_code == 200
    assert response.text == full[: len(full.encode()) // 2]
    assert response.headers["Content-Length"] == str(len(response.content))
    with pytest.raises(requests.JSONDecodeError):
        response.json()


@pytest.mark.parametrize(("fault", "check"), [
    ("bad-decimal", lambda r: r["balance"] == "12.3.4"),
    ("wrong-type", lambda r: r["balance"] == 1.5 and isinstance(r["balance"], float)),
    ("missing-field", lambda r: "crossUnPnl" not in r and len(r) == len(FIELDS) - 1),
])
def test_row_shape_faults(sim: ExchangeSimulator, http: requests.Session, fault: str, check) -> None:
    sim.inject(fault)
    response = signed_get(http, sim)
    assert response.status_code == 200
    body = response.json()
    assert len(body) == len(ROWS) and check(body[0])
    assert body[1:] == [{"accountAlias": "SimA", **r} for r in ROWS[1:]]
    assert sim.served == []


def test_reset_fault_drops_connection(sim: ExchangeSimulator, http: requests.Session) -> None:
    sim.inject("reset")
    with pytest.raises(requests.ConnectionError):
        signed_get(http, sim)
    assert sim.requests_log[-1] == RequestRecord("GET", "/fapi/v3/balance", 0, None, 0)
    assert signed_get(http, sim).status_code == 200  # the session recovers on a new connection


def test_stall_fault_times_out_without_blocking_others(sim: ExchangeSimulator) -> None:
    # The stall outlasts the test (stopping the exchange ends it), so "the others were served
    # meanwhile" holds however slow a loaded machine is: no timing slack is involved.
    sim.inject("stall", seconds=600)
    errors: list[BaseException] = []

    def stalled() -> None:
        with requests.Session() as session:
            try:
                signed_get(session, sim, timeout=2)
            except requests.Timeout as exc:
                errors.append(exc)

    thread = threading.Thread(target=stalled)
    thread.start()
    deadline = time.monotonic() + 30
    while sim._faults:  # the stalled request has taken the fault and is being held
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with requests.Session() as session:
        assert session.get(f"{sim.base_url}/fapi/v1/ping", timeout=5).status_code == 200
        assert signed_get(session, sim).status_code == 200
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], requests.Timeout)


def test_faults_apply_before_auth_and_in_order(sim: ExchangeSimulator, http: requests.Session) -> None:
    sim.inject("http-503", times=2)
    sim.inject("empty-list")
    statuses = [(r.status_code, r.text) for r in (signed_get(http, sim, key="nobody") for _ in range(3))]
    assert statuses == [(503, '{"code":-1001,"msg":"Service Unavailable."}')] * 2 + [(200, "[]")]
    sim.inject("http-500", times=5)
    sim.clear_faults()
    assert signed_get(http, sim).status_code == 200


def test_inject_rejects_unknown_fault(sim: ExchangeSimulator) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        sim.inject("http-504")
    assert len(FAULTS) == 37


def test_rate_limiter_429_then_ban() -> None:
    offset = (-(time.time_ns() // 1_000_000)) % 60_000 + 1_000
    with ExchangeSimulator(clock_offset_ms=offset, weight_limit=30) as sim, requests.Session() as http:
        sim.add_account(api_key=KEY, api_secret=SECRET, balances=ROWS)
        assert [signed_get(http, sim, "/fapi/v2/balance").status_code for _ in range(3)] == [200] * 3
        limited = signed_get(http, sim, "/fapi/v2/balance")
        assert limited.status_code == 429
        assert limited.json() == {"code": -1003, "msg": "Too many requests; current limit is 30 requests per "
                                  "minute. Please use the websocket for live updates to avoid polling the API."}
        assert 50 <= int(limited.headers["Retry-After"]) <= 59
        assert sim.bans_issued == 0
        banned = http.get(f"{sim.base_url}/fapi/v1/ping", timeout=5)
        assert (banned.status_code, banned.headers["Retry-After"]) == (418, "120")
        until = int(re.fullmatch(r"Way too many requests; IP banned until (\d+)\. Please use the websocket "
                                 r"for live updates to avoid bans\.", banned.json()["msg"]).group(1))
        assert 0 < until - server_now(sim) <= 120_000
        assert signed_get(http, sim).status_code == 418
        assert sim.bans_issued == 1
        assert [r.status for r in sim.requests_log] == [200, 200, 200, 429, 418, 418]
        assert [r.used_weight for r in sim.requests_log] == [10, 20, 30, 40, 40, 40]
        sim.clock_offset_ms += 121_000  # the ban expires
        assert http.get(f"{sim.base_url}/fapi/v1/ping", timeout=5).status_code == 200


def test_auto_move_changes_balances_with_plain_decimals() -> None:
    with ExchangeSimulator(seed=3, auto_move=True) as sim, requests.Session() as http:
        sim.add_account(api_key=KEY, api_secret=SECRET)
        bodies = [signed_get(http, sim).json() for _ in range(12)]
    usdt = [next(r for r in body if r["asset"] == "USDT") for body in bodies]
    assert len({(r["crossUnPnl"], r["availableBalance"]) for r in usdt}) == 12
    assert len({r["balance"] for r in usdt}) > 1  # fees or funding were booked
    for body in bodies:
        assert all(PLAIN_DECIMAL.fullmatch(r[f]) for r in body for f in DECIMAL_FIELDS)
        assert [r for r in body if r["asset"] in ("BTC", "ETH")] == \
               [r for r in bodies[0] if r["asset"] in ("BTC", "ETH")]
    assert [list(s.rows) for s in sim.served] == bodies


def test_step_is_deterministic_per_seed_and_idle_without_auto_move() -> None:
    def run(seed: int) -> list[list[tuple]]:
        sim = ExchangeSimulator(seed=seed)
        sim.add_account(api_key=KEY, api_secret=SECRET, balances=[row("USDT", "5000.00000000")])
        history = []
        for _ in range(20):
            sim.step()
            history.append([tuple(r[f] for f in DECIMAL_FIELDS) for r in sim.get_balances(KEY)])
        return history

    assert run(1) == run(1)
    assert run(1) != run(2)
    sim = ExchangeSimulator()
    sim.add_account(api_key=KEY, api_secret=SECRET, balances=ROWS)
    assert sim.get_balances(KEY) == ROWS  # nothing moves without step()


def test_served_records_exactly_what_was_returned(sim: ExchangeSimulator, http: requests.Session) -> None:
    first = signed_get(http, sim, "/fapi/v2/balance")
    sim.inject("http-500")
    signed_get(http, sim)
    signed_get(http, sim, secret="wrong")
    sim.set_balances(KEY, [row("USDT", "1.00000000")])
    second = signed_get(http, sim)
    served = sim.served
    assert [s.api_key for s in served] == [KEY, KEY]
    assert [list(s.rows) for s in served] == [first.json(), second.json()]
    assert json.loads(second.content) == [{"accountAlias": "SimA", **row("USDT", "1.00000000")}]
    assert served[0].served_at_ms <= served[1].served_at_ms
    assert abs(served[1].served_at_ms - server_now(sim)) < 5_000


def test_requests_log_never_holds_the_query(sim: ExchangeSimulator, http: requests.Session) -> None:
    signed_get(http, sim)
    signed_get(http, sim, key="nobody")
    assert sim.requests_log == [RequestRecord("GET", "/fapi/v3/balance", 200, None, 5),
                                RequestRecord("GET", "/fapi/v3/balance", 401, -2015, 10)]


def test_lifecycle() -> None:
    sim = ExchangeSimulator()
    with pytest.raises(RuntimeError):
        sim.base_url
    sim.start()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sim.base_url)
    with requests.Session() as http:  # an idle keep-alive connection must not hang stop()
        assert http.get(f"{sim.base_url}/fapi/v1/ping", timeout=5).status_code == 200
        sim.stop()
        sim.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{sim.base_url}/fapi/v1/ping", timeout=1)


def test_serve_until_stops_on_event() -> None:
    sim = ExchangeSimulator()
    stop = threading.Event()
    thread = threading.Thread(target=sim.serve_until, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 5
    while True:
        try:
            sim.base_url
            break
        except RuntimeError:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert requests.get(f"{sim.base_url}/fapi/v1/ping", timeout=5).json() == {}
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()


# -- hostile-exchange faults ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [300, 301, 302, 303, 304, 307, 308])
def test_redirect_faults_point_elsewhere_with_the_signed_query(sim: ExchangeSimulator, http: requests.Session,
                                                              status: int) -> None:
    sim.inject(f"redirect-{status}", location="http://127.0.0.1:9/")
    query = f"timestamp={server_now(sim)}"
    response = unfollowed_get(http, sim, query)
    assert response.status_code == status and response.content == b""
    assert response.headers["Location"] == f"http://127.0.0.1:9/fapi/v3/balance?{query}&signature={sign(SECRET, query)}"
    sim.inject("redirect-302")
    location = unfollowed_get(http, sim, f"timestamp={server_now(sim)}").headers["Location"]
    assert location.startswith("http://redirect.invalid/fapi/v3/balance?timestamp=")
    assert sim.served == []


def unfollowed_get(http: requests.Session, sim: ExchangeSimulator, query: str) -> requests.Response:
    return http.get(f"{sim.base_url}/fapi/v3/balance?{query}&signature={sign(SECRET, query)}",
                    headers={"X-MBX-APIKEY": KEY}, timeout=5, allow_redirects=False)


def test_bad_location_fault_is_unparseable(sim: ExchangeSimulator) -> None:
    from urllib.parse import urlsplit

    sim.inject("bad-location")
    with requests.Session() as session:
        session.get_redirect_target = lambda response: None  # requests would parse it even unfollowed
        response = signed_get(session, sim)
    assert response.status_code == 302 and response.headers["Location"].startswith("http://[/fapi/v3/balance?")
    with pytest.raises(ValueError):
        urlsplit(response.headers["Location"])


@pytest.mark.parametrize(("fault", "retry_after", "header"), [
    ("retry-after-inf", 60, "inf"), ("rate-429", "99999999999", "99999999999"),
    ("rate-429", "Wed, 21 Oct 2099 07:28:00 GMT", "Wed, 21 Oct 2099 07:28:00 GMT"), ("ban-418", "nan", "nan"),
])
def test_retry_after_is_sent_verbatim(sim: ExchangeSimulator, http: requests.Session, fault: str,
                                      retry_after: int | str, header: str) -> None:
    sim.inject(fault, retry_after=retry_after)
    response = signed_get(http, sim)
    assert response.status_code in (418, 429) and response.headers["Retry-After"] == header
    assert response.json()["code"] == -1003


def test_retry_after_must_be_one_header_line(sim: ExchangeSimulator) -> None:
    with pytest.raises(ValueError, match="one header line"):
        sim.inject("rate-429", retry_after="1\r\nX-Injected: yes")


def test_hostile_text_and_number_faults(sim: ExchangeSimulator, http: requests.Session) -> None:
    sim.inject("nul-msg")
    nul = signed_get(http, sim)
    assert nul.status_code == 400 and "\x00" in nul.json()["msg"] and "\x1b[2J" in nul.json()["msg"]
    sim.inject("huge-code")
    huge = signed_get(http, sim)
    assert huge.status_code == 400 and huge.json()["code"] == -98765432109876543210987654321
    sim.inject("huge-weight")
    weight = signed_get(http, sim)
    assert weight.status_code == 200 and weight.headers["X-MBX-USED-WEIGHT-1M"] == "98765432109876543210987654321"
    assert weight.json() == [{"accountAlias": "SimA", **r} for r in ROWS]
    assert len(sim.served) == 1  # a real answer with an odd header: served
    sim.inject("alias-nul")
    alias = signed_get(http, sim)
    assert {row["accountAlias"] for row in alias.json()} == {"S\x00imA"}
    assert len(sim.served) == 1


def test_trickle_faults_send_the_real_answer_slowly(sim: ExchangeSimulator, http: requests.Session) -> None:
    normal = signed_get(http, sim).content
    for fault in ("trickle", "trickle-head"):
        sim.inject(fault, seconds=0.0005)
        response = signed_get(http, sim, timeout=30)
        assert response.status_code == 200 and response.content == normal
    assert len(sim.served) == 1  # trickled answers are not recorded as served


def test_huge_body_fault_streams_without_length(sim: ExchangeSimulator, http: requests.Session) -> None:
    sim.inject("huge-body")
    query = f"timestamp={server_now(sim)}"
    with http.get(f"{sim.base_url}/fapi/v3/balance?{query}&signature={sign(SECRET, query)}",
                  headers={"X-MBX-APIKEY": KEY}, timeout=5, stream=True) as response:
        assert response.status_code == 200 and "Content-Length" not in response.headers
        received = 0
        for chunk in response.iter_content(1 << 16):
            received += len(chunk)
            if received > 32 << 20:
                break
    assert received > 32 << 20
    assert signed_get(http, sim).status_code == 200


def test_simulator_latency_delays_every_answer():
    """The added latency is a floor on each request's round trip (bench_accounts.py uses 50 ms)."""
    with ExchangeSimulator(latency=0.3) as exchange:
        began = time.monotonic()
        answer = requests.get(f"{exchange.base_url}/fapi/v1/ping", timeout=10)
        assert answer.status_code == 200
        assert time.monotonic() - began >= 0.3
