"""The simulator verifies Ed25519 and RSA signatures as Binance does, beside HMAC accounts, over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from recorder.signing import key_signer
from recorder.simulator import ExchangeSimulator

HMAC_KEY, HMAC_SECRET = "hmac-key-0123456789", "hmac-secret-abcdef"
ED_KEY, RSA_KEY = "ed25519-key-0123456789", "rsa-key-0123456789"
INVALID = {"code": -1022, "msg": "Signature for this request is not valid."}

Private = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


def row(asset: str, amount: str) -> dict:
    return {"asset": asset, "balance": amount, "crossWalletBalance": amount, "crossUnPnl": "0.00000000",
            "availableBalance": amount, "maxWithdrawAmount": amount, "marginAvailable": True,
            "updateTime": 1700000000000}


ROWS = {
    HMAC_KEY: [row("USDT", "1.00000000")],
    ED_KEY: [row("USDT", "98765432109.12345678"), row("BNB", "0.00000001")],
    RSA_KEY: [row("USDC", "-12.50000000")],
}
ALIASES = {HMAC_KEY: "SimH", ED_KEY: "SimE", RSA_KEY: "SimR"}


def raw_signature(private: Private, payload: str) -> bytes:
    """An independent signer: Ed25519 per RFC 8032, RSA per PKCS#1 v1.5 with SHA-256."""
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return private.sign(payload.encode())
    return private.sign(payload.encode(), padding.PKCS1v15(), hashes.SHA256())


def b64_signature(private: Private, payload: str) -> str:
    return base64.b64encode(raw_signature(private, payload)).decode()


def encoded_signature(private: Private, payload: str) -> str:
    """Base64, percent-encoded so + / = survive the query string (general-info, RSA section)."""
    return quote(b64_signature(private, payload), safe="")


def public_pem(private: Private) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def keys() -> dict[str, Private]:
    return {ED_KEY: ed25519.Ed25519PrivateKey.generate(),
            RSA_KEY: rsa.generate_private_key(public_exponent=65537, key_size=2048)}


@pytest.fixture
def sim(keys: dict[str, Private]) -> Iterator[ExchangeSimulator]:
    # Start the server clock 1 s into a fresh minute so no test straddles a weight-window reset.
    offset = (-(time.time_ns() // 1_000_000)) % 60_000 + 1_000
    with ExchangeSimulator(clock_offset_ms=offset, seed=3) as simulator:
        simulator.add_account(api_key=HMAC_KEY, api_secret=HMAC_SECRET, account_alias=ALIASES[HMAC_KEY],
                              balances=ROWS[HMAC_KEY])
        # One key as bytes, the other as text: add_account takes both.
        simulator.add_account(api_key=ED_KEY, account_alias=ALIASES[ED_KEY], balances=ROWS[ED_KEY],
                              public_key_pem=public_pem(keys[ED_KEY]))
        simulator.add_account(api_key=RSA_KEY, api_secret="", account_alias=ALIASES[RSA_KEY],
                              balances=ROWS[RSA_KEY], public_key_pem=public_pem(keys[RSA_KEY]).decode())
        yield simulator


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def server_now(sim: ExchangeSimulator) -> int:
    return time.time_ns() // 1_000_000 + sim.clock_offset_ms


def get(http: requests.Session, sim: ExchangeSimulator, api_key: str, query: str, signature: str,
        path: str = "/fapi/v3/balance") -> requests.Response:
    url = f"{sim.base_url}{path}?{query}&signature={signature}"
    return http.get(url, headers={"X-MBX-APIKEY": api_key}, timeout=5)


def expected_body(api_key: str) -> list[dict]:
    return [{"accountAlias": ALIASES[api_key], **r} for r in ROWS[api_key]]


@pytest.mark.parametrize("path", ["/fapi/v2/balance", "/fapi/v3/balance"])
@pytest.mark.parametrize("api_key", [ED_KEY, RSA_KEY])
def test_key_signed_balance_returns_rows(sim: ExchangeSimulator, http: requests.Session,
                                         keys: dict[str, Private], api_key: str, path: str) -> None:
    query = f"timestamp={server_now(sim)}&recvWindow=5000"
    response = get(http, sim, api_key, query, encoded_signature(keys[api_key], query), path)
    assert (response.status_code, response.json()) == (200, expected_body(api_key))
    assert sim.served[-1].api_key == api_key


@pytest.mark.parametrize("api_key", [ED_KEY, RSA_KEY])
def test_signature_by_another_key_is_rejected(sim: ExchangeSimulator, http: requests.Session,
                                              keys: dict[str, Private], api_key: str) -> None:
    query = f"timestamp={server_now(sim)}"
    same_type = (ed25519.Ed25519PrivateKey.generate() if api_key == ED_KEY
                 else rsa.generate_private_key(public_exponent=65537, key_size=2048))
    other_type = keys[RSA_KEY if api_key == ED_KEY else ED_KEY]
    for private in (same_type, other_type):
        response = get(http, sim, api_key, query, encoded_signature(private, query))
        assert (response.status_code, response.json()) == (400, INVALID)


@pytest.mark.parametrize("api_key", [ED_KEY, RSA_KEY])
def test_tampered_query_is_rejected(sim: ExchangeSimulator, http: requests.Session,
                                    keys: dict[str, Private], api_key: str) -> None:
    now = server_now(sim)
    signed = f"timestamp={now}&recvWindow=5000"
    signature = encoded_signature(keys[api_key], signed)
    for sent in (f"timestamp={now - 1}&recvWindow=5000", f"timestamp={now}&recvWindow=6000",
                 f"recvWindow=5000&timestamp={now}", f"timestamp={now}"):
        response = get(http, sim, api_key, sent, signature)
        assert (response.status_code, response.json()) == (400, INVALID)
    assert get(http, sim, api_key, signed, signature).status_code == 200


def plus_signature(private: Private, now: int) -> tuple[str, str]:
    """A query whose base64 signature contains '+' (Ed25519 and RSA are deterministic: vary recvWindow)."""
    for recv_window in range(5000, 5200):
        query = f"timestamp={now}&recvWindow={recv_window}"
        signature = b64_signature(private, query)
        if "+" in signature:
            return query, signature
    raise AssertionError("no signature with '+' in 200 tries")


@pytest.mark.parametrize("api_key", [ED_KEY, RSA_KEY])
def test_unencoded_plus_in_signature_is_rejected(sim: ExchangeSimulator, http: requests.Session,
                                                 keys: dict[str, Private], api_key: str) -> None:
    """A literal '+' is a space after form decoding, as on Binance: -1022, never a 500."""
    query, signature = plus_signature(keys[api_key], server_now(sim))
    response = get(http, sim, api_key, query, signature)
    assert (response.status_code, response.json()) == (400, INVALID)
    # The same bytes percent-encoded are accepted: the encoding alone was at fault.
    assert get(http, sim, api_key, query, quote(signature, safe="")).status_code == 200


@pytest.mark.parametrize("signature", ["", "%3D%3D", "not-base64!", "YWJj%3D", "%C3%A9%C3%A9%C3%A9%C3%A9",
                                       "%00%00%00%00", "%ZZ", "A" * 5000])
@pytest.mark.parametrize("api_key", [ED_KEY, RSA_KEY])
def test_malformed_signature_is_rejected(sim: ExchangeSimulator, http: requests.Session,
                                         api_key: str, signature: str) -> None:
    response = get(http, sim, api_key, f"timestamp={server_now(sim)}", signature)
    assert (response.status_code, response.json()) == (400, INVALID)


def test_hmac_accounts_work_beside_key_accounts(sim: ExchangeSimulator, http: requests.Session,
                                                keys: dict[str, Private]) -> None:
    query = f"timestamp={server_now(sim)}"
    hex_signature = hmac.new(HMAC_SECRET.encode(), query.encode(), hashlib.sha256).hexdigest()
    response = get(http, sim, HMAC_KEY, query, hex_signature)
    assert (response.status_code, response.json()) == (200, expected_body(HMAC_KEY))
    # Each account accepts only its own kind of signature.
    for api_key in (ED_KEY, RSA_KEY):
        wrong = get(http, sim, api_key, query, hex_signature)
        assert (wrong.status_code, wrong.json()) == (400, INVALID)
        mismatched = get(http, sim, HMAC_KEY, query, encoded_signature(keys[api_key], query))
        assert (mismatched.status_code, mismatched.json()) == (400, INVALID)


@pytest.mark.parametrize("api_key", [ED_KEY, RSA_KEY])
def test_key_accounts_keep_the_other_signed_checks(sim: ExchangeSimulator, http: requests.Session,
                                                   keys: dict[str, Private], api_key: str) -> None:
    now = server_now(sim)
    cases = [(f"timestamp={now + 1500}", 400, -1021), (f"timestamp={now}&asset=USDT", 400, -1104),
             (f"timestamp={now}&recvWindow=60001", 400, -1131)]
    for query, status, code in cases:
        response = get(http, sim, api_key, query, encoded_signature(keys[api_key], query))
        assert (response.status_code, response.json()["code"]) == (status, code)


@pytest.mark.parametrize("api_key", [ED_KEY, RSA_KEY])
def test_recorder_signer_is_accepted(sim: ExchangeSimulator, http: requests.Session,
                                     keys: dict[str, Private], api_key: str) -> None:
    """Our production signer and the simulator agree on the wire format."""
    pem = keys[api_key].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    sign: Callable[[str], str] = key_signer(pem)
    query = f"timestamp={server_now(sim)}&recvWindow=5000"
    response = get(http, sim, api_key, query, sign(query))
    assert (response.status_code, response.json()) == (200, expected_body(api_key))


def test_add_account_rejects_ambiguous_or_unsupported_keys(keys: dict[str, Private]) -> None:
    sim = ExchangeSimulator()
    with pytest.raises(ValueError, match="not both"):
        sim.add_account(api_key="k", api_secret="s", public_key_pem=public_pem(keys[ED_KEY]))
    with pytest.raises(ValueError, match="needs api_secret or public_key_pem"):
        sim.add_account(api_key="k")
    ec_pem = public_pem(ec.generate_private_key(ec.SECP256R1()))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Ed25519 or RSA"):
        sim.add_account(api_key="k", public_key_pem=ec_pem)
    with pytest.raises(ValueError):
        sim.add_account(api_key="k", public_key_pem=b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
