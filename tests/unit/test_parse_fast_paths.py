"""parse_balances' shortcuts (known amount texts, AssetBalance built without __init__) change nothing visible."""

import dataclasses
import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from recorder import exchange
from recorder.errors import BadPayload
from recorder.exchange import parse_balances
from recorder.records import AssetBalance


def row(asset="USDT", amount="12.50000000", **extra):
    fields = {"accountAlias": "SgsR", "asset": asset, "balance": amount, "crossWalletBalance": amount,
              "crossUnPnl": "0.00000000", "availableBalance": amount, "maxWithdrawAmount": amount,
              "marginAvailable": True, "updateTime": 1617939110373}
    fields.update(extra)
    return fields


def parse(*rows):
    return parse_balances(json.dumps(list(rows)), endpoint="/fapi/v3/balance")


def test_a_parsed_asset_is_the_same_frozen_record_as_one_built_normally():
    parsed = parse(row()).assets[0]
    built = AssetBalance(
        asset="USDT", balance=Decimal("12.50000000"), cross_wallet_balance=Decimal("12.50000000"),
        cross_un_pnl=Decimal("0E-8"), available_balance=Decimal("12.50000000"),
        max_withdraw_amount=Decimal("12.50000000"), margin_available=True,
        update_time=datetime(2021, 4, 9, 3, 31, 50, 373000, tzinfo=timezone.utc),
    )
    assert parsed == built and hash(parsed) == hash(built) and repr(parsed) == repr(built)
    assert str(parsed.balance) == "12.50000000" and str(parsed.cross_un_pnl) == "0E-8"
    assert dataclasses.replace(parsed, asset="BTC").asset == "BTC"
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.asset = "BTC"  # type: ignore[misc]


def test_a_known_amount_text_is_still_refused_where_a_field_is_not_text():
    parse(row(amount="7.25"))  # "7.25" is now a known text
    refused = (
        r"^/fapi/v3/balance: asset USDT: field 'balance' must be a decimal string, got a number Decimal\('7\.25'\)$"
    )
    with pytest.raises(BadPayload, match=refused):
        parse(row(balance=7.25))


def test_a_bad_amount_is_never_remembered_as_known():
    for _ in range(2):
        with pytest.raises(BadPayload, match=r"field 'balance' is not a plain decimal: 1e5$"):
            parse(row(balance="1e5"))
    assert "1e5" not in exchange._KNOWN_AMOUNTS


def test_the_known_amounts_stay_bounded():
    for start in range(0, exchange._KNOWN_AMOUNTS_MAX + 200, 100):
        parse(*(row(asset=f"A{n}", amount=f"{n}.5") for n in range(start, start + 100)))
        assert len(exchange._KNOWN_AMOUNTS) <= exchange._KNOWN_AMOUNTS_MAX
    assert parse(row(amount="4290.5")).assets[0].balance == Decimal("4290.5")


def test_an_unhashable_alias_is_refused_with_its_message():
    refused = r"^/fapi/v3/balance: asset USDT: field 'accountAlias' is missing or not a string$"
    with pytest.raises(BadPayload, match=refused):
        parse(row(accountAlias=["SgsR"]))
