"""parse_balances: exact Decimals out, or a one-line BadPayload naming the field and asset."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from recorder.errors import BadPayload
from recorder.exchange import parse_balances

ENDPOINT = "/fapi/v2/balance"


def row(**overrides):
    values = {
        "accountAlias": "SgsR",
        "asset": "USDT",
        "balance": "122607.35137903",
        "crossWalletBalance": "23.72469206",
        "crossUnPnl": "0.00000000",
        "availableBalance": "23.72469206",
        "maxWithdrawAmount": "23.72469206",
        "marginAvailable": True,
        "updateTime": 1617939110373,
    }
    values.update(overrides)
    return values


def parse(rows):
    return parse_balances(json.dumps(rows).encode(), endpoint=ENDPOINT, used_weight=7)


def test_parse_binance_doc_sample_exactly():
    fetched = parse([row()])
    (usdt,) = fetched.assets
    assert fetched.account_alias == "SgsR"
    assert fetched.used_weight == 7
    assert usdt.balance == Decimal("122607.35137903")
    assert format(usdt.cross_wallet_balance, "f") == "23.72469206"
    assert usdt.margin_available is True
    assert usdt.update_time == datetime(2021, 4, 9, 3, 31, 50, 373000, tzinfo=timezone.utc)


@pytest.mark.parametrize("text", ["98765432109.12345678", "0.00000001", "-12.50000000", "0", "-0.00000000"])
def test_parse_keeps_every_digit_and_the_scale(text):
    (asset,) = parse([row(balance=text)]).assets
    assert format(asset.balance, "f") == text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"balance": "12.3.4"}, "asset USDT: field 'balance' is not a plain decimal: 12.3.4"),
        ({"balance": "1E-8"}, "field 'balance' is not a plain decimal"),
        ({"balance": "NaN"}, "field 'balance' is not a plain decimal"),
        ({"balance": " 1"}, "field 'balance' is not a plain decimal"),
        ({"crossUnPnl": 1.5}, "asset USDT: field 'crossUnPnl' must be a decimal string, got a number"),
        ({"availableBalance": None}, "field 'availableBalance' must be a decimal string, got null"),
        ({"marginAvailable": "true"}, "field 'marginAvailable' must be true or false"),
        ({"updateTime": "1617939110373"}, "field 'updateTime' must be epoch milliseconds"),
        ({"updateTime": True}, "field 'updateTime' must be epoch milliseconds"),
        ({"updateTime": -1}, "field 'updateTime' must be epoch milliseconds"),
        ({"asset": ""}, "item 0: field 'asset' is missing or not an asset name"),
        ({"asset": 5}, "item 0: field 'asset' is missing or not an asset name"),
        ({"accountAlias": 3}, "field 'accountAlias' is missing or not a string"),
    ],
)
def test_parse_rejects_bad_fields_naming_field_and_asset(overrides, message):
    with pytest.raises(BadPayload) as caught:
        parse([row(asset="BNB"), row(**overrides)] if overrides.get("asset") is None else [row(**overrides)])
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("field", ["balance", "crossWalletBalance", "crossUnPnl", "availableBalance",
                                   "maxWithdrawAmount", "marginAvailable", "updateTime"])
def test_parse_rejects_a_missing_field(field):
    broken = row()
    del broken[field]
    with pytest.raises(BadPayload, match=f"asset USDT: field '{field}' is missing"):
        parse([broken])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'[{"asset": "USDT", "balance": }', "malformed JSON"),
        (b"", "malformed JSON"),
        (b'{"code":0,"msg":"ok"}', "error object instead of balances"),
        (b'{"a": 1}', "expected a JSON array of assets, got an object"),
        (b"[]", "empty asset list"),
        (b"[1]", "item 0 is a number, not an object"),
        (b"<html><title>502 Bad Gateway</title></html>", "HTML page instead of JSON (502 Bad Gateway)"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[NaN]", "malformed JSON"),
    ],
)
def test_parse_rejects_bodies_of_the_wrong_shape(body, message):
    with pytest.raises(BadPayload, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_balances(body, endpoint=ENDPOINT)


def test_parse_rejects_duplicate_assets_and_mixed_aliases():
    with pytest.raises(BadPayload, match="asset USDT: listed twice"):
        parse([row(), row()])
    with pytest.raises(BadPayload, match="2 different accountAlias"):
        parse([row(), row(asset="BNB", accountAlias="Other")])


def test_parse_ignores_fields_binance_may_add_later():
    (asset,) = parse([row(newField="x")]).assets
    assert asset.asset == "USDT"


def test_parse_messages_stay_short_on_hostile_bodies():
    """A huge HTML-ish body or error code gives a short one-line message (and no quadratic scan)."""
    with pytest.raises(BadPayload) as html:
        parse_balances("<" + "<title>" * 20000, endpoint=ENDPOINT)
    with pytest.raises(BadPayload) as code:
        parse_balances(json.dumps({"code": "x" * 100000, "msg": "m"}), endpoint=ENDPOINT)
    assert len(str(html.value)) < 300 and len(str(code.value)) < 500
