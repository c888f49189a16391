"""The daily account snapshot's parser and the spot host it is asked on."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from recorder.errors import BadPayload, ConfigError
from recorder.exchange import SnapshotBalance, _spot_base_url, parse_futures_snapshots

DAY = {"type": "futures", "updateTime": 1576281599999,
       "data": {"assets": [{"asset": "USDT", "marginBalance": "1", "walletBalance": "120.23811389"}], "position": []}}


def body(**changes) -> str:
    return json.dumps({"code": 200, "msg": "", "snapshotVos": [DAY], **changes})


def test_parses_wallet_balance_exactly_at_the_stamp():
    assert parse_futures_snapshots(body()) == [
        SnapshotBalance("USDT", datetime(2019, 12, 13, 23, 59, 59, 999000, tzinfo=timezone.utc), Decimal("120.23811389"))
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (body(code=-1), "'code' is -1, not 200"),
        (body(snapshotVos={}), "'snapshotVos' is an object, not a list"),
        (body(snapshotVos=[{**DAY, "updateTime": 1.5}]), "snapshotVos[0].updateTime is not an epoch-ms time"),
        (body(snapshotVos=[{**DAY, "type": "spot"}]), "snapshotVos[0].type is spot, not 'futures'"),
        (body(snapshotVos=[{**DAY, "data": {"assets": [{"asset": "USDT", "walletBalance": 1.5}]}}]),
         "field 'walletBalance' must be a decimal string"),
        (body(snapshotVos=[{**DAY, "data": {"assets": [{"asset": "USDT", "walletBalance": "1E-8"}]}}]),
         "is not a plain decimal"),
        (body(snapshotVos=[{**DAY, "data": {"assets": [{"asset": "US DT", "walletBalance": "1"}]}}]),
         "assets[0].asset is not an asset name"),
        ("[]", "expected a JSON object"),
    ],
    ids=["code", "not-a-list", "time", "type", "float", "exponent", "asset", "array"],
)
def test_any_defect_is_a_bad_payload(text, problem):
    with pytest.raises(BadPayload) as raised:
        parse_futures_snapshots(text)
    assert problem in str(raised.value)


def test_spot_host_follows_the_futures_host():
    assert _spot_base_url("https://fapi.binance.com") == "https://api.binance.com"
    assert _spot_base_url("http://127.0.0.1:8765") == "http://127.0.0.1:8765"
    with pytest.raises(ConfigError, match="no spot API host is known for demo-fapi.binance.com"):
        _spot_base_url("https://demo-fapi.binance.com")
