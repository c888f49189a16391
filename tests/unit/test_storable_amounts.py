"""check_amount's fast paths decide exactly as its full rule: same accept/refuse for every amount."""

from decimal import Decimal

import pytest

from recorder.storable import AMOUNT_DIGITS_LIMIT, UnstorableValue, check_amount

LIMIT = AMOUNT_DIGITS_LIMIT


def storable_by_full_rule(value: Decimal) -> bool:
    """The rule without any fast path: finite, and under the limit on both sides of the point."""
    if not value.is_finite():
        return False
    return value.adjusted() < LIMIT and -int(value.as_tuple().exponent) <= LIMIT


def accepted(value: object) -> bool:
    try:
        check_amount(value, "wallet_balance", "USDT")
    except UnstorableValue:
        return False
    return True


AMOUNTS = [
    "0", "-0", "0.00000000", "-0.00000000", "0E-8", "0E+2", "-0E+5", "0E-1000", "0E-1001",
    "0E+999", "0E+1000", "-0E-1001", "1E+2", "1E-8", "-1E+2", "1.5E+3", "12345.67890123",
    "-0.00000001", "100", "1E+999", "1E+1000", "9.9E+999", "1E-1000", "1E-1001",
    "1" + "0" * 98, "1" + "0" * 99, "0." + "0" * 99 + "1", "0." + "0" * 998 + "1",
    "0." + "0" * 999 + "1", "1." + "0" * 1000, "1." + "0" * 999,
]


@pytest.mark.parametrize("text", AMOUNTS)
def test_fast_paths_decide_as_the_full_rule(text):
    value = Decimal(text)
    assert accepted(value) is storable_by_full_rule(value)


@pytest.mark.parametrize("text", ["0E-8", "-0", "0.00000000", "1E+2", "-0E+5"])
def test_zero_and_exponent_forms_of_real_amounts_are_accepted(text):
    assert accepted(Decimal(text))


@pytest.mark.parametrize("text", ["0E-1001", "0E+1000", "-0E+1000", "1E+1000", "1E-1001"])
def test_amounts_beyond_the_limit_are_refused_with_the_reason(text):
    with pytest.raises(UnstorableValue, match=r"^wallet_balance of USDT has more than 1000 digits"):
        check_amount(Decimal(text), "wallet_balance", "USDT")


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("-Infinity"), Decimal("sNaN"), 0.0, "0", 0])
def test_non_finite_and_non_decimals_are_refused(value):
    assert not accepted(value)
