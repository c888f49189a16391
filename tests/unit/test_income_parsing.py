"""parse_income: every field kept exactly, or the whole page refused with a one-line BadPayload."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from recorder.errors import BadPayload
from recorder.exchange import parse_income
from recorder.ledger.types import KNOWN_INCOME_TYPES, ROLL_FORWARD_GROUPS, roll_forward_group

BIG = 2**53 + 1  # the first integer a double cannot hold


def entry(**overrides):
    values = {"symbol": "BTCUSDT", "incomeType": "COMMISSION", "income": "-0.01000000", "asset": "USDT",
              "info": "COMMISSION", "time": 1570636800000, "tranId": 9689322392, "tradeId": "2059192"}
    values.update(overrides)
    return values


def parse_text(text: str):
    return parse_income(text.encode(), used_weight=30)


def parse(rows):
    return parse_text(json.dumps(rows))


def test_parse_income_keeps_every_field_exactly():
    fetched = parse([entry(), entry(incomeType="TRANSFER", symbol="", tradeId="", income="12345678.12345678")])
    first, second = fetched.entries
    assert fetched.used_weight == 30
    assert first.time == datetime(2019, 10, 9, 16, 0, tzinfo=timezone.utc) and first.time_ms == 1570636800000
    assert (first.income_type, first.tran_id, first.asset, first.symbol, first.info, first.trade_id) == (
        "COMMISSION", 9689322392, "USDT", "BTCUSDT", "COMMISSION", "2059192")
    assert first.income == Decimal("-0.01000000") and str(first.income) == "-0.01000000"
    assert second.income == Decimal("12345678.12345678") and second.trade_id == "" and second.symbol == ""
    assert first.key == ("COMMISSION", 9689322392, "USDT")


def test_parse_income_tran_id_beyond_2_53_is_exact():
    (parsed,) = parse_text('[{"symbol":"","incomeType":"FUNDING_FEE","income":"1","asset":"USDT","info":"",'
                           f'"time":1,"tranId":{BIG},"tradeId":""}}]').entries
    assert parsed.tran_id == BIG and parsed.tran_id != int(float(BIG))


def test_parse_income_empty_page_is_valid():
    assert parse([]).entries == ()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([entry(tranId=float(BIG))], "field 'tranId' must be an integer, got a number"),
        ([entry(tranId=str(BIG))], "field 'tranId' must be an integer, got a string"),
        ([entry(tranId=True)], "field 'tranId' must be an integer"),
        ([entry(tranId=2**64)], "does not fit a 64-bit integer"),
        ([entry(income="1E-8")], "field 'income' is not a plain decimal"),
        ([entry(income=1.5)], "field 'income' must be a decimal string"),
        ([entry(time="1570636800000")], "field 'time' must be epoch milliseconds"),
        ([entry(time=1.5)], "field 'time' must be epoch milliseconds"),
        ([{k: v for k, v in entry().items() if k != "tradeId"}], "field 'tradeId' is missing"),
        ([{k: v for k, v in entry().items() if k != "tranId"}], "field 'tranId' is missing"),
        ([entry(asset="US DT")], "field 'asset' is missing or not an asset name"),
        ([entry(incomeType="")], "field 'incomeType' is missing or not an income type name"),
        ([entry(info="a\u0000b")], "field 'info' is not up to 1000 printable characters"),
        ([entry(), "oops"], "entry 1 is a string, not an object"),
        ({"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."}, "error object instead of entries"),
        ({"rows": []}, "expected a JSON array of entries"),
    ],
)
def test_parse_income_refuses_the_whole_page(rows, message):
    with pytest.raises(BadPayload) as caught:
        parse(rows)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_parse_income_fraction_tran_id_is_refused_not_rounded():
    with pytest.raises(BadPayload, match="'tranId' must be an integer, got a number 9007199254740993.5"):
        parse_text('[{"symbol":"","incomeType":"TRANSFER","income":"1","asset":"USDT","info":"","time":1,'
                   '"tranId":9007199254740993.5,"tradeId":""}]')


def test_income_types_and_groups():
    assert "SPECIAL_FUNDING_FEE" in KNOWN_INCOME_TYPES and len(KNOWN_INCOME_TYPES) == 23
    assert set(ROLL_FORWARD_GROUPS) == KNOWN_INCOME_TYPES
    assert {roll_forward_group(t) for t in ("COMMISSION", "FEE_RETURN", "SPECIAL_FUNDING_FEE", "REALIZED_PNL",
                                            "COIN_SWAP_WITHDRAW", "AUTO_EXCHANGE", "NEVER_SEEN")} == {
        "fees", "rebates", "funding", "realized_pnl", "transfers", "other"}
    assert roll_forward_group("AUTO_EXCHANGE") == "other" and roll_forward_group("NEVER_SEEN") == "other"
