"""ExchangeSimulator: the exchange's state, what it records, how a request passes the rules, the faults and
the market, and starting and stopping its server."""

from __future__ import annotations

import copy
import json
import random
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from recorder.simulator.faults import DECORATING_FAULTS, FAULTS, _decorate, _Fault, _fault_response
from recorder.simulator.income import (
    _CORRUPTING,
    INCOME_PARAMS,
    INCOME_PATH,
    _corrupt_income,
    _income_response,
    _IncomeBook,
)
from recorder.simulator.market import _Account, _default_rows, _move, _wire_rows
from recorder.simulator.responses import _Response, _error, _json
from recorder.simulator.rules import _WEIGHTS, _authenticate, _load_public_key, _WeightLimiter
from recorder.simulator.server import _Handler, _Server
from recorder.simulator.snapshots import SNAPSHOT_PARAMS, SNAPSHOT_PATH, _snapshot_response, _WalletHistory
from recorder.simulator.strict import _book_burst, _move_demanding

# A queued place-holder: the request it meets is answered normally (inject's `after`).
_PASS = _Fault("pass", 0.0, 0)
_BALANCE_PATHS = frozenset({"/fapi/v2/balance", "/fapi/v3/balance"})
_RESTRICTIONS_PATH = "/sapi/v1/account/apiRestrictions"


@dataclass(frozen=True)
class ServedSnapshot:
    """One successful balance body exactly as it went over the wire."""

    api_key: str
    served_at_ms: int
    rows: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class RequestRecord:
    """One request as the exchange saw it; path only, never the signed query."""

    method: str
    path: str
    status: int  # 0 for "reset": the client got no HTTP status at all
    code: int | None
    used_weight: int


class ExchangeSimulator:
    """A strict, in-process Binance USD-M futures REST exchange on 127.0.0.1."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, clock_offset_ms: int = 0,
                 weight_limit: int = 2400, seed: int = 0, auto_move: bool = False,
                 history_limit: int | None = None, latency: float = 0.0, demanding: bool = False) -> None:
        self.host = host
        # Every ledger quirk at once (simulator.strict); off, the plain market moves as it always has.
        self.demanding = demanding
        # False: GET /fapi/v1/income ignores `page`, as Binance did before it added it (2024-10).
        self.income_pages = True
        # Seconds every request waits before it is answered, like the round trip to Binance's
        # servers; each connection has its own handler thread, so waits overlap as they would.
        self.latency = latency
        self.port = port
        self.clock_offset_ms = clock_offset_ms
        self.weight_limit = weight_limit
        self.seed = seed
        self.auto_move = auto_move
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}
        self._faults: deque[_Fault] = deque()
        self._income_faults: deque[_Fault] = deque()
        self._limiter = _WeightLimiter()
        # Tests read every served body; a long-running `recorder simulate` keeps only the
        # newest `history_limit` of them (and of the request log) so its memory stays flat.
        self._served: deque[ServedSnapshot] = deque(maxlen=history_limit)
        self._requests: deque[RequestRecord] = deque(maxlen=history_limit)
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None
        # Per API key: the wallet balances the daily account snapshot reports (set_wallet_history).
        self._wallet_histories: dict[str, _WalletHistory] = {}
        # How many injected "stall" faults have begun holding their answer (tests wait on it).
        self._stalls_begun = 0

    # -- observation ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The root URL clients should use, e.g. http://127.0.0.1:PORT."""
        if self._base_url is None:
            raise RuntimeError("ExchangeSimulator is not started")
        return self._base_url

    @property
    def served(self) -> list[ServedSnapshot]:
        """Every successful balance body served, oldest first."""
        with self._lock:
            return list(self._served)

    @property
    def requests_log(self) -> list[RequestRecord]:
        """Every request received, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def bans_issued(self) -> int:
        """How many IP bans the rate limiter itself imposed (injected 418s excluded)."""
        with self._lock:
            return self._limiter.bans_issued

    def server_time_ms(self) -> int:
        """The exchange clock in epoch ms: local clock plus clock_offset_ms."""
        return time.time_ns() // 1_000_000 + self.clock_offset_ms

    # -- accounts and market ----------------------------------------------------------------------

    def add_account(self, *, api_key: str, api_secret: str | None = None, account_alias: str = "SimA",
                    balances: list[dict] | None = None, public_key_pem: str | bytes | None = None) -> None:
        """Register an HMAC (api_secret) or Ed25519/RSA (public_key_pem) key; balances: rows sans accountAlias."""
        # A Binance API key is one kind: HMAC, RSA or Ed25519, never two at once.
        if public_key_pem is not None and api_secret:
            raise ValueError("give api_secret or public_key_pem, not both")
        if public_key_pem is None and api_secret is None:
            raise ValueError("an account needs api_secret or public_key_pem")
        public_key = None if public_key_pem is None else _load_public_key(public_key_pem)
        rows = _default_rows(self.server_time_ms()) if balances is None else copy.deepcopy(balances)
        # A string seed hashes the same in every process, so the demo replays identically.
        rng = random.Random(f"{self.seed}:{api_key}")
        with self._lock:
            self._accounts[api_key] = _Account(api_key, api_secret or "", account_alias, rows, rng,
                                               public_key=public_key,
                                               ledger=_IncomeBook(random.Random(f"{self.seed}:{api_key}:income")))

    def set_balances(self, api_key: str, balances: list[dict]) -> None:
        """Replace the account's rows; they are served verbatim."""
        rows = copy.deepcopy(balances)
        with self._lock:
            self._accounts[api_key].rows = rows

    def set_api_restrictions(self, api_key: str, **flags: bool) -> None:
        """Change what GET /sapi/v1/account/apiRestrictions says the key may do (Binance's field names)."""
        with self._lock:
            restrictions = self._accounts[api_key].restrictions
            unknown = sorted(set(flags) - set(restrictions))
            if unknown:
                raise ValueError(f"unknown apiRestrictions field(s): {', '.join(unknown)}")
            restrictions.update(flags)

    def get_balances(self, api_key: str) -> list[dict]:
        """A deep copy of the account's current rows (without accountAlias)."""
        with self._lock:
            return copy.deepcopy(self._accounts[api_key].rows)

    def set_wallet_history(self, api_key: str, states: list[tuple[int, str, str]]) -> None:
        """Give the account a past: (time_ms, asset, walletBalance) states for GET /sapi/v1/accountSnapshot."""
        history = _WalletHistory()
        history.replace(states)
        with self._lock:
            self._wallet_histories[api_key] = history

    def step(self, api_key: str | None = None) -> None:
        """Advance the simulated market one step for one account, or for all of them."""
        with self._lock:
            accounts = list(self._accounts.values()) if api_key is None else [self._accounts[api_key]]
            for account in accounts:
                self._step(account, self.server_time_ms())

    def _step(self, account: _Account, now_ms: int) -> None:
        (_move_demanding if self.demanding else _move)(account, now_ms)

    def run_past(self, api_key: str, start_ms: int, steps: int, step_ms: int, *,
                 withhold_at_step: int | None = None) -> None:
        """Let a demanding account trade before now: `steps` steps from start_ms, step_ms apart.

        Its rows are first dated start_ms - 1 (untouched assets keep updateTime 0), so the true
        history (`wallet_history`) begins there; every step must end before now. From step
        `withhold_at_step` on, the next entry booked is withheld (see withhold_next_income).
        """
        if not self.demanding:
            raise ValueError("run_past needs ExchangeSimulator(demanding=True)")
        if start_ms + (steps - 1) * step_ms >= self.server_time_ms():
            raise ValueError("run_past must end before the exchange's now")
        with self._lock:
            account = self._accounts[api_key]
            for row in account.rows:
                if row.get("updateTime"):
                    row["updateTime"] = start_ms - 1
            account.history.clear()
            for step in range(steps):
                if step == withhold_at_step:
                    account.ledger.withhold_next += 1
                _move_demanding(account, start_ms + step * step_ms)

    def book_burst(self, api_key: str, count: int) -> int:
        """Book `count` FUNDING_FEE entries in one millisecond, moving USDT by their sum; that millisecond."""
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            return _book_burst(self._accounts[api_key], count, self.server_time_ms())

    def wallet_history(self, api_key: str) -> list[tuple[int, str, str]]:
        """A demanding account's true wallet history: (time_ms, asset, balance) per state, oldest first."""
        with self._lock:
            return list(self._accounts[api_key].history)

    def wallet_balance_at(self, api_key: str, asset: str, time_ms: int) -> str | None:
        """The asset's true wallet balance at time_ms (its latest state then), None before its history."""
        history = _WalletHistory()
        history.replace(self.wallet_history(api_key))
        return history.at(asset, time_ms)

    @property
    def stalls_begun(self) -> int:
        """How many injected "stall" faults have begun holding their answer."""
        with self._lock:
            return self._stalls_begun

    # -- income ledger --------------------------------------------------------------------------

    def add_income(self, api_key: str, rows: list[dict[str, Any]]) -> None:
        """Plant income rows, served verbatim by GET /fapi/v1/income; balances do not move."""
        with self._lock:
            ledger = self._accounts[api_key].ledger
            for row in copy.deepcopy(rows):
                ledger.add(row)

    def income_entries(self, api_key: str, *, include_expired: bool = False) -> list[dict[str, Any]]:
        """Every entry the account's ledger serves now (or holds, past retention too), oldest first."""
        with self._lock:
            ledger = self._accounts[api_key].ledger
            if include_expired:
                return [copy.deepcopy(row) for _, _, row in ledger.entries]
            return copy.deepcopy(ledger.served(0, 2**63 - 1, self.server_time_ms()))

    def withhold_next_income(self, api_key: str, count: int = 1) -> None:
        """Book the account's next `count` entries nowhere: its balance moves, the ledger misses them.

        What reconciliation exists to catch; `withheld_income()` lists them.
        """
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._accounts[api_key].ledger.withhold_next += count

    def set_transfer_tran_id(self, api_key: str, tran_id: int | None = 0) -> None:
        """Book the account's TRANSFER entries from now on with this tranId (None: fresh ids again).

        Third parties report Binance sending TRANSFER rows with tranId 0: many entries, one id.
        """
        with self._lock:
            self._accounts[api_key].ledger.transfer_tran_id = tran_id

    def withheld_income(self, api_key: str) -> list[dict[str, Any]]:
        """The entries withheld so far, oldest first."""
        with self._lock:
            return copy.deepcopy(self._accounts[api_key].ledger.withheld)

    # -- faults ---------------------------------------------------------------------------------

    def inject(self, fault: str, times: int = 1, *, seconds: float = 30.0, retry_after: int | str = 60,
               location: str | None = None, endpoint: str = "balance", after: int = 0) -> None:
        """Make the next `times` balance (or, with endpoint="income", income) requests fail with `fault`.

        Faults apply before auth checks; each endpoint has its own queue, so a ledger sync never takes
        a fault meant for a balance poll.

        seconds: how long "stall" holds the answer, or the gap between bytes for "trickle"/"trickle-head";
        retry_after: the Retry-After header of "rate-*"/"ban-418", sent verbatim (a str may be "inf", a date);
        location: the scheme://host[:port] a "redirect-3xx" sends the client to, with the request's own path
        and signed query appended, as a hostile redirect would;
        after: how many requests of the endpoint are answered normally first (a fault on a later page).
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {sorted(FAULTS)}")
        if times < 1:
            raise ValueError("times must be >= 1")
        if isinstance(retry_after, str) and any(ch in retry_after for ch in "\r\n"):
            raise ValueError("retry_after must be one header line")
        if endpoint not in ("balance", "income"):
            raise ValueError(f"endpoint must be 'balance' or 'income', not {endpoint!r}")
        if after < 0:
            raise ValueError("after must be >= 0")
        with self._lock:
            queue = self._income_faults if endpoint == "income" else self._faults
            queue.extend([_PASS] * after)
            queue.extend([_Fault(fault, seconds, retry_after, location)] * times)

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()
            self._income_faults.clear()

    def _fault_rows(self, api_key: str) -> list[dict[str, Any]]:
        with self._lock:
            account = self._accounts.get(api_key) or next(iter(self._accounts.values()), None)
            if account is not None and account.rows:
                return _wire_rows(account)
        return [{"accountAlias": "SimA", **row} for row in _default_rows(self.server_time_ms())]

    # -- request handling ---------------------------------------------------------------------

    def _handle(self, method: str, target: str, api_key: str, ip: str) -> _Response | None:
        """Answer one request; None means reset the connection without a response."""
        path, _, query = target.partition("?")
        faults = None
        if method == "GET" and path in _BALANCE_PATHS:
            faults = self._faults
        elif method == "GET" and path == INCOME_PATH:
            faults = self._income_faults
        if self.latency > 0 and self._stopping.wait(self.latency):
            return None
        with self._lock:
            now = self.server_time_ms()
            if faults and faults[0].name == "reset":
                # The connection dies before the edge counts anything.
                faults.popleft()
                self._requests.append(RequestRecord(method, path, 0, None, self._limiter.window(ip, now).weight))
                return None
            # Binance counts the spot host's weight (/sapi) apart from the futures host's (/fapi).
            limited = f"{ip} spot" if path.startswith("/sapi/") else ip
            response, used = self._limiter.admit(limited, _WEIGHTS.get(path, 1), now, self.weight_limit)
            fault = faults.popleft() if faults and response is None else None
            if fault is _PASS:
                fault = None
        if response is None:
            if fault is not None and fault.name == "stall":
                with self._lock:
                    self._stalls_begun += 1
            if fault is not None and fault.name == "stall" and self._stopping.wait(fault.seconds):
                return None
            response = self._route(method, path, query, api_key, fault, target)
        response.headers.setdefault("X-MBX-USED-WEIGHT-1M", str(used))  # "huge-weight" sets its own
        with self._lock:
            self._requests.append(RequestRecord(method, path, response.status, response.code, used))
        return response

    def _route(self, method: str, path: str, query: str, api_key: str, fault: _Fault | None,
               target: str) -> _Response:
        if method != "GET":
            return _error(405, -5000, f"Request method '{method}' not supported")
        if path == SNAPSHOT_PATH:
            return self._account_snapshot(query, api_key)
        if path == "/fapi/v1/ping":
            return _json(200, {})
        if path == "/fapi/v1/time":
            return _json(200, {"serverTime": self.server_time_ms()})
        if path == _RESTRICTIONS_PATH:
            # Binance serves it on the spot host; this one port stands for both hosts.
            with self._lock:
                known = self._accounts.get(api_key)
            account = _authenticate(api_key, known, query, self.server_time_ms)
            if isinstance(account, _Response):
                return account
            with self._lock:
                return _json(200, dict(account.restrictions))
        if path == INCOME_PATH:
            return self._income(query, api_key, fault, target)
        if path not in _BALANCE_PATHS:
            return _error(404, -5000, f"Path {path} not found")
        if fault is not None and fault.name != "stall" and fault.name not in DECORATING_FAULTS:
            return _fault_response(fault, self.weight_limit, self.server_time_ms,
                                   lambda: self._fault_rows(api_key), target)
        with self._lock:
            known = self._accounts.get(api_key)
        account = _authenticate(api_key, known, query, self.server_time_ms)
        if isinstance(account, _Response):
            return account
        with self._lock:
            if self.auto_move and not self.demanding:
                _move(account, self.server_time_ms())
            rows = _wire_rows(account)
            if self.auto_move and self.demanding:
                # Served first, moved after: the step's fill may be stamped before this answer.
                _move_demanding(account, self.server_time_ms(), fill=True)
            if fault is None or fault.name == "huge-weight":
                # Stalled and trickled answers are left out: the client has usually given up on them.
                snapshot = ServedSnapshot(account.api_key, self.server_time_ms(), tuple(copy.deepcopy(rows)))
                self._served.append(snapshot)
        response = _json(200, rows)
        return response if fault is None or fault.name == "stall" else _decorate(fault, response)

    def _account_snapshot(self, query: str, api_key: str) -> _Response:
        # Weight 2400 on Binance, but on the spot host's separate /sapi budget: it is not charged
        # against this (futures) budget, which a single call would otherwise nearly exhaust.
        with self._lock:
            known = self._accounts.get(api_key)
        account = _authenticate(api_key, known, query, self.server_time_ms, SNAPSHOT_PARAMS)
        if isinstance(account, _Response):
            return account
        with self._lock:
            history = self._wallet_histories.get(api_key)
            if history is None:
                # A demanding account's snapshots tell its true history.
                history = _WalletHistory()
                history.replace(account.history)
            return _snapshot_response(history, copy.deepcopy(account.rows), query, self.server_time_ms())

    def _income(self, query: str, api_key: str, fault: _Fault | None, target: str) -> _Response:
        if fault is not None and fault.name != "stall" and fault.name not in DECORATING_FAULTS | _CORRUPTING:
            return _fault_response(fault, self.weight_limit, self.server_time_ms, lambda: [], target)
        with self._lock:
            known = self._accounts.get(api_key)
        account = _authenticate(api_key, known, query, self.server_time_ms, INCOME_PARAMS)
        if isinstance(account, _Response):
            return account
        with self._lock:
            response = _income_response(account.ledger, query, self.server_time_ms(), pages=self.income_pages)
        if fault is None or fault.name == "stall" or response.status != 200:
            return response
        if fault.name in _CORRUPTING:
            return _corrupt_income(fault.name, json.loads(response.body))
        return _decorate(fault, response)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> ExchangeSimulator:
        """Serve in a daemon thread; returns self."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server((self.host, self.port), _Handler)
        server.sim = self
        host, port = server.server_address[:2]
        self._server, self._base_url = server, f"http://{host}:{port}"
        # A short poll interval keeps stop() fast; the accept loop is otherwise idle.
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"exchange-simulator:{port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Shut down and close every socket; idempotent."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            if server is None:
                return
            self._stopping.set()
            connections = list(self._connections)
        server.shutdown()
        for conn in connections:
            # Wakes handler threads parked on idle keep-alive connections so server_close can join them.
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if thread is not None:
            thread.join()

    def serve_until(self, stop_event: threading.Event) -> None:
        """Serve until stop_event is set (blocking), then stop."""
        self.start()
        try:
            while not stop_event.wait(0.2):
                pass
        finally:
            self.stop()

    def __enter__(self) -> ExchangeSimulator:
        """Start serving."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop serving."""
        self.stop()

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            if not self._stopping.is_set():
                self._connections.add(conn)
                return
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _pause(self, seconds: float) -> bool:
        """Wait `seconds` between trickled bytes; True when the exchange is stopping instead."""
        return self._stopping.wait(seconds)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)
