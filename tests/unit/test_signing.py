"""HMAC signing against Binance's published test vector (binance-api.md section 2)."""

from __future__ import annotations

from recorder.exchange import sign_hmac

VECTOR_SECRET = "2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9"
VECTOR_PAYLOAD = (
    "symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=9000&timeInForce=GTC&recvWindow=5000&timestamp=1591702613943"
)
VECTOR_SIGNATURE = "3c661234138461fcc7a7d8746c6558c9842d4e10870d2ecbedf7777cad694af9"


def test_sign_hmac_matches_binance_published_vector():
    assert sign_hmac(VECTOR_SECRET, VECTOR_PAYLOAD) == VECTOR_SIGNATURE


def test_sign_hmac_depends_on_parameter_order():
    """Binance signs the exact string sent: the parameter table's order gives another signature."""
    reordered = VECTOR_PAYLOAD.replace("quantity=1&price=9000&timeInForce=GTC", "timeInForce=GTC&quantity=1&price=9000")
    assert sign_hmac(VECTOR_SECRET, reordered) != VECTOR_SIGNATURE


def test_the_client_signer_gives_the_vector_every_time_and_each_payload_its_own():
    """hmac_signer reuses one keyed HMAC: no signature may carry state over from the one before."""
    from recorder.signing import hmac_signer

    sign = hmac_signer(VECTOR_SECRET)
    reordered = VECTOR_PAYLOAD.replace("quantity=1&price=9000&timeInForce=GTC", "timeInForce=GTC&quantity=1&price=9000")
    assert [sign(VECTOR_PAYLOAD), sign(reordered), sign(VECTOR_PAYLOAD)] == [
        VECTOR_SIGNATURE, sign_hmac(VECTOR_SECRET, reordered), VECTOR_SIGNATURE
    ]
