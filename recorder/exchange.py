"""BinanceFuturesClient: clock sync, signing, HTTP, error translation, JSON -> records.

Everything Binance-specific (camelCase names, error codes, headers) stays in this module;
third-party exceptions are translated here exactly once into the recorder.errors tree.
Binance's rules come from ../shared/binance-api.md (general-info, error-code pages).

The exchange is not trusted: requests go only to the configured host (no redirect is followed),
`timeout` bounds a whole request (connect, headers and body), bodies are size-capped, waits an
answer asks for are capped at an hour, and text it sends is cleaned before it reaches a message.
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import json
import logging
import random
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import ProxyManager

from recorder.config import Settings, is_loopback
from recorder.errors import (
    AuthError,
    BadPayload,
    ClockSkew,
    ExchangeError,
    ExchangeUnavailable,
    RateLimited,
)
from recorder.records import AssetBalance, FetchedBalances, FetchedIncome, IncomeRecord
from recorder.signing import Signer, hmac_signer, key_signer, read_private_file, sign_hmac

__all__ = ["BinanceFuturesClient", "parse_balances", "parse_income", "sign_hmac"]

log = logging.getLogger(__name__)

SERVER_TIME_PATH = "/fapi/v1/time"
# On the spot host (api.binance.com): the key's permissions, for the read-only check at start.
API_RESTRICTIONS_PATH = "/sapi/v1/account/apiRestrictions"
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
# Binance's balance answer is a few KB; the cap only stops a hostile or broken server filling memory.
MAX_BODY_BYTES = 8 * 1024 * 1024
# Of an error answer only the head is read: enough for Binance's {"code", "msg"} or an HTML title.
MAX_ERROR_BODY_BYTES = 64 * 1024
_BODY_CHUNK_BYTES = 64 * 1024
_MAX_TEMPLATES = 16
# The longest wait an answer can impose (Retry-After, a ban's end, auth backoff). A longer one is
# more likely a broken or hostile value than an instruction, and would silence the recorder for good.
MAX_WAIT_SECONDS = 3600.0
# A used-weight count above this is not one (IP limits are a few thousand per minute).
MAX_USED_WEIGHT = 1_000_000
# Binance error codes are small negative numbers; one outside 32 bits is not a Binance code.
_CODE_RANGE = range(-(2**31), 2**31)

# Binance sends amounts as plain decimal strings ("-12.50000000"); anything else
# ("1E-8", "NaN", " 1", "12.3.4") is a malformed payload, not something to guess at.
_DECIMAL_TEXT = re.compile(r"-?[0-9]{1,40}(\.[0-9]{1,40})?")
_ASSET_NAME = re.compile(r"[A-Za-z0-9]{1,32}")
_MAX_UPDATE_TIME_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_BANNED_UNTIL = re.compile(r"banned until ([0-9]{13})(?![0-9])")
# RFC 9110 delay-seconds (digits; a decimal fraction is tolerated). "inf", "nan", "-5", "1e300" are not.
_DELAY_SECONDS = re.compile(r"[0-9]{1,15}(\.[0-9]{1,9})?")
_PLAIN_COUNT = re.compile(r"[0-9]{1,15}")
# Bounded so int() of a hostile header stays cheap.
_REPORTED_COUNT = re.compile(r"[0-9]{1,40}")
_HOST_NAME = re.compile(r"[A-Za-z0-9.-]{1,253}|[0-9A-Fa-f:.]{2,45}")

_DECIMAL_FIELDS = {
    "balance": "balance",
    "crossWalletBalance": "cross_wallet_balance",
    "crossUnPnl": "cross_un_pnl",
    "availableBalance": "available_balance",
    "maxWithdrawAmount": "max_withdraw_amount",
}


# IP weight of each request (binance-api.md section 1: v2 balance went 5 -> 10 in 2024).
REQUEST_WEIGHT = {SERVER_TIME_PATH: 1, "/fapi/v2/balance": 10, "/fapi/v3/balance": 5, "/fapi/v1/income": 30}
INCOME_PATH = "/fapi/v1/income"
# Binance's most entries per income page (binance-api.md section 6).
MAX_INCOME_LIMIT = 1000
# Stop sending before this share of the per-minute limit is used, so a 429 never happens.
WEIGHT_SAFETY = 0.9
# Bounded retries inside one poll, for failures where a second read is safe (a GET changes nothing).
RETRY_ATTEMPTS = 3
RETRY_BUDGET_SECONDS = 5.0
RETRY_BASE_SECONDS = 0.25
# After an authentication failure, wait this long, doubling per failure up to an hour.
AUTH_BACKOFF_SECONDS = 60.0
AUTH_BACKOFF_MAX_SECONDS = MAX_WAIT_SECONDS
# No retry starts with less than this (or the timeout, if shorter) left of the call's time.
MIN_ATTEMPT_SECONDS = 0.5


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
        if not 0 < timeout <= 86400:  # also refuses NaN and infinity: a deadline must be one
            raise ValueError(f"timeout must be a number of seconds from 0 to 86400, not {timeout!r}")
        self.base_url = base_url.rstrip("/")
        self.balance_path = balance_path
        self.recv_window = recv_window
        self.timeout = timeout
        self.weight_limit = weight_limit
        self.retry_attempts = max(1, retry_attempts)
        self._sign = signer
        self._session = _confine(session or requests.Session())
        self._session.headers["X-MBX-APIKEY"] = api_key
        # Certificates are always verified; there is deliberately no setting to turn it off.
        self._session.verify = True
        # A proxy environment variable must not silently reroute signed requests
        # to the simulator on this machine. Elsewhere HTTPS_PROXY stays honoured (corporate
        # networks need it; over verified TLS a proxy sees the host name only), but .netrc never:
        # _confine() gives the session an auth that adds nothing.
        if is_loopback(urlsplit(self.base_url).hostname or ""):
            self._session.trust_env = False
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._offset_ms: int | None = None
        # time.monotonic() by which the current fetch_balances() call ends; None outside one.
        self._poll_ends_at: float | None = None
        # No request before this monotonic time; the error to raise meanwhile says why.
        self._blocked_until: float = 0.0
        self._blocked_error: type[ExchangeError] = RateLimited
        self._auth_failures = 0
        self.last_used_weight: int | None = None
        # The header as sent when it is a plain count of any size, for the poll log: storage
        # keeps it, or stores NULL with the reason when its column cannot hold it.
        self.last_reported_weight: int | None = None
        self._weight_minute: int | None = None
        # A prepared GET per base URL and path (a handful), see _prepared().
        self._templates: dict[str, requests.PreparedRequest] = {}
        # The last balance body and what it parsed into: an idle account's body is the same
        # bytes poll after poll, and parsing is a pure function of them (see _parse_balances);
        # and each asset's last row, for a body where only some assets changed.
        self._last_balances: tuple[bytes, FetchedBalances] | None = None
        self._known_rows: dict[str, KnownRows] = {}

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

    def adopt_clock_offset(self, offset_ms: int) -> None:
        """Sign with an offset another client of the same exchange measured, sparing a GET /fapi/v1/time.

        A -1021 still resyncs this client's own clock.
        """
        self._offset_ms = offset_ms

    def sync_clock(self) -> int:
        """Measure the server clock offset with GET /fapi/v1/time (midpoint of the round trip)."""
        before = self._wall_clock()
        response = self._get(SERVER_TIME_PATH, SERVER_TIME_PATH)
        after = self._wall_clock()
        body = _decode(response.content, SERVER_TIME_PATH)
        server_time = body.get("serverTime") if isinstance(body, dict) else None
        if not isinstance(server_time, int) or isinstance(server_time, bool):
            raise BadPayload(f"{SERVER_TIME_PATH}: 'serverTime' is not an integer", http_status=response.status_code)
        if not 0 < server_time <= _MAX_UPDATE_TIME_MS:
            # Every signed timestamp would carry this offset: an absurd clock is refused, not adopted.
            raise BadPayload(
                f"{SERVER_TIME_PATH}: 'serverTime' {_clip(server_time)} is not a plausible epoch-ms time",
                http_status=response.status_code,
            )
        self._offset_ms = server_time - round((before + after) * 500)
        log.debug("server clock offset %d ms", self._offset_ms)
        return self._offset_ms

    def fetch_balances(self) -> FetchedBalances:
        """GET the balance endpoint, signed; return every asset, validated, or raise.

        A read changes nothing on the exchange, so a transient failure (network, 5xx,
        malformed body) is retried inside this call: at most RETRY_ATTEMPTS requests
        within RETRY_BUDGET_SECONDS, with jittered exponential backoff. Rate limits and
        authentication failures are never retried here. The whole call, clock sync and
        retries included, ends within max(timeout, RETRY_BUDGET_SECONDS): each request's
        deadline is cut to what is left of it.
        """
        began = self._monotonic()
        self._poll_ends_at = time.monotonic() + max(RETRY_BUDGET_SECONDS, self.timeout)
        try:
            for attempt in range(1, self.retry_attempts + 1):
                try:
                    return self._fetch_balances_once()
                except (RateLimited, AuthError):
                    raise
                except (ExchangeUnavailable, BadPayload) as error:
                    delay = RETRY_BASE_SECONDS * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
                    spent = self._monotonic() - began
                    left = self._poll_ends_at - time.monotonic() - delay
                    if (
                        attempt == self.retry_attempts
                        or spent + delay > RETRY_BUDGET_SECONDS
                        or left < min(self.timeout, MIN_ATTEMPT_SECONDS)
                    ):
                        if attempt > 1:
                            error.args = (f"{error} (after {attempt} attempts)",)
                        raise
                    log.info("%s: %s; retry %d in %.2fs", self.balance_path, type(error).__name__, attempt, delay)
                    self._sleep(delay)
            raise AssertionError("unreachable")
        finally:
            self._poll_ends_at = None

    def fetch_api_restrictions(self, spot_base_url: str) -> dict[str, bool]:
        """GET /sapi/v1/account/apiRestrictions (SIGNED, weight 1) on the spot host: the key's permissions.

        Binance's names are kept (enableReading, enableWithdrawals...): only the boolean ones.
        Sent like every other request (signed with the futures clock offset, no redirect, the
        same deadline and error mapping), but its weight counts against the spot API's budget,
        not the futures one, so this client's futures weight and backoff state are left as found.
        """
        if self._offset_ms is None:
            self.sync_clock()
        timestamp = round(self._wall_clock() * 1000) + (self._offset_ms or 0)
        query = urlencode({"recvWindow": self.recv_window, "timestamp": timestamp})
        saved = (self._blocked_until, self._blocked_error, self._auth_failures)
        try:
            response = self._send(f"{API_RESTRICTIONS_PATH}?{query}&signature={self._sign(query)}",
                                  API_RESTRICTIONS_PATH, base_url=spot_base_url.rstrip("/"))
            if 300 <= response.status_code < 400:
                raise ExchangeUnavailable(
                    f"{API_RESTRICTIONS_PATH}: HTTP {response.status_code} redirect, not followed",
                    http_status=response.status_code,
                )
            if response.status_code != 200:
                self._raise_for_status(response, API_RESTRICTIONS_PATH)
        finally:
            self._blocked_until, self._blocked_error, self._auth_failures = saved
        body = _decode(response.content, API_RESTRICTIONS_PATH)
        if not isinstance(body, dict) or not isinstance(body.get("enableReading"), bool):
            raise BadPayload(f"{API_RESTRICTIONS_PATH}: no boolean 'enableReading' in the answer", http_status=200)
        return {name: value for name, value in body.items() if isinstance(name, str) and isinstance(value, bool)}

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
        return self._parse_balances(response.content)

    def _parse_balances(self, body: bytes) -> FetchedBalances:
        """parse_balances(body), reusing the last result when the body is byte for byte the last one.

        The same bytes validate the same way and make the same records, so an idle account's
        poll skips JSON decoding and validation (and, since its records are the same objects,
        storage's checks and comparisons, recorder.store.HeadCache). Only the weight header is new.
        """
        last = self._last_balances
        if last is not None and last[0] == body and last[1].endpoint == self.balance_path:
            parsed = last[1]
        else:
            self._last_balances = None
            known_rows = self._known_rows.setdefault(self.balance_path, {})
            parsed = parse_balances(body, endpoint=self.balance_path, known_rows=known_rows)
            self._last_balances = (body, parsed)
        return FetchedBalances(parsed.account_alias, parsed.assets, parsed.endpoint, self.last_reported_weight)

    def fetch_income(
        self, start_ms: int, end_ms: int, limit: int = MAX_INCOME_LIMIT, *, page: int | None = None
    ) -> FetchedIncome:
        """GET /fapi/v1/income for [start_ms, end_ms] (both inclusive, epoch ms), signed; one validated page.

        No retry here: the ledger sync records a failed window and the next sync fetches it again.
        `page` (1-based) is Binance's undocumented page number, used only to read past the first
        `limit` entries of a single millisecond, where paging by time cannot advance.
        """
        if not 1 <= limit <= MAX_INCOME_LIMIT:
            raise ValueError(f"limit must be 1 to {MAX_INCOME_LIMIT}, not {limit!r}")
        if not 0 <= start_ms <= end_ms <= _MAX_UPDATE_TIME_MS:
            raise ValueError(f"need 0 <= start_ms <= end_ms, not {start_ms!r}..{end_ms!r}")
        params: dict[str, int | str] = {"startTime": start_ms, "endTime": end_ms, "limit": limit}
        if page is not None:
            params["page"] = page
        if self._offset_ms is None:
            self.sync_clock()
        try:
            response = self._signed_get(INCOME_PATH, params)
        except ClockSkew:
            log.warning("Binance rejected our timestamp (-1021): resyncing the clock and retrying once")
            self.sync_clock()
            response = self._signed_get(INCOME_PATH, params)
        self._auth_failures = 0
        if _looks_like_html(response):
            raise ExchangeUnavailable(
                f"{INCOME_PATH}: HTTP 200 with an HTML page instead of JSON{_html_title(response.text)}",
                http_status=200,
            )
        return parse_income(response.content, used_weight=self.last_reported_weight)

    def weight_wait(self, cost: int) -> float:
        """Seconds to wait before a request of weight `cost` fits under WEIGHT_SAFETY of this IP's minute; 0 if now.

        The same headroom rule _throttle() enforces, asked before sending instead of refused after.
        """
        if self.last_used_weight is None or self._weight_minute != self._server_minute():
            return 0.0
        if self.last_used_weight + cost <= self.weight_limit * WEIGHT_SAFETY:
            return 0.0
        server_ms = round(self._wall_clock() * 1000) + (self._offset_ms or 0)
        return 60 - (server_ms % 60000) / 1000 + 0.5

    def _signed_get(self, path: str, params: Mapping[str, int | str] | None = None) -> _Answer:
        timestamp = round(self._wall_clock() * 1000) + (self._offset_ms or 0)
        query = urlencode({**(params or {}), "recvWindow": self.recv_window, "timestamp": timestamp})
        # signature must be the last parameter, computed over exactly the bytes sent before it.
        signed = f"{query}&signature={self._sign(query)}"
        response = self._get(f"{path}?{signed}", path)
        return response

    def _get(self, path_and_query: str, path: str) -> _Answer:
        """One GET to the configured host; every failure leaves as an ExchangeError naming only the path."""
        wait = self._blocked_until - self._monotonic()
        if wait > 0:
            if self._blocked_error is AuthError:
                raise AuthError(
                    f"{path}: not sent: waiting {wait:.0f}s more after {self._auth_failures} authentication "
                    "failure(s); fix BINANCE_API_KEY / BINANCE_API_SECRET and restart to retry now"
                )
            raise RateLimited(f"{path}: not sent: waiting {wait:.0f}s more for the rate limit", retry_after=wait)
        self._throttle(path)
        response = self._send(path_and_query, path)
        self.last_used_weight = _used_weight(response.headers)
        self.last_reported_weight = _reported_weight(response.headers)
        self._weight_minute = self._server_minute()
        if 300 <= response.status_code < 400:
            # A redirect would carry the API key and the signed query to whatever host it names.
            raise ExchangeUnavailable(
                f"{path}: HTTP {response.status_code} redirect{_redirect_target(response.headers.get('Location'))}"
                f", not followed (recorder sends requests only to {self.base_url})",
                http_status=response.status_code,
            )
        if response.status_code != 200:
            self._raise_for_status(response, path)
        return response

    def _send(self, path_and_query: str, path: str, base_url: str | None = None) -> _Answer:
        """The HTTP exchange itself: one GET, the whole of it (body included) within `timeout` seconds."""
        seconds = self.timeout
        if self._poll_ends_at is not None:
            seconds = max(min(seconds, self._poll_ends_at - time.monotonic()), 0.001)
        deadline = _Deadline(seconds)
        _current.deadline = deadline
        response: requests.Response | None = None
        reusable = False
        try:
            deadline.start()
            request = self._prepared(base_url or self.base_url, path_and_query)
            session = self._session
            # What Session.request adds to send(): proxies, CA bundle and cert from the environment
            # (when the session trusts it) merged with the session's own settings.
            settings = session.merge_environment_settings(request.url, {}, True, None, None)
            response = session.send(
                request, timeout=(min(CONNECT_TIMEOUT_SECONDS, seconds), seconds), allow_redirects=False, **settings
            )
            status = response.status_code
            content = b"" if 300 <= status < 400 else _read_body(response, path, deadline)
            if deadline.expired:
                # A close-delimited body "ends" cleanly when the deadline shuts the socket.
                raise ExchangeUnavailable(f"{path}: {_deadline_problem(seconds)}")
            reusable = status == 200
            return _Answer(status, response.headers, content)
        except ExchangeError:
            raise
        except Exception as exc:  # noqa: BLE001 - the one boundary where the HTTP stack's errors are translated
            # `from None`: the chained exception's text would carry the signed URL.
            problem = _deadline_problem(seconds) if deadline.expired else _http_problem(exc, seconds)
            raise ExchangeUnavailable(f"{path}: {problem}") from None
        finally:
            _current.deadline = None
            deadline.finish()
            if response is not None:
                if not reusable:
                    # Only a 200 read whole goes back to the pool: after a half-read, timed-out,
                    # redirected or interim (1xx) answer the stream's position is not trustworthy.
                    response.raw.close()
                response.close()

    def _prepared(self, base_url: str, path_and_query: str) -> requests.PreparedRequest:
        """The GET of `path_and_query` as Session.request would prepare it, from a template per path.

        Session.prepare_request merges headers, cookies, auth and hooks and parses the URL on
        every call (a fifth of a poll's request CPU); only the query changes between two polls of
        a path, and it is already percent-encoded ASCII that preparing the URL would leave as is.
        Cookies a server sets are not sent back: Binance's API uses none.
        """
        prefix, mark, query = (base_url + path_and_query).partition("?")
        template = self._templates.get(prefix)
        if template is None:
            template = self._session.prepare_request(requests.Request("GET", prefix))
            if len(self._templates) < _MAX_TEMPLATES:
                self._templates[prefix] = template
        request = template.copy()
        request.url = f"{template.url}{mark}{query}"
        return request

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

    def _server_seconds(self) -> float:
        return self._wall_clock() + (self._offset_ms or 0) / 1000

    def _raise_for_status(self, response: _Answer, path: str) -> None:
        status = response.status_code
        code, message = _error_body(response)
        where = f"{path}: HTTP {status}" + (f" code {code}" if code is not None else "")
        detail = f"{where}: {message}"
        if status in (418, 429) or code == TOO_MANY_REQUESTS_CODE or status == 403:
            retry_after = _retry_after(response, message, self._server_seconds())
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
            # The exponent is capped too: 2 ** n as a float overflows after ~1000 failures.
            backoff = (
                0.0
                if self._auth_failures == 1
                else min(AUTH_BACKOFF_SECONDS * 2 ** min(self._auth_failures - 1, 32), AUTH_BACKOFF_MAX_SECONDS)
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
        error.used_weight = self.last_reported_weight  # type: ignore[attr-defined]
        raise error


def parse_balances(
    body: bytes | str, *, endpoint: str, used_weight: int | None = None, known_rows: KnownRows | None = None
) -> FetchedBalances:
    """Validate a /fapi/v2|v3/balance body into records; any defect raises BadPayload.

    `known_rows` (kept by the caller between calls, filled here) maps each asset to the row it
    came in last time and the record made of it: a row equal to it again, with the same types
    where JSON equality would mix them (true and 1, 1 and 1.0), validates the same way, so it
    gives the very same record (which lets storage skip its own checks, recorder.store).
    """
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
    known_amounts = _KNOWN_AMOUNTS
    rows_now: KnownRows = {}
    for index, row in enumerate(data):
        if known_rows is not None and type(row) is dict:
            asset = row.get("asset")
            known = known_rows.get(asset) if type(asset) is str else None
            # Every other field of a valid row is a string, and a string equals only a string.
            if (known is not None and known[0] == row and type(row.get("marginAvailable")) is bool
                    and type(row.get("updateTime")) is int):
                if asset in seen:
                    raise BadPayload(f"{endpoint}: asset {asset}: listed twice")
                seen.add(asset)
                aliases.add(row["accountAlias"])
                assets.append(known[1])
                rows_now[asset] = known
                continue
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
        if type(alias) is not str or alias not in aliases:
            if not isinstance(alias, str):
                raise BadPayload(f"{where}: field 'accountAlias' is missing or not a string")
            if not 0 < len(alias) <= 64 or not alias.isprintable():
                # An alias is the account's identity: refused, never cleaned into another one.
                raise BadPayload(f"{where}: field 'accountAlias' is not 1 to 64 printable characters: {_clip(alias)}")
            aliases.add(alias)
        fields: dict[str, Any] = {"asset": asset}
        for key, name in _DECIMAL_FIELD_ITEMS:
            # An amount text seen before was validated then: one dict lookup instead of the
            # pattern and Decimal() (zeros and unchanged balances repeat on every poll).
            value = row.get(key)
            amount = known_amounts.get(value) if type(value) is str else None
            if amount is None:
                amount = _decimal_field(row, key, where)
                if len(known_amounts) >= _KNOWN_AMOUNTS_MAX:
                    known_amounts.clear()
                known_amounts[value] = amount
            fields[name] = amount
        margin_available = row.get("marginAvailable", _MISSING)
        if type(margin_available) is not bool:
            if margin_available is _MISSING:
                raise BadPayload(f"{where}: field 'marginAvailable' is missing")
            raise BadPayload(f"{where}: field 'marginAvailable' must be true or false, got {_clip(margin_available)}")
        fields["margin_available"] = margin_available
        update_time = row.get("updateTime", _MISSING)
        if type(update_time) is not int or not 0 <= update_time <= _MAX_UPDATE_TIME_MS:
            if update_time is _MISSING:
                raise BadPayload(f"{where}: field 'updateTime' is missing")
            raise BadPayload(f"{where}: field 'updateTime' must be epoch milliseconds, got {_clip(update_time)}")
        fields["update_time"] = _EPOCH + timedelta(milliseconds=update_time)
        record = _asset_balance(fields)
        assets.append(record)
        rows_now[asset] = (row, record)
    if len(aliases) != 1:
        raise BadPayload(f"{endpoint}: assets report {len(aliases)} different accountAlias values")
    if known_rows is not None:
        known_rows.clear()
        known_rows.update(rows_now)
    return FetchedBalances(
        account_alias=aliases.pop(), assets=tuple(assets), endpoint=endpoint, used_weight=used_weight
    )


# An asset's row as it came (parsed JSON) and the record made of it; see parse_balances.
KnownRows = dict[str, tuple[dict[str, Any], AssetBalance]]
_MISSING = object()
_DECIMAL_FIELD_ITEMS = tuple(_DECIMAL_FIELDS.items())
# Amount texts already validated, with their Decimal (immutable, so shared safely); bounded.
_KNOWN_AMOUNTS: dict[str, Decimal] = {}
_KNOWN_AMOUNTS_MAX = 4096


def _asset_balance(fields: dict[str, Any]) -> AssetBalance:
    """An AssetBalance from every one of its fields, already validated.

    A frozen dataclass's __init__ sets each field through object.__setattr__ (~4 us an asset,
    half of parsing a poll); filling the instance's __dict__ makes the same object.
    """
    balance = _new_object(AssetBalance)
    balance.__dict__.update(fields)
    return balance


_new_object = object.__new__


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


def _error_body(response: _Answer) -> tuple[int | None, str]:
    """Binance's {"code": -N, "msg": "..."}; for HTML or other bodies, a short description."""
    text = response.text[:20000]
    if _looks_like_html(response):
        return None, f"HTML page instead of JSON{_html_title(text)}"
    try:
        data = json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return None, f"non-JSON body: {_clip(text)}" if text.strip() else "empty body"
    if isinstance(data, dict):
        code = data.get("code")
        message = data.get("msg")
        if isinstance(code, int) and not isinstance(code, bool):
            detail = _clip(message) if message is not None else "(no msg)"
            if code not in _CODE_RANGE:
                return None, f"error code {_clip(code)} out of range: {detail}"
            return code, detail
    return None, f"unexpected body: {_clip(text)}"


def _looks_like_html(response: _Answer) -> bool:
    return "html" in response.headers.get("Content-Type", "").lower() or response.content.lstrip()[:1] == b"<"


def _html_title(text: str) -> str:
    # Only the head of the page: a regex over a huge hostile body would take seconds.
    head = text[:4096]
    start = head.lower().find("<title")
    opened = head.find(">", start) if start >= 0 else -1
    end = head.lower().find("</title>", opened) if opened >= 0 else -1
    return f" ({_clip(' '.join(head[opened + 1:end].split()))})" if end >= 0 else ""


def _retry_after(response: _Answer, message: str, server_now: float) -> float:
    """Seconds to send nothing, from Retry-After, else the ban's end in the message, else the default.

    Parsed strictly and capped at MAX_WAIT_SECONDS; server_now is the exchange's clock (epoch s).
    """
    header = response.headers.get("Retry-After")
    if header is not None:
        seconds = _parse_retry_after(header, server_now)
        if seconds is not None:
            return _bounded_wait(seconds, f"Retry-After {_clip(header)}")
        log.warning("ignoring Retry-After %s: neither a number of seconds nor an HTTP date", _clip(header))
    banned = _BANNED_UNTIL.search(message)
    if banned:
        return _bounded_wait(int(banned.group(1)) / 1000 - server_now, "the ban's end")
    return DEFAULT_RETRY_AFTER.get(response.status_code, 60.0)


def _parse_retry_after(value: str, server_now: float) -> float | None:
    """RFC 9110 Retry-After: delay-seconds or an HTTP-date; None for anything else."""
    text = value.strip()
    if _DELAY_SECONDS.fullmatch(text):
        return float(text)
    try:
        when = parsedate_to_datetime(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)  # RFC 5322 "-0000": UTC, origin unknown
        return when.timestamp() - server_now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _bounded_wait(seconds: float, source: str) -> float:
    """At least a second, at most MAX_WAIT_SECONDS; a cut is logged, since the exchange asked for more."""
    if seconds > MAX_WAIT_SECONDS:
        log.warning("%s asks for a %.0f s wait; waiting the maximum of %.0f s instead",
                    source, seconds, MAX_WAIT_SECONDS)
        return MAX_WAIT_SECONDS
    return max(seconds, 1.0)


def _used_weight(headers: Mapping[str, str]) -> int | None:
    """X-MBX-USED-WEIGHT-1M as a count; None (unknown, so no throttling on it) unless a plain count."""
    value = headers.get(USED_WEIGHT_HEADER)
    if value is None:
        return None
    text = value.strip()
    if _PLAIN_COUNT.fullmatch(text) and int(text) <= MAX_USED_WEIGHT:
        return int(text)
    log.info("ignoring %s %s: not a count from 0 to %d, so this IP's used weight is unknown",
             USED_WEIGHT_HEADER, _clip(value), MAX_USED_WEIGHT)
    return None


def _reported_weight(headers: Mapping[str, str]) -> int | None:
    """X-MBX-USED-WEIGHT-1M as the exchange sent it, when a plain count of up to 40 digits."""
    text = (headers.get(USED_WEIGHT_HEADER) or "").strip()
    return int(text) if _REPORTED_COUNT.fullmatch(text) else None


def _redirect_target(location: str | None) -> str:
    """Where a 3xx points, as scheme://host[:port] only: its path and query may carry our signed query."""
    if location is None:
        return " without a Location"
    try:
        parts = urlsplit(location.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return " with a malformed Location"
    if not parts.netloc and not parts.scheme:
        return " to a path on the same host"
    if parts.scheme not in ("http", "https", "") or not host or not _HOST_NAME.fullmatch(host):
        return " with a malformed Location"
    shown = f"[{host}]" if ":" in host else host
    scheme = f"{parts.scheme}:" if parts.scheme else ""  # "//host/..." keeps the current scheme
    return f" to {scheme}//{shown}{f':{port}' if port is not None else ''}"


def _deadline_problem(timeout: float) -> str:
    return f"no complete answer within {round(timeout, 1):g}s (timeout)"


def _http_problem(exc: BaseException, timeout: float) -> str:
    """Name an HTTP-layer failure without the exception's text, which can carry the signed URL."""
    chain = _exception_chain(exc)
    for matches, problem in _HTTP_PROBLEMS:
        if any(matches(current) for current in chain):
            return problem.format(timeout=round(timeout, 1))
    return f"{type(exc).__name__} during the request"


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """exc and every exception it wraps (cause, context, args, urllib3's .reason), outermost first."""
    seen: set[int] = set()
    chain: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        chain.append(current)
        reason = getattr(current, "reason", None)
        wrapped = [a for a in current.args if isinstance(a, BaseException)]
        pending.extend([current.__cause__, current.__context__, *wrapped,
                        reason if isinstance(reason, BaseException) else None])
    return chain


def _named(*names: str) -> Callable[[BaseException], bool]:
    return lambda exc: type(exc).__name__ in names


# The first rule that matches anything in the chain names the problem; the most specific come first.
_HTTP_PROBLEMS: list[tuple[Callable[[BaseException], bool], str]] = [
    # RemoteDisconnected is a ConnectionResetError too, so it comes first.
    (lambda e: isinstance(e, http.client.RemoteDisconnected), "the exchange closed the connection without answering"),
    (lambda e: isinstance(e, ConnectionResetError), "connection reset by the exchange"),
    (lambda e: isinstance(e, ConnectionRefusedError), "connection refused"),
    # urllib3's NewConnectionError subclasses ConnectTimeoutError for history's sake: not a timeout.
    (lambda e: isinstance(e, (TimeoutError, requests.Timeout, urllib3.exceptions.TimeoutError))
     and not isinstance(e, urllib3.exceptions.NewConnectionError),
     "no answer within {timeout:g}s (timeout)"),
    (lambda e: isinstance(e, urllib3.exceptions.InvalidChunkLength), "the body's chunked encoding is broken"),
    (lambda e: isinstance(e, (http.client.IncompleteRead, urllib3.exceptions.IncompleteRead)),
     "the answer ended before its declared length"),
    (lambda e: isinstance(e, http.client.LineTooLong), "an HTTP status or header line is too long"),
    (lambda e: isinstance(e, (requests.exceptions.ContentDecodingError, urllib3.exceptions.DecodeError)),
     "the body cannot be decoded (Content-Encoding)"),
    (lambda e: isinstance(e, requests.exceptions.ChunkedEncodingError), "the body's chunked encoding is broken"),
    (_named("NameResolutionError", "gaierror"), "cannot resolve the exchange's host name"),
    (lambda e: "SSL" in type(e).__name__ or "Certificate" in type(e).__name__, "TLS error (certificate or handshake)"),
    (lambda e: isinstance(e, (requests.exceptions.InvalidURL, requests.exceptions.InvalidHeader,
                              requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema,
                              urllib3.exceptions.LocationValueError)),
     "the request URL or a header is invalid"),
    (lambda e: isinstance(e, requests.exceptions.TooManyRedirects), "a redirect, not followed"),
    (lambda e: isinstance(e, (http.client.HTTPException, urllib3.exceptions.ProtocolError)),
     "a malformed HTTP answer"),
    (lambda e: isinstance(e, UnicodeEncodeError), "a request header is not Latin-1 text (check BINANCE_API_KEY)"),
    (lambda e: isinstance(e, UnicodeError), "undecodable bytes in the HTTP answer"),
    (lambda e: isinstance(e, (requests.ConnectionError, OSError)), "connection failed"),
]


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
    """Text the exchange controls, fit for one line of a log, a message or a database column.

    Whitespace runs fold to one space; other unprintable characters (NUL, escape sequences,
    bidi overrides) show as Python escapes (`\\x00`, `\\u202e`); at most MAX_ERROR_TEXT characters.
    """
    if isinstance(value, str):
        text = value
    else:
        try:
            text = repr(value)
        except ValueError:  # an int past Python's digit limit
            text = f"<{type(value).__name__} too long to show>"
    window = MAX_ERROR_TEXT * 4
    text = " ".join(text[:window].split()) + (" ..." if len(text) > window else "")
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 3] + "..."


@dataclass(frozen=True)
class _Answer:
    """An HTTP answer read whole within the deadline: status, headers and the (size-capped) body."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        """The body as text; undecodable bytes become U+FFFD."""
        return self.content.decode("utf-8", errors="replace")


def _read_body(response: requests.Response, path: str, deadline: _Deadline) -> bytes:
    """Read the body in chunks, up to MAX_BODY_BYTES (a 200) or the head of an error answer."""
    status = response.status_code
    limit = MAX_BODY_BYTES if status == 200 else MAX_ERROR_BODY_BYTES
    too_big = f"{path}: HTTP 200 body larger than {MAX_BODY_BYTES // 2**20} MiB; not read"
    declared = response.headers.get("Content-Length", "").strip()
    if status == 200 and _PLAIN_COUNT.fullmatch(declared) and int(declared) > limit:
        raise BadPayload(too_big, http_status=status)
    body = bytearray()
    for chunk in response.iter_content(_BODY_CHUNK_BYTES):
        body += chunk
        if deadline.expired:
            break
        if len(body) > limit:
            if status != 200:
                return bytes(body[:limit])  # its head describes the error; the rest is dropped
            raise BadPayload(too_big, http_status=status)
    return bytes(body)


class _Deadline:
    """One request's deadline: when it passes, the request's socket is shut down.

    Socket timeouts bound each recv(), not a request: a status line, headers or body trickling
    a byte just inside the read timeout would hold a poll for minutes. At the deadline the
    socket is shut down, which wakes a blocked recv() at once. The watchdog thread shuts down a
    duplicate of the descriptor, so an SSL object is never touched from two threads.

    On the main thread (one account: `recorder run` polls there) the deadline is a SIGALRM
    armed only while the request runs: the kernel's timer costs two setitimer() calls a
    request, where handing the deadline to the watchdog thread woke it twice a poll and made
    the two threads trade the GIL (~14 futex calls a poll). Elsewhere, or when SIGALRM
    belongs to someone else, the watchdog thread keeps the deadline.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends_at = 0.0
        self.expired = False
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._alarm = False

    def start(self) -> None:
        """Start the clock (monotonic)."""
        self.ends_at = time.monotonic() + self.seconds
        if _alarm_available():
            global _ALARMED
            _ALARMED = self
            self._alarm = True
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        else:
            _WATCHDOG.add(self)

    def watch(self, sock: socket.socket | None) -> None:
        """Shut `sock` down when the deadline passes, or now if it has passed."""
        if sock is None:
            return
        if self._alarm:
            # The alarm's handler runs on this thread, between two of these lines, never
            # during an SSL call's own work: no duplicate descriptor is needed, and no lock
            # (taking one here could deadlock against the handler).
            self._socket = sock
            if self.expired:
                _shut_down(sock)
            return
        try:
            duplicate = socket.fromfd(sock.fileno(), sock.family, sock.type)
        except OSError:
            return  # already closed: nothing left to interrupt
        with self._lock:
            previous, self._socket = self._socket, duplicate
            if previous is not None:
                previous.close()
            if self.expired:
                _shut_down(duplicate)

    def expire(self) -> None:
        """The deadline has passed: shut the socket down (the watchdog or the alarm calls this)."""
        if self._alarm:
            self.expired = True
            if self._socket is not None:
                _shut_down(self._socket)
            return
        with self._lock:
            self.expired = True
            if self._socket is not None:
                _shut_down(self._socket)

    def finish(self) -> None:
        """Disarm the deadline and let go of the socket."""
        if self._alarm:
            global _ALARMED
            signal.setitimer(signal.ITIMER_REAL, 0)
            _ALARMED = None
            self._socket = None  # the connection's own socket: the pool keeps or closes it
            return
        _WATCHDOG.remove(self)
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


# The main thread's request whose deadline SIGALRM enforces, if one is running.
_ALARMED: _Deadline | None = None


def _on_alarm(_signum: int, _frame: Any) -> None:
    deadline = _ALARMED
    if deadline is not None:
        deadline.expire()


def _alarm_available() -> bool:
    """Whether this request's deadline can be a SIGALRM: main thread, and SIGALRM is ours or unused."""
    if threading.get_ident() != threading.main_thread().ident:
        return False
    handler = signal.getsignal(signal.SIGALRM)
    if handler is _on_alarm:
        return True
    if handler is not signal.SIG_DFL:
        return False  # someone else's alarm: leave it alone
    signal.signal(signal.SIGALRM, _on_alarm)
    return True


class _Watchdog:
    """One daemon thread for every request's deadline.

    A thread per request cost ~1 ms to start on a busy 2-core host, more than the request
    itself; this one is started once, and sleeps without waking while no request is running.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._pending: list[tuple[float, int, _Deadline]] = []  # a heap by ends_at
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, deadline: _Deadline) -> None:
        """Expire `deadline` at its ends_at unless removed first."""
        with self._condition:
            heapq.heappush(self._pending, (deadline.ends_at, next(self._order), deadline))
            if self._thread is None or not self._thread.is_alive():  # not started, or lost in a fork
                self._thread = threading.Thread(target=self._run, name="recorder-http-deadlines", daemon=True)
                self._thread.start()
            if self._pending[0][2] is deadline:
                self._condition.notify()

    def remove(self, deadline: _Deadline) -> None:
        """Forget `deadline` (its request is over)."""
        with self._condition:
            was_next = bool(self._pending) and self._pending[0][2] is deadline
            self._pending = [entry for entry in self._pending if entry[2] is not deadline]
            heapq.heapify(self._pending)
            if was_next:
                # Re-aim the thread now, while the poll runs anyway: left waiting for this
                # deadline it would wake once between polls, in an otherwise idle service.
                self._condition.notify()

    def _run(self) -> None:
        with self._condition:
            while True:
                if not self._pending:
                    self._condition.wait()
                    continue
                delay = self._pending[0][0] - time.monotonic()
                if delay > 0:
                    self._condition.wait(delay)
                    continue
                heapq.heappop(self._pending)[2].expire()


_WATCHDOG = _Watchdog()


def _shut_down(sock: socket.socket) -> None:
    try:
        # The plain socket's shutdown(2), also for an SSLSocket: its own shutdown() would
        # drop the SSL object under a read that is still running.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # the peer or the pool closed it first


# The deadline of the request this thread is making; the connections below report their sockets to it.
_current = threading.local()


def _watch_socket(sock: socket.socket | None) -> None:
    deadline: _Deadline | None = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline.watch(sock)


class _WatchedConnection(HTTPConnection):
    """A connection whose socket the current request's deadline can shut down."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch_socket(sock)  # before the TLS handshake, which the deadline covers too
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        _watch_socket(self.sock)  # a kept-alive connection opens no new socket
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(_WatchedConnection, HTTPSConnection):
    """HTTPS flavour of _WatchedConnection."""


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter with connections a _Deadline can interrupt (direct and via an HTTP(S) proxy)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """Pools of watched connections."""
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """The same for a proxy; a SOCKS proxy keeps its own pools (bounded per read only)."""
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, ProxyManager):
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


class _NoAuth(requests.auth.AuthBase):
    """Adds nothing: with an auth set, requests never reads ~/.netrc for the exchange's host."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


class _RedactQueries(logging.Filter):
    """Cuts query strings out of urllib3's own log lines (e.g. "Failed to parse headers (url=...)")."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record without its query strings; never drops it."""
        message = record.getMessage()
        if "?" in message:
            record.msg, record.args = _QUERY_STRING.sub("?<query removed>", message), ()
        return True


_QUERY_STRING = re.compile(r"\?[^\s\"'()]*")
_REDACT_QUERIES = _RedactQueries()


def _confine(session: requests.Session) -> requests.Session:
    """Make `session` unable to leave the configured host and give its requests a whole deadline."""
    # Belt and braces around allow_redirects=False: requests still works out the next URL of a
    # 3xx (and raises on a malformed Location) unless it is told there is none.
    session.get_redirect_target = lambda response: None  # type: ignore[method-assign]
    session.max_redirects = 0
    session.auth = _NoAuth()
    adapter = _DeadlineAdapter()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    # urllib3 logs a signed URL itself at WARNING when an answer's headers do not parse.
    for name in ("urllib3.connection", "urllib3.connectionpool", "urllib3.response"):
        logging.getLogger(name).addFilter(_REDACT_QUERIES)
    return session


# --- the daily account snapshot (backfill's independent check) ---------------------------------

ACCOUNT_SNAPSHOT_PATH = "/sapi/v1/accountSnapshot"
# Weight 2400 a call, counted against the spot host's /sapi IP budget of 12000 a minute
# (https://developers.binance.com/docs/wallet/account/daily-account-snapshoot).
ACCOUNT_SNAPSHOT_WEIGHT = 2400
SAPI_WEIGHT_LIMIT = 12000
# Binance refuses startTime..endTime spans of 30 days or more and keeps about the last month.
ACCOUNT_SNAPSHOT_MAX_DAYS = 29
ACCOUNT_SNAPSHOT_LIMIT = 30
REQUEST_WEIGHT[ACCOUNT_SNAPSHOT_PATH] = ACCOUNT_SNAPSHOT_WEIGHT


@dataclass(frozen=True)
class SnapshotBalance:
    """One asset's walletBalance in Binance's daily futures account snapshot, at its updateTime."""

    asset: str
    at: datetime
    wallet_balance: Decimal


def fetch_futures_snapshots(client: BinanceFuturesClient, *, start: datetime, end: datetime) -> list[SnapshotBalance]:
    """GET /sapi/v1/accountSnapshot?type=FUTURES (SIGNED) for [start, end], on the spot API host.

    The span is asked in windows of ACCOUNT_SNAPSHOT_MAX_DAYS; each asset and day appears once.
    The snapshot's marginBalance and positions are documented as "can be ignored": only
    walletBalance is read.
    """
    if client.clock_offset_ms is None:
        client.sync_clock()
    # A client of its own even on the simulator: /sapi weight is a separate budget from the futures one.
    spot = BinanceFuturesClient(
        base_url=_spot_base_url(client.base_url),
        api_key=client._session.headers["X-MBX-APIKEY"],
        signer=client._sign,
        recv_window=client.recv_window,
        timeout=client.timeout,
        weight_limit=SAPI_WEIGHT_LIMIT,
    )
    # One exchange, one clock: the offset measured on the futures host signs here too.
    spot._offset_ms = client.clock_offset_ms
    found: dict[tuple[str, datetime], SnapshotBalance] = {}
    try:
        window_start = start
        while window_start <= end:
            window_end = min(end, window_start + timedelta(days=ACCOUNT_SNAPSHOT_MAX_DAYS))
            timestamp = round(spot._wall_clock() * 1000) + (spot._offset_ms or 0)
            query = urlencode({
                "type": "FUTURES",
                "startTime": _epoch_ms(window_start),
                "endTime": _epoch_ms(window_end),
                "limit": ACCOUNT_SNAPSHOT_LIMIT,
                "recvWindow": spot.recv_window,
                "timestamp": timestamp,
            })
            response = spot._get(f"{ACCOUNT_SNAPSHOT_PATH}?{query}&signature={spot._sign(query)}", ACCOUNT_SNAPSHOT_PATH)
            for balance in parse_futures_snapshots(response.content):
                found[(balance.asset, balance.at)] = balance
            window_start = window_end + timedelta(milliseconds=1)
    finally:
        spot.close()
    return sorted(found.values(), key=lambda b: (b.at, b.asset))


def parse_futures_snapshots(body: bytes | str) -> list[SnapshotBalance]:
    """Validate an accountSnapshot?type=FUTURES body; any defect raises BadPayload."""
    where = ACCOUNT_SNAPSHOT_PATH
    data = _decode(body, where)
    if not isinstance(data, dict):
        raise BadPayload(f"{where}: expected a JSON object, got {_json_type(data)}")
    code = data.get("code")
    if code != 200 or isinstance(code, bool):
        raise BadPayload(f"{where}: 'code' is {_clip(code)}, not 200: {_clip(data.get('msg'))}")
    days = data.get("snapshotVos")
    if not isinstance(days, list):
        raise BadPayload(f"{where}: 'snapshotVos' is {_json_type(days)}, not a list")
    balances = []
    for index, day in enumerate(days):
        at_ms = day.get("updateTime") if isinstance(day, dict) else None
        if not isinstance(at_ms, int) or isinstance(at_ms, bool) or not 0 < at_ms <= _MAX_UPDATE_TIME_MS:
            raise BadPayload(f"{where}: snapshotVos[{index}].updateTime is not an epoch-ms time")
        if day.get("type") != "futures":
            raise BadPayload(f"{where}: snapshotVos[{index}].type is {_clip(day.get('type'))}, not 'futures'")
        assets = day.get("data", {}).get("assets") if isinstance(day.get("data"), dict) else None
        if not isinstance(assets, list):
            raise BadPayload(f"{where}: snapshotVos[{index}].data.assets is not a list")
        at = _EPOCH + timedelta(milliseconds=at_ms)
        for position, row in enumerate(assets):
            name = row.get("asset") if isinstance(row, dict) else None
            if not isinstance(name, str) or not _ASSET_NAME.fullmatch(name):
                raise BadPayload(f"{where}: snapshotVos[{index}].data.assets[{position}].asset is not an asset name")
            wallet = _decimal_field(row, "walletBalance", f"{where}: snapshotVos[{index}] {name}")
            balances.append(SnapshotBalance(name, at, wallet))
    return balances


def _spot_base_url(base_url: str) -> str:
    """The spot API host that serves /sapi for this futures base URL.

    Kept private and small on purpose: another endpoint needs the same derivation on another
    branch, and the two are meant to become one.
    """
    from recorder.errors import ConfigError

    host = urlsplit(base_url).hostname or ""
    if is_loopback(host):
        return base_url  # the simulator serves /sapi itself
    if host == "fapi.binance.com":
        return "https://api.binance.com"
    raise ConfigError(
        f"no spot API host is known for {host}: the daily account snapshot lives on api.binance.com "
        "(use --no-snapshot-check)"
    )


def _epoch_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)
# Text fields of an income entry: any printable text (symbols may be non-ASCII), never a control character.
_INCOME_TEXT_LIMITS = {"symbol": 64, "info": 1000, "tradeId": 64}
_INCOME_TYPE_NAME = re.compile(r"[A-Z0-9_]{1,64}")
# tranId is a Java long: a BIGINT column holds exactly this range.
_TRAN_ID_RANGE = range(-(2**63), 2**63)


def parse_income(body: bytes | str, *, used_weight: int | None = None) -> FetchedIncome:
    """Validate a GET /fapi/v1/income body into records; any defect rejects the whole page with BadPayload.

    Numbers are parsed as int (exact at any size) and Decimal: a tranId or time sent as a
    fraction, a float or a string is refused, never rounded.
    """
    data = _decode(body, INCOME_PATH)
    if isinstance(data, dict) and "code" in data and "msg" in data:
        raise BadPayload(f"{INCOME_PATH}: error object instead of entries: code {_clip(data['code'])}: {_clip(data['msg'])}")
    if not isinstance(data, list):
        raise BadPayload(f"{INCOME_PATH}: expected a JSON array of entries, got {_json_type(data)}")
    entries: list[IncomeRecord] = []
    for index, row in enumerate(data):
        where = f"{INCOME_PATH}: entry {index}"
        if not isinstance(row, dict):
            raise BadPayload(f"{where} is {_json_type(row)}, not an object")
        income_type = row.get("incomeType", _MISSING)
        if not isinstance(income_type, str) or not _INCOME_TYPE_NAME.fullmatch(income_type):
            raise BadPayload(f"{where}: field 'incomeType' is missing or not an income type name: {_clip(income_type)}")
        asset = row.get("asset", _MISSING)
        if not isinstance(asset, str) or not _ASSET_NAME.fullmatch(asset):
            raise BadPayload(f"{where}: field 'asset' is missing or not an asset name: {_clip(asset)}")
        tran_id = row.get("tranId", _MISSING)
        if tran_id is _MISSING:
            raise BadPayload(f"{where}: field 'tranId' is missing")
        if not isinstance(tran_id, int) or isinstance(tran_id, bool):
            shown = str(tran_id) if isinstance(tran_id, Decimal) else tran_id  # as sent, not Decimal('...')
            raise BadPayload(f"{where}: field 'tranId' must be an integer, got {_json_type(tran_id)} {_clip(shown)}")
        if tran_id not in _TRAN_ID_RANGE:
            raise BadPayload(f"{where}: field 'tranId' {_clip(tran_id)} does not fit a 64-bit integer")
        time_ms = row.get("time", _MISSING)
        if time_ms is _MISSING:
            raise BadPayload(f"{where}: field 'time' is missing")
        if not isinstance(time_ms, int) or isinstance(time_ms, bool) or not 0 < time_ms <= _MAX_UPDATE_TIME_MS:
            raise BadPayload(f"{where}: field 'time' must be epoch milliseconds, got {_clip(time_ms)}")
        where = f"{INCOME_PATH}: {income_type} {tran_id} {asset}"
        income = _decimal_field(row, "income", where)
        texts: dict[str, str] = {}
        for key, limit in _INCOME_TEXT_LIMITS.items():
            value = row.get(key, _MISSING)
            if value is _MISSING:
                raise BadPayload(f"{where}: field {key!r} is missing")
            if not isinstance(value, str):
                raise BadPayload(f"{where}: field {key!r} must be a string, got {_json_type(value)} {_clip(value)}")
            if len(value) > limit or not value.isprintable():
                raise BadPayload(f"{where}: field {key!r} is not up to {limit} printable characters: {_clip(value)}")
            texts[key] = value
        entries.append(
            IncomeRecord(
                time=_EPOCH + timedelta(milliseconds=time_ms),
                time_ms=time_ms,
                income_type=income_type,
                tran_id=tran_id,
                asset=asset,
                income=income,
                symbol=texts["symbol"],
                info=texts["info"],
                trade_id=texts["tradeId"],
            )
        )
    return FetchedIncome(entries=tuple(entries), used_weight=used_weight)
