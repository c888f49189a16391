"""parse_balances, property-based: any input gives valid records or BadPayload, never another exception."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from recorder.errors import BadPayload
from recorder.exchange import parse_balances
from recorder.records import AssetBalance, FetchedBalances

ENDPOINT = "/fapi/v2/balance"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_UPDATE_TIME_MS = 253402300799999  # 9999-12-31T23:59:59.999Z, the latest a datetime holds
DECIMAL_FIELDS = {"balance": "balance", "crossWalletBalance": "cross_wallet_balance", "crossUnPnl": "cross_un_pnl",
                  "availableBalance": "available_balance", "maxWithdrawAmount": "max_withdraw_amount"}
FIELDS = ["accountAlias", "asset", *DECIMAL_FIELDS, "marginAvailable", "updateTime"]
ASSET_NAME = re.compile(r"[A-Za-z0-9]{1,32}")

# Each property runs a few hundred examples: enough to shake out crashes, cheap enough for every CI run.
PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_or_bad_payload(body: bytes | str) -> FetchedBalances | None:
    """Parse body; None for BadPayload. Any other exception escapes and fails the property."""
    try:
        fetched = parse_balances(body, endpoint=ENDPOINT, used_weight=5)
    except BadPayload as exc:
        assert_one_line(str(exc))
        # Without asset names and item numbers, --hypothesis-show-statistics groups by the check reached.
        event(re.sub(r"asset \w+:|item \d+", "", str(exc))[:60])
        return None
    event("parsed")
    return fetched


def assert_one_line(message: str) -> None:
    assert message and len(message.splitlines()) == 1 and message.startswith(f"{ENDPOINT}: ")


def assert_valid(fetched: FetchedBalances) -> None:
    """What a caller may rely on whenever parse_balances returns."""
    assert isinstance(fetched, FetchedBalances)
    assert isinstance(fetched.account_alias, str) and fetched.endpoint == ENDPOINT and fetched.used_weight == 5
    assert fetched.assets
    assert len({a.asset for a in fetched.assets}) == len(fetched.assets)
    for asset in fetched.assets:
        assert isinstance(asset, AssetBalance)
        assert ASSET_NAME.fullmatch(asset.asset)
        for name in DECIMAL_FIELDS.values():
            value = getattr(asset, name)
            assert isinstance(value, Decimal) and value.is_finite()
        assert type(asset.margin_available) is bool
        assert asset.update_time.tzinfo is timezone.utc and EPOCH <= asset.update_time


# -- (1) arbitrary bytes ---------------------------------------------------------------------------


@PROPERTY
@given(st.binary(max_size=512))
@example(b"")
@example(b"\xef\xbb\xbf[]")  # a UTF-8 byte-order mark before the JSON
@example(b"[" * 100_000)  # nesting deeper than the interpreter's recursion limit
@example(b'[{"updateTime": 1' + b"0" * 5000 + b"}]")  # past int()'s 4300-digit limit
@example(b"<html><title>\x00</title>")
@example(b'{"code": -1003, "msg": "Too many requests"}')
def test_arbitrary_bytes_parse_or_raise_bad_payload(body: bytes) -> None:
    fetched = parse_or_bad_payload(body)
    if fetched is not None:
        assert_valid(fetched)


# Random text is almost never JSON; text over JSON's own alphabet gets past the first character.
JSON_ALPHABET = '[]{}",:.-+eE0123456789 \t\n\\/ubnrtfalsNIy'


@PROPERTY
@given(st.text(max_size=256) | st.text(alphabet=JSON_ALPHABET, max_size=256))
def test_arbitrary_text_parse_or_raise_bad_payload(body: str) -> None:
    fetched = parse_or_bad_payload(body)
    if fetched is not None:
        assert_valid(fetched)


# -- (2) arbitrary JSON values -----------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)  # far beyond int64 and any datetime
    | st.floats()  # NaN and +-Infinity too: json.dumps writes them as non-standard constants
    | st.text()
)
# Row-shaped objects get Binance's field names as keys, so the values reach the per-field checks.
json_keys = st.sampled_from([*FIELDS, "code", "msg"]) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(json_keys, children, max_size=10),
    max_leaves=40,
)


@st.composite
def plain_decimal_texts(draw: st.DrawFn) -> str:
    """A Binance-style amount: up to 20 integer digits and 8 decimals, negatives and zero included."""
    scale = draw(st.integers(min_value=0, max_value=8))
    coefficient = draw(st.integers(min_value=0, max_value=10 ** (20 + scale) - 1) | st.just(0))
    negative = draw(st.booleans())
    digits = tuple(int(c) for c in str(coefficient))
    return format(Decimal((int(negative), digits, -scale)), "f")


asset_names = st.from_regex(ASSET_NAME, fullmatch=True)
update_times = st.integers(min_value=0, max_value=MAX_UPDATE_TIME_MS)


@st.composite
def near_valid_rows(draw: st.DrawFn, alias: str) -> dict[str, Any]:
    """A row whose fields are each valid (80 %), an arbitrary JSON value (10 %) or absent (10 %)."""
    valid = {"accountAlias": st.just(alias), "asset": asset_names, **{key: plain_decimal_texts() for key in
             DECIMAL_FIELDS}, "marginAvailable": st.booleans(), "updateTime": update_times}
    row = {}
    for key, strategy in valid.items():
        roll = draw(st.integers(min_value=0, max_value=9))
        if roll:
            # Mostly valid, so the checks late in the row (marginAvailable, updateTime) are reached too.
            row[key] = draw(json_values if roll == 1 else strategy)
    return row


def dump(value: Any, as_bytes: bool) -> bytes | str:
    text = json.dumps(value)
    return text.encode() if as_bytes else text


@PROPERTY
@given(json_values | st.lists(near_valid_rows("SgsR"), min_size=1, max_size=4), st.booleans())
@example({"code": [[[[]]]], "msg": {"a": None}}, True)
@example([{"updateTime": 10**400}], True)
@example([{"asset": "USDT", "accountAlias": "A", "balance": float("nan")}], False)
def test_arbitrary_json_parse_or_raise_bad_payload(value: Any, as_bytes: bool) -> None:
    fetched = parse_or_bad_payload(dump(value, as_bytes))
    if fetched is not None:
        assert_valid(fetched)


# -- (3) valid responses ---------------------------------------------------------------------------


# What str.isprintable() refuses: control, format (bidi overrides), surrogate, private, unassigned, separators.
UNPRINTABLE = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")
ALIASES = st.text(st.characters(exclude_categories=UNPRINTABLE) | st.just(" "), min_size=1, max_size=64)


@st.composite
def valid_responses(draw: st.DrawFn, max_assets: int = 8) -> list[dict[str, Any]]:
    """A well-formed balance array: unique assets, one accountAlias, plain decimal strings."""
    alias = draw(ALIASES)
    assets = draw(st.lists(asset_names, min_size=1, max_size=max_assets, unique=True))
    return [
        {
            "accountAlias": alias,
            "asset": asset,
            **{key: draw(plain_decimal_texts()) for key in DECIMAL_FIELDS},
            "marginAvailable": draw(st.booleans()),
            "updateTime": draw(update_times),
        }
        for asset in assets
    ]


@PROPERTY
@given(valid_responses(), st.booleans())
def test_valid_response_parses_exactly(rows: list[dict[str, Any]], as_bytes: bool) -> None:
    fetched = parse_balances(dump(rows, as_bytes), endpoint=ENDPOINT, used_weight=5)
    assert_valid(fetched)
    assert fetched.account_alias == rows[0]["accountAlias"]
    assert [a.asset for a in fetched.assets] == [r["asset"] for r in rows]
    for parsed, sent in zip(fetched.assets, rows, strict=True):
        for key, name in DECIMAL_FIELDS.items():
            # Every digit and the scale survive: "0.10000000" stays "0.10000000", never "0.1" or "1E-8".
            assert format(getattr(parsed, name), "f") == sent[key]
        assert parsed.margin_available is sent["marginAvailable"]
        assert parsed.update_time == EPOCH + timedelta(milliseconds=sent["updateTime"])


def test_decimal_strategy_covers_the_edges() -> None:
    """The generator itself reaches zero, negative zero, 20 integer digits and 8 decimals."""
    assert format(Decimal((1, (0,), -8)), "f") == "-0.00000000"
    biggest = format(Decimal((1, tuple([9] * 28), -8)), "f")
    assert biggest == "-" + "9" * 20 + "." + "9" * 8
    (asset,) = parse_balances(json.dumps([{"accountAlias": "A", "asset": "USDT", "marginAvailable": False,
                                           "updateTime": MAX_UPDATE_TIME_MS,
                                           **dict.fromkeys(DECIMAL_FIELDS, biggest)}]),
                              endpoint=ENDPOINT).assets
    assert format(asset.max_withdraw_amount, "f") == biggest
    assert asset.update_time == datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc)


@st.composite
def corrupted_bodies(draw: st.DrawFn) -> bytes:
    """A valid body with a few bytes replaced, inserted or deleted: a damaged transfer or a proxy's edit."""
    body = bytearray(json.dumps(draw(valid_responses(max_assets=3))).encode())
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=len(body)))
        match draw(st.sampled_from(["replace", "insert", "delete", "truncate"])):
            case "replace" if at < len(body):
                body[at] = draw(st.integers(min_value=0, max_value=255))
            case "insert":
                body[at:at] = draw(st.binary(min_size=1, max_size=4) | st.sampled_from(JSON_ALPHABET).map(str.encode))
            case "delete":
                del body[at:at + draw(st.integers(min_value=1, max_value=4))]
            case "truncate":
                del body[at:]
    return bytes(body)


@PROPERTY
@given(corrupted_bodies())
def test_corrupted_valid_body_parses_or_raises_bad_payload(body: bytes) -> None:
    fetched = parse_or_bad_payload(body)
    if fetched is not None:
        assert_valid(fetched)


# -- (4) one field broken --------------------------------------------------------------------------

BAD_DECIMAL_TEXTS = ["1e5", "1E-8", "NaN", "nan", "Infinity", "-Infinity", "1.2.3", "", " 1", "1 ", "\n1", "+1",
                     "1.", ".5", "-", "--1", "0x10", "1_000", "1,5", "\u0661", "\uff11", "\u22121", "1" * 41]
# A JSON value of a type the field never has: decimals and names are strings, flags booleans, times integers.
NOT_A_STRING = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
WRONG_TYPES = {
    **dict.fromkeys(["accountAlias", "asset", *DECIMAL_FIELDS], NOT_A_STRING),
    "marginAvailable": st.none() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
                        | st.lists(st.booleans()),
    "updateTime": (st.none() | st.booleans() | st.text() | st.lists(st.integers(), max_size=2)
                   | st.floats(allow_nan=False, allow_infinity=False)),  # 1.0 arrives as a decimal, not an int
}
MISSING = object()


@st.composite
def one_field_broken(draw: st.DrawFn) -> tuple[list[dict[str, Any]], int, str, Any]:
    """A valid response with exactly one field of one row removed, retyped, or made an invalid decimal."""
    rows = draw(valid_responses(max_assets=4))
    index = draw(st.integers(min_value=0, max_value=len(rows) - 1))
    field = draw(st.sampled_from(FIELDS))
    options = ["remove", "wrong type"] + (["bad decimal"] * 2 if field in DECIMAL_FIELDS else [])
    match draw(st.sampled_from(options)):
        case "remove":
            value = MISSING
        case "wrong type":
            value = draw(WRONG_TYPES[field])
        case _:
            value = draw(st.sampled_from(BAD_DECIMAL_TEXTS))
    return rows, index, field, value


@PROPERTY
@given(one_field_broken(), st.booleans())
@example(([{"accountAlias": "A", "asset": "USDT", **dict.fromkeys(DECIMAL_FIELDS, "1"), "marginAvailable": True,
             "updateTime": 0}], 0, "updateTime", 1.0), False)
@example(([{"accountAlias": "A", "asset": "USDT", **dict.fromkeys(DECIMAL_FIELDS, "1"), "marginAvailable": True,
             "updateTime": 0}], 0, "marginAvailable", 1), False)
def test_one_broken_field_is_named_with_its_asset(case: tuple[list[dict[str, Any]], int, str, Any],
                                                  as_bytes: bool) -> None:
    rows, index, field, value = case
    asset = rows[index]["asset"]
    if value is MISSING:
        del rows[index][field]
    else:
        rows[index][field] = value
    with pytest.raises(BadPayload) as caught:
        parse_balances(dump(rows, as_bytes), endpoint=ENDPOINT)
    message = str(caught.value)
    assert_one_line(message)
    if field == "asset":
        # The asset's own name is what broke, so the message points at the item instead.
        assert f"{ENDPOINT}: item {index}: field 'asset' " in message
    else:
        assert f"{ENDPOINT}: asset {asset}: field '{field}' " in message


@PROPERTY
@given(valid_responses(max_assets=2), st.text(st.characters(categories=UNPRINTABLE, exclude_characters=" "),
                                              min_size=1, max_size=3), st.integers(min_value=0, max_value=4))
def test_alias_with_unprintable_characters_is_refused_by_name(rows: list[dict[str, Any]], bad: str, at: int) -> None:
    """An alias is an identity: NUL, control or bidi characters in it are refused, never cleaned away."""
    alias = rows[0]["accountAlias"]
    for row in rows:
        row["accountAlias"] = (alias[:at] + bad + alias[at:])[:64]
    with pytest.raises(BadPayload) as caught:
        parse_balances(json.dumps(rows), endpoint=ENDPOINT)
    message = str(caught.value)
    assert_one_line(message)
    assert "field 'accountAlias' is not 1 to 64 printable characters" in message
    assert message.isprintable()
