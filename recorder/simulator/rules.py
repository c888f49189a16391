"""Binance's rules for a request: endpoint weights, the per-IP weight limiter and its bans, the checks of a
SIGNED endpoint (API key, HMAC/Ed25519/RSA signature, parameters, timestamp and recvWindow) and the error
messages Binance sends when one fails.

https://developers.binance.com/docs/derivatives/usds-margined-futures/general-info
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from recorder.simulator.market import _Account
from recorder.simulator.responses import _Response, _error

_MINUTE_MS = 60_000
_BAN_SECONDS = 120  # Binance's shortest automatic ban ("from 2 minutes to 3 days").
_MAX_RECV_WINDOW = 60_000
_WEIGHTS = {"/fapi/v1/ping": 1, "/fapi/v1/time": 1, "/fapi/v2/balance": 10, "/fapi/v3/balance": 5,
            "/sapi/v1/account/apiRestrictions": 1, "/fapi/v1/income": 30}
_SIGNED_PARAMS = frozenset({"timestamp", "recvWindow", "signature"})
_LONG = re.compile(r"[0-9]{1,19}")

_MSG_429 = ("Too many requests; current limit is {limit} requests per minute. "
            "Please use the websocket for live updates to avoid polling the API.")
_MSG_418 = ("Way too many requests; IP banned until {until}. "
            "Please use the websocket for live updates to avoid bans.")
_MSG_1021_BEHIND = "Timestamp for this request is outside of the recvWindow."
_MSG_1021_AHEAD = "Timestamp for this request was 1000ms ahead of the server's time."
_MSG_1022 = "Signature for this request is not valid."
_MSG_2014 = "API-key format invalid."
_MSG_2015 = "Invalid API-key, IP, or permissions for action."


@dataclass
class _IpWindow:
    minute: int = -1
    weight: int = 0
    retry_until_ms: int = 0  # end of the last 429's Retry-After
    banned_until_ms: int = 0


class _WeightLimiter:
    """Each IP's weight in the current minute, the 429 past the limit, and the ban for ignoring its Retry-After.

    Not thread-safe: the exchange calls it under its lock.
    """

    def __init__(self) -> None:
        self.windows: dict[str, _IpWindow] = {}
        self.bans_issued = 0

    def window(self, ip: str, now: int) -> _IpWindow:
        """The IP's window for the minute of now, started afresh when the minute has turned."""
        window = self.windows.setdefault(ip, _IpWindow())
        if window.minute != now // _MINUTE_MS:
            window.minute, window.weight = now // _MINUTE_MS, 0
        return window

    def admit(self, ip: str, weight: int, now: int, limit: int) -> tuple[_Response | None, int]:
        """Count the request's weight; a 429/418 response if the IP is over its limit."""
        window = self.window(ip, now)
        if now < window.banned_until_ms:
            return self._ban(window.banned_until_ms, now), window.weight
        if now < window.retry_until_ms:
            # Binance bans an IP that keeps sending while a 429's Retry-After is in force.
            window.banned_until_ms = now + _BAN_SECONDS * 1000
            self.bans_issued += 1
            return self._ban(window.banned_until_ms, now), window.weight
        window.weight += weight
        if window.weight > limit:
            window.retry_until_ms = (window.minute + 1) * _MINUTE_MS
            retry_after = max(1, -(-(window.retry_until_ms - now) // 1000))
            msg = _MSG_429.format(limit=limit)
            return _error(429, -1003, msg, **{"Retry-After": str(retry_after)}), window.weight
        return None, window.weight

    @staticmethod
    def _ban(until: int, now: int) -> _Response:
        retry_after = str(max(1, -(-(until - now) // 1000)))
        return _error(418, -1003, _MSG_418.format(until=until), **{"Retry-After": retry_after})


def _authenticate(api_key: str, account: _Account | None, query: str,
                  clock: Callable[[], int], params: frozenset[str] = frozenset()) -> _Account | _Response:
    """Apply Binance's SIGNED endpoint checks in Binance's order; the account or the error.

    account is the one registered under api_key, None if there is none; clock reads the exchange clock (epoch ms);
    params names the endpoint's own parameters, read besides the signed ones.
    """
    if not api_key:
        return _error(401, -2014, _MSG_2014)
    if account is None:
        return _error(401, -2015, _MSG_2015)
    # Parsed by hand: the signature covers the exact bytes sent, in the order sent.
    pairs = [part.partition("=") for part in query.split("&")] if query else []
    names = [unquote_plus(name) for name, _, _ in pairs]
    if not names or names[-1] != "signature":
        return _error(400, -1022, _MSG_1022)
    payload = query.rpartition("&")[0].encode("latin-1")  # http.server decoded the line as latin-1
    if account.public_key is not None:
        valid = _verify_key_signature(account.public_key, payload, pairs[-1][2])
    else:
        expected = hmac.new(account.api_secret.encode(), payload, hashlib.sha256).hexdigest().encode()
        given = unquote_plus(pairs[-1][2]).lower().encode("utf-8", "replace")
        valid = hmac.compare_digest(expected, given)
    if not valid:
        return _error(400, -1022, _MSG_1022)
    if len(set(names)) != len(names):
        return _error(400, -1101, "Duplicate values for a parameter detected.")
    values = {name: unquote_plus(value) for name, (_, _, value) in zip(names, pairs)}
    timestamp = values.get("timestamp", "")
    if not _LONG.fullmatch(timestamp):
        return _error(400, -1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.")
    recv_window = values.get("recvWindow", "5000")
    if not _LONG.fullmatch(recv_window):
        return _error(400, -1100, "Illegal characters found in parameter 'recvWindow'; "
                                  "legal range is '^[0-9]{1,20}$'.")
    if not 0 < int(recv_window) <= _MAX_RECV_WINDOW:
        return _error(400, -1131, "recvWindow must be less than 60000")
    read = sum(name in _SIGNED_PARAMS or name in params for name in names)
    if read != len(names):
        return _error(400, -1104, f"Not all sent parameters were read; read '{read}' parameter(s) "
                                  f"but was sent '{len(names)}'.")
    now = clock()
    # The documented rule: timestamp < serverTime + 1000 and serverTime - timestamp <= recvWindow.
    if int(timestamp) >= now + 1000:
        return _error(400, -1021, _MSG_1021_AHEAD)
    if now - int(timestamp) > int(recv_window):
        return _error(400, -1021, _MSG_1021_BEHIND)
    return account


def _load_public_key(pem: str | bytes) -> Any:
    """An Ed25519 or RSA public key from PEM (SubjectPublicKeyInfo, what Binance's key upload takes)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    if not isinstance(key, (ed25519.Ed25519PublicKey, rsa.RSAPublicKey)):
        raise ValueError("public_key_pem must be an Ed25519 or RSA public key (Binance accepts no other type)")
    return key


def _verify_key_signature(key: Any, payload: bytes, raw_value: str) -> bool:
    """Check a URL-encoded base64 Ed25519 (RFC 8032) or RSA PKCS#1 v1.5 SHA-256 signature of payload."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ed25519, padding

    # Form decoding, as for every other parameter here: a literal "+" becomes a space. Binance's
    # general-info requires the base64 to be percent-encoded because it contains + / =; a client that
    # forgets is rejected here (invalid base64 -> -1022) instead of working only on the simulator.
    text = unquote_plus(raw_value)
    try:
        signature = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        return False
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, payload)
        else:
            key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True

