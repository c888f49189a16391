"""The client's prepared GET (a template per path, the query swapped in) is what Session.request would send."""

import http.server
import json
import threading
import time

import pytest
import requests

from recorder.exchange import BinanceFuturesClient

QUERIES = ["", "?recvWindow=5000&timestamp=1617939110373&signature=3c66ab", "?timestamp=1&signature=ab%2B%2F%3D"]


BASE_URLS = ["http://127.0.0.1:8080", "https://FAPI.Binance.com", "https://fapi.binance.com:443/x/", "http://[::1]:80"]


@pytest.mark.parametrize("base_url", BASE_URLS)
@pytest.mark.parametrize("query", QUERIES)
def test_the_prepared_request_is_the_one_session_request_prepares(base_url, query):
    client = BinanceFuturesClient(base_url=base_url, api_key="the-key", api_secret="the-secret")
    for path in ("/fapi/v3/balance", "/fapi/v1/time", "/fapi/v3/balance"):  # the second balance GET reuses its template
        ours = client._prepared(client.base_url, path + query)
        theirs = client._session.prepare_request(requests.Request("GET", client.base_url + path + query))
        assert (ours.method, ours.url, ours.body) == (theirs.method, theirs.url, theirs.body)
        assert dict(ours.headers) == dict(theirs.headers) and ours.headers["X-MBX-APIKEY"] == "the-key"


def test_each_request_is_its_own_copy():
    client = BinanceFuturesClient(base_url="http://127.0.0.1:8080", api_key="k", api_secret="s")
    first = client._prepared(client.base_url, "/fapi/v3/balance?timestamp=1&signature=a")
    second = client._prepared(client.base_url, "/fapi/v3/balance?timestamp=2&signature=b")
    assert first.url.endswith("?timestamp=1&signature=a") and second.url.endswith("?timestamp=2&signature=b")
    first.headers["X-Probe"] = "1"
    assert "X-Probe" not in second.headers


class _RecordingProxy(http.server.BaseHTTPRequestHandler):
    """A plain HTTP proxy stand-in: records each request line and answers Binance's /fapi/v1/time."""

    lines: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).lines.append(self.requestline)
        body = json.dumps({"serverTime": int(time.time() * 1000)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def proxy():
    _RecordingProxy.lines = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingProxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _RecordingProxy.lines
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_proxy_from_the_environment_still_carries_a_remote_hosts_requests(proxy, monkeypatch):
    proxy_url, lines = proxy
    monkeypatch.setenv("HTTP_PROXY", proxy_url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = BinanceFuturesClient(base_url="http://fapi.binance.invalid", api_key="k", api_secret="s")
    client.sync_clock()
    client.sync_clock()
    assert lines == ["GET http://fapi.binance.invalid/fapi/v1/time HTTP/1.1"] * 2


def test_a_loopback_exchange_ignores_the_environments_proxy(proxy, monkeypatch):
    proxy_url, lines = proxy
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens: used, it would fail
    client = BinanceFuturesClient(base_url=proxy_url, api_key="k", api_secret="s")
    client.sync_clock()
    assert lines == ["GET /fapi/v1/time HTTP/1.1"]
