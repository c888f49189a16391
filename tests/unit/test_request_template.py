"""The client's prepared GET (a template per path, the query swapped in) is what Session.request would send."""

import pytest
import requests

from recorder.exchange import BinanceFuturesClient

QUERIES = ["", "?recvWindow=5000&timestamp=1617939110373&signature=3c66ab", "?timestamp=1&signature=ab%2B%2F%3D"]


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:8080", "https://FAPI.Binance.com", "https://fapi.binance.com:443/x/",
                                      "http://[::1]:80"])
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
