"""BinanceFuturesClient: clock sync, signing, HTTP, error translation, JSON -> records.

Everything Binance-specific (camelCase names, error codes, headers) stays in this module;
third-party exceptions are translated here exactly once into the recorder.errors tree.
Binance's rules come from ../shared/binance-api.md (general-info, error-code pages).
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests

from recorder.config import Settings, is_loopback
from recorder.errors import (
    AuthError,
    BadPayload,
    ClockSkew,
    ExchangeError,
    ExchangeUnavailable,
    RateLimited,
)
from recorder.records import AssetBalance, FetchedBalances
from recorder.signing import Signer, hmac_signer, key_signer, read_private_file, sign_hmac

__all__ = ["BinanceFuturesClient", "parse_balances", "sign_hmac"]

log = logging.getLogger(__name__)

SERVER_TIME_PATH = "/fapi/v1/time"
USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
CONNECT_TIMEOUT_SECONDS = 3.05

# -2014 bad key format, -2015 key/IP/permission rejected, -1022 bad signature,
# -2017 keys locked, -1002 unauthorized.
AUTH_CODES = frozenset({-2014, -2015, -1022, -2017, -1002})
CLOCK_CODE = -1021
TOO_MANY_REQUESTS_CODE = -1003
# Without a Retry-After header (it is documented for Spot, not for futures), wait this long.
DEFAULT_RETRY_AFTER = {429: 60.0, 418: 120.0, 403: 60.0}
MAX_ERROR_TEXT = 200

# Binance sends amounts as plain decimal strings ("-12.50000000"); anything else
# ("1E-8", "NaN", " 1", "12.3.4") is a malformed payload, not something to guess at.
_DECIMAL_TEXT = re.compile(r"-?[0-9]{1,40}(\.[0-9]{1,40})?")
_ASSET_NAME = re.compile(r"[A-Za-z0-9]{1,32}")
_MAX_UPDATE_TIME_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_BANNED_UNTIL = re.compile(r"banned until (\d{13})")

_DECIMAL_FIELDS = {
    "balance": "balance",
    "crossWalletBalance": "cross_wallet_balance",
    "crossUnPnl": "cross_un_pnl",
    "availableBalance": "available_balance",
    "maxWithdrawAmount": "max_withdraw_amount",
}


# IP weight of each request (binance-api.md section 1: v2 balance went 5 -> 10 in 2024).
REQUEST_WEIGHT = {SERVER_TIME_PATH: 1, "/fapi/v2/balance": 10, "/fapi/v3/balance": 5}
# Stop sending before this share of the per-minute limit is used, so a 429 never happens.
WEIGHT_SAFETY = 0.9
# Bounded retries inside one poll, for failures where a second read is safe (a GET changes nothing).
RETRY_ATTEMPTS = 3
RETRY_BUDGET_SECONDS = 5.0
RETRY_BASE_SECONDS = 0.25
# After an authentication failure, wait this long, doubling per failure up to an hour.
AUTH_BACKOFF_SECONDS = 60.0
AUTH_BACKOFF_MAX_SECONDS = 3600.0


class BinanceFuturesClient:
    """A signed, read-only client for the USD-M futures balance endpoints.

    One requests.Session is reused (keep-alive). Timestamps are signed with the offset
    measured against GET /fapi/v1/time, so a local clock seconds off still works.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        api_secret: str | None = None,
        signer: Signer | None = None,
        balance_path: str = "/fapi/v2/balance",
        recv_window: int = 5000,
        timeout: float = 10.0,
        weight_limit: int = 2400,
        retry_attempts: int = RETRY_ATTEMPTS,
        session: requests.Session | None = None,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if signer is None:
            if not api_secret:
                raise ValueError("BinanceFuturesClient needs api_secret or signer")
            signer = hmac_signer(api_secret)
        self.base_url = base_url.rstrip("/")
        self.balance_path = balance_path
        self.recv_window = recv_window
        self.timeout = timeout
        self.weight_limit = weight_limit
        self.retry_attempts = max(1, retry_attempts)
        self._sign = signer
        self._session = session or requests.Session()
        self._session.headers["X-MBX-APIKEY"] = api_key
        # Certificates are always verified; there is deliberately no setting to turn it off.
        self._session.verify = True
        # A proxy environment variable must not silently reroute signed requests
        # to the simulator on this machine.
        if is_loopback(urlsplit(self.base_url).hostname or ""):
            self._session.trust_env = False
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._offset_ms: int | None = None
        # No request before this monotonic time; the error to raise meanwhile says why.
        self._blocked_until: float = 0.0
        self._blocked_error: type[ExchangeError] = RateLimited
        self._auth_failures = 0
        self.last_used_weight: int | None = None
        self._weight_minute: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> BinanceFuturesClient:
        """Build a client from validated settings (credentials must be present)."""
        settings.require_credentials()
        if settings.private_key_path:
            pem = read_private_file(settings.private_key_path, "the private key file")
            signer = key_signer(pem, settings.private_key_passphrase)
        else:
            signer = hmac_signer(settings.api_secret)
        return cls(
            base_url=settings.base_url,
            api_key=settings.api_key,
            signer=signer,
            balance_path=settings.balance_path,
            recv_window=settings.recv_window,
            timeout=settings.timeout,
            weight_limit=settings.weight_limit,
        )

    def __repr__(self) -> str:
        return f"BinanceFuturesClient(base_url={self.base_url!r}, balance_path={self.balance_path!r})"

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    @property
    def clock_offset_ms(self) -> int | None:
        """Server time minus local time, as last measured."""
        return self._offset_ms

    def sync_clock(self) -> int:
        """Measure the server clock offset with GET /fapi/v1/time (midpoint of the round trip)."""
        before = self._wall_clock()
        response = self._get(SERVER_TIME_PATH, SERVER_TIME_PATH)
        after = self._wall_clock()
        body = _decode(response.content, SERVER_TIME_PATH)
        server_time = body.get("serverTime") if isinstance(body, dict) else None
        if not isinstance(server_time, int) or isinstance(server_time, bool):
            raise BadPayload(f"{SERVER_TIME_PATH}: 'serverTime' is not an integer", http_status=response.status_code)
        self._offset_ms = server_time - round((before + after) * 500)
        log.debug("server clock offset %d ms", self._offset_ms)
        return self._offset_ms

    def fetch_balances(self) -> FetchedBalances:
        """GET the balance endpoint, signed; return every asset, validated, or raise.

        A read changes nothing on the exchange, so a transient failure (network, 5xx,
        malformed body) is retried inside this call: at most RETRY_ATTEMPTS requests
        within RETRY_BUDGET_SECONDS, with jittered exponential backoff. Rate limits and
        authentication failures are never retried here.
        """
        began = self._monotonic()
        for attempt in range(1, self.retry_attempts + 1):
            try:
                return self._fetch_balances_once()
            except (RateLimited, AuthError):
                raise
            except (ExchangeUnavailable, BadPayload) as error:
                delay = RETRY_BASE_SECONDS * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
                spent = self._monotonic() - began
                if attempt == self.retry_attempts or spent + delay > RETRY_BUDGET_SECONDS:
                    if attempt > 1:
                        error.args = (f"{error} (after {attempt} attempts)",)
                    raise
                log.info("%s: %s; retry %d in %.2fs", self.balance_path, type(error).__name__, attempt, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")

    def _fetch_balances_once(self) -> FetchedBalances:
        if self._offset_ms is None:
            self.sync_clock()
        try:
            response = self._signed_get(self.balance_path)
        except ClockSkew:
            # -1021: our clock or the offset drifted; Binance's advice is to resync and retry.
            log.warning("Binance rejected our timestamp (-1021): resyncing the clock and retrying once")
            self.sync_clock()
            response = self._signed_get(self.balance_path)
        self._auth_failures = 0
        if _looks_like_html(response):
            # A 200 HTML page comes from a proxy or CDN in front of Binance, not from the API.
            raise ExchangeUnavailable(
                f"{self.balance_path}: HTTP 200 with an HTML page instead of JSON{_html_title(response.text)}",
                http_status=200,
            )
        return parse_balances(response.content, endpoint=self.balance_path, used_weight=self.last_used_weight)

    def _signed_get(self, path: str) -> requests.Response:
        timestamp = round(self._wall_clock() * 1000) + (self._offset_ms or 0)
        query = urlencode({"recvWindow": self.recv_window, "timestamp": timestamp})
        # signature must be the last parameter, computed over exactly the bytes sent before it.
        signed = f"{query}&signature={self._sign(query)}"
        response = self._get(f"{path}?{signed}", path)
        return response

    def _get(self, path_and_query: str, path: str) -> requests.Response:
        """One GET with a timeout; every failure leaves as an ExchangeError naming only the path."""
        wait = self._blocked_until - self._monotonic()
        if wait > 0:
            if self._blocked_error is AuthError:
                raise AuthError(
                    f"{path}: not sent: waiting {wait:.0f}s more after {self._auth_failures} authentication "
                    "failure(s); fix BINANCE_API_KEY / BINANCE_API_SECRET and restart to retry now"
                )
            raise RateLimited(f"{path}: not sent: waiting {wait:.0f}s more for the rate limit", retry_after=wait)
        self._throttle(path)
        try:
            response = self._session.get(
                self.base_url + path_and_query, timeout=(CONNECT_TIMEOUT_SECONDS, self.timeout)
            )
        except requests.Timeout:
            # `from None`: the chained requests exception would print the signed URL.
            raise ExchangeUnavailable(f"{path}: no answer within {self.timeout:g}s (timeout)") from None
        except requests.ConnectionError as exc:
            raise ExchangeUnavailable(f"{path}: {_connection_problem(exc)}") from None
        except requests.RequestException as exc:
            raise ExchangeUnavailable(f"{path}: {type(exc).__name__} during the request") from None
        self.last_used_weight = _used_weight(response)
        self._weight_minute = self._server_minute()
        if response.status_code != 200:
            self._raise_for_status(response, path)
        return response

    def _server_minute(self) -> int:
        return (round(self._wall_clock() * 1000) + (self._offset_ms or 0)) // 60000

    def _throttle(self, path: str) -> None:
        """Refuse to send a request that would take the IP past WEIGHT_SAFETY of its minute budget."""
        if self.last_used_weight is None or self._weight_minute != self._server_minute():
            return  # Binance's weight window is the calendar minute: a new minute starts at zero.
        cost = REQUEST_WEIGHT.get(path.split("?", 1)[0], 10)
        if self.last_used_weight + cost <= self.weight_limit * WEIGHT_SAFETY:
            return
        server_ms = round(self._wall_clock() * 1000) + (self._offset_ms or 0)
        wait = 60 - (server_ms % 60000) / 1000 + 0.5
        self._blocked_until = self._monotonic() + wait
        self._blocked_error = RateLimited
        raise RateLimited(
            f"{path}: not sent: this IP used {self.last_used_weight} of {self.weight_limit} request weight "
            f"this minute; waiting {wait:.0f}s for the next minute instead of risking a 429",
            retry_after=wait,
        )

    def _raise_for_status(self, response: requests.Response, path: str) -> None:
        status = response.status_code
        code, message = _error_body(response)
        where = f"{path}: HTTP {status}" + (f" code {code}" if code is not None else "")
        detail = f"{where}: {message}"
        if status in (418, 429) or code == TOO_MANY_REQUESTS_CODE or status == 403:
            retry_after = _retry_after(response, message)
            self._blocked_until = self._monotonic() + retry_after
            self._blocked_error = RateLimited
            kind = "IP banned (418)" if status == 418 else "web application firewall (403)" if status == 403 else "rate limited"
            error: ExchangeError = RateLimited(
                f"{detail} [{kind}; no request for {retry_after:.0f}s]",
                retry_after=retry_after,
                http_status=status,
                code=code,
            )
        elif code in AUTH_CODES or status == 401:
            # Hammering with a rejected key helps nobody and can get the IP banned: back off hard.
            # The first failure may be a key being rotated, so the next tick still tries.
            self._auth_failures += 1
            backoff = (
                0.0
                if self._auth_failures == 1
                else min(AUTH_BACKOFF_SECONDS * 2 ** (self._auth_failures - 1), AUTH_BACKOFF_MAX_SECONDS)
            )
            self._blocked_until = self._monotonic() + backoff
            self._blocked_error = AuthError
            error = AuthError(
                f"{detail} [check BINANCE_API_KEY / BINANCE_API_SECRET, the key's IP whitelist and "
                f"that it may read futures data{f'; next attempt in {backoff:.0f}s' if backoff else ''}]",
                http_status=status,
                code=code,
            )
        elif code == CLOCK_CODE:
            error = ClockSkew(detail, http_status=status, code=code)
        elif status >= 500 or code is None:
            error = ExchangeUnavailable(detail, http_status=status, code=code)
        else:
            error = ExchangeError(detail, http_status=status, code=code)
        error.used_weight = self.last_used_weight  # type: ignore[attr-defined]
        raise error


def parse_balances(body: bytes | str, *, endpoint: str, used_weight: int | None = None) -> FetchedBalances:
    """Validate a /fapi/v2|v3/balance body into records; any defect raises BadPayload."""
    data = _decode(body, endpoint)
    if isinstance(data, dict) and "code" in data and "msg" in data:
        raise BadPayload(f"{endpoint}: error object instead of balances: code {_clip(data['code'])}: {_clip(data['msg'])}")
    if not isinstance(data, list):
        raise BadPayload(f"{endpoint}: expected a JSON array of assets, got {_json_type(data)}")
    if not data:
        raise BadPayload(f"{endpoint}: empty asset list (Binance always lists the account's assets)")
    assets: list[AssetBalance] = []
    aliases: set[str] = set()
    seen: set[str] = set()
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise BadPayload(f"{endpoint}: item {index} is {_json_type(row)}, not an object")
        asset = row.get("asset")
        if not isinstance(asset, str) or not _ASSET_NAME.fullmatch(asset):
            raise BadPayload(f"{endpoint}: item {index}: field 'asset' is missing or not an asset name: {_clip(asset)}")
        where = f"{endpoint}: asset {asset}"
        if asset in seen:
            raise BadPayload(f"{where}: listed twice")
        seen.add(asset)
        alias = row.get("accountAlias")
        if not isinstance(alias, str) or len(alias) > 64:
            raise BadPayload(f"{where}: field 'accountAlias' is missing or not a string")
        aliases.add(alias)
        amounts = {name: _decimal_field(row, key, where) for key, name in _DECIMAL_FIELDS.items()}
        margin_available = row.get("marginAvailable", _MISSING)
        if margin_available is _MISSING:
            raise BadPayload(f"{where}: field 'marginAvailable' is missing")
        if not isinstance(margin_available, bool):
            raise BadPayload(f"{where}: field 'marginAvailable' must be true or false, got {_clip(margin_available)}")
        update_time = row.get("updateTime", _MISSING)
        if update_time is _MISSING:
            raise BadPayload(f"{where}: field 'updateTime' is missing")
        if not isinstance(update_time, int) or isinstance(update_time, bool) or not 0 <= update_time <= _MAX_UPDATE_TIME_MS:
            raise BadPayload(f"{where}: field 'updateTime' must be epoch milliseconds, got {_clip(update_time)}")
        assets.append(
            AssetBalance(
                asset=asset,
                margin_available=margin_available,
                update_time=_EPOCH + timedelta(milliseconds=update_time),
                **amounts,
            )
        )
    if len(aliases) != 1:
        raise BadPayload(f"{endpoint}: assets report {len(aliases)} different accountAlias values")
    return FetchedBalances(
        account_alias=aliases.pop(), assets=tuple(assets), endpoint=endpoint, used_weight=used_weight
    )


_MISSING = object()


def _decimal_field(row: dict[str, Any], key: str, where: str) -> Decimal:
    value = row.get(key, _MISSING)
    if value is _MISSING:
        raise BadPayload(f"{where}: field {key!r} is missing")
    if not isinstance(value, str):
        raise BadPayload(f"{where}: field {key!r} must be a decimal string, got {_json_type(value)} {_clip(value)}")
    if not _DECIMAL_TEXT.fullmatch(value):
        raise BadPayload(f"{where}: field {key!r} is not a plain decimal: {_clip(value)}")
    return Decimal(value)


def _decode(body: bytes | str, endpoint: str) -> Any:
    text = body
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadPayload(f"{endpoint}: response is not UTF-8 text") from None
    if text.lstrip()[:1] == "<":
        raise BadPayload(f"{endpoint}: HTML page instead of JSON{_html_title(text)}")
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise BadPayload(f"{endpoint}: malformed JSON ({_clip(reason)})") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _error_body(response: requests.Response) -> tuple[int | None, str]:
    """Binance's {"code": -N, "msg": "..."}; for HTML or other bodies, a short description."""
    text = response.text[:20000]
    if _looks_like_html(response):
        return None, f"HTML page instead of JSON{_html_title(text)}"
    try:
        data = json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant)
    except ValueError:
        return None, f"non-JSON body: {_clip(text)}" if text.strip() else "empty body"
    if isinstance(data, dict):
        code = data.get("code")
        message = data.get("msg")
        if isinstance(code, int) and not isinstance(code, bool):
            return code, _clip(message) if message is not None else "(no msg)"
    return None, f"unexpected body: {_clip(text)}"


def _looks_like_html(response: requests.Response) -> bool:
    return "html" in response.headers.get("Content-Type", "").lower() or response.content.lstrip()[:1] == b"<"


def _html_title(text: str) -> str:
    # Only the head of the page: a regex over a huge hostile body would take seconds.
    head = text[:4096]
    start = head.lower().find("<title")
    opened = head.find(">", start) if start >= 0 else -1
    end = head.lower().find("</title>", opened) if opened >= 0 else -1
    return f" ({_clip(' '.join(head[opened + 1:end].split()))})" if end >= 0 else ""


def _retry_after(response: requests.Response, message: str) -> float:
    header = response.headers.get("Retry-After", "")
    try:
        seconds = float(header)
        if seconds >= 0 and seconds == seconds:
            return max(seconds, 1.0)
    except ValueError:
        pass
    banned = _BANNED_UNTIL.search(message)
    if banned:
        return max(int(banned.group(1)) / 1000 - time.time(), 1.0)
    return DEFAULT_RETRY_AFTER.get(response.status_code, 60.0)


def _used_weight(response: requests.Response) -> int | None:
    value = response.headers.get(USED_WEIGHT_HEADER)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _connection_problem(exc: requests.ConnectionError) -> str:
    """Name the network failure without the exception text, which carries the signed URL."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ConnectionResetError):
            return "connection reset by the exchange"
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if type(current).__name__ == "RemoteDisconnected":
            return "the exchange closed the connection without answering"
        if type(current).__name__ in ("NameResolutionError", "gaierror"):
            return "cannot resolve the exchange's host name"
        if "SSL" in type(current).__name__:
            return "TLS error (certificate or handshake)"
        pending.extend([current.__cause__, current.__context__, *[a for a in current.args if isinstance(a, BaseException)]])
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            pending.append(reason)
    return "connection failed"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, Decimal, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _clip(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 3] + "..."
