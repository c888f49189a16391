"""A built-in Binance USD-M futures exchange over real HTTP, for `recorder demo` and the test suite.

Only what a balance poller and the ledger sync touch exists: ping, time, the signed `/fapi/v2|v3/balance`,
`/fapi/v1/income`, and the spot host's `/sapi/v1/account/apiRestrictions` (the key check) and
`/sapi/v1/accountSnapshot` (backfill's check); one port serves both hosts. Signing,
timing, the per-IP weight limiter and the error bodies follow Binance's documented rules
(https://developers.binance.com/docs/derivatives/usds-margined-futures/general-info) strictly, so a
client that works here has taken no shortcut production would reject. Stdlib only for HMAC accounts: the
demo must run from a bare install; accounts registered with a public key import `cryptography` lazily.

Each module imports only those listed above it:

    responses   what the exchange answers: status, body, headers; JSON and HTML bodies
    income      an account's income ledger (every wallet move booked) and GET /fapi/v1/income over it
    market      accounts, their balance rows, and how a trading account's balances move
    strict      a demanding account: every ledger quirk at once (fills before updates, bursts,
                AUTO_EXCHANGE legs, unknown types), with its true wallet history
    rules       Binance's weights, weight limiter and bans, SIGNED checks and error messages
    faults      FAULTS, and the response each injected fault sends
    server      the HTTP server and its keep-alive handler
    exchange    ExchangeSimulator, ServedSnapshot, RequestRecord: state, routing, lifecycle
"""

from __future__ import annotations

from recorder.simulator.exchange import ExchangeSimulator, RequestRecord, ServedSnapshot
from recorder.simulator.faults import FAULTS

__all__ = ["FAULTS", "ExchangeSimulator", "RequestRecord", "ServedSnapshot"]
