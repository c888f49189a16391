"""Every error recorder raises on purpose, grouped by what the caller does next.

```
RecorderError                  everything we raise on purpose
├── ConfigError                missing or invalid settings: fix config, restart
├── HandedOver                 the account passed to another recorder before this poll was
│                              written: nothing of it is stored here, nothing to do
├── ExchangeError              .http_status / .code: HTTP status and Binance error code
│   ├── ExchangeUnavailable    timeout, network, 5xx, 3xx, HTML error page: skip this tick
│   │   └── RateLimited        429/418/403 WAF/-1003: no request before .retry_after seconds
│   ├── ClockSkew              -1021: resync the server clock, retry once
│   ├── AuthError              bad key, signature or permission: stop and alert
│   └── BadPayload             response not in the shape we parse; nothing is stored
└── StorageError               database unavailable: keep the poll in the spool, retry later
    ├── RejectedPoll           the database refused this poll's content: record it as failed,
    │                          or set the spooled entry aside; retrying never helps
    └── SpoolError             the spool could not keep an entry (full disk, read-only): log the
                               lost poll, go on; the next poll tries again
```

Messages are one line, name what was wrong, and never carry a secret, a signature or a
signed URL: they end up in logs, in the poll log table and on the terminal.
"""

from __future__ import annotations


class RecorderError(Exception):
    """Base of every error raised on purpose; the CLI prints it as one line."""


class ConfigError(RecorderError):
    """Settings are missing or invalid: the user fixes the configuration and restarts."""


class HandedOver(RecorderError):
    """The account passed to another recorder (its lease, run --config on PostgreSQL) before this
    poll was written: it is neither stored nor spooled here, since only the holder writes for the
    account, and the holder's polls (and its gap bookkeeping) go on from there."""


class ExchangeError(RecorderError):
    """The exchange call failed; this tick is recorded as failed and the next one goes on."""

    def __init__(self, message: str, *, http_status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code


class ExchangeUnavailable(ExchangeError):
    """Network failure, timeout, 5xx, a refused redirect or an HTML error page: skip this tick, try the next."""


class RateLimited(ExchangeUnavailable):
    """Binance asked us to slow down: send nothing to it before `retry_after` seconds pass."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        http_status: int | None = None,
        code: int | None = None,
    ) -> None:
        super().__init__(message, http_status=http_status, code=code)
        self.retry_after = retry_after


class ClockSkew(ExchangeError):
    """Binance rejected our timestamp (-1021): resync the clock and retry once."""


class AuthError(ExchangeError):
    """Key, signature or permissions were rejected: stop hammering and tell the user what to fix."""


class BadPayload(ExchangeError):
    """The response is not in the shape Binance documents; nothing from it is stored."""


class StorageError(RecorderError):
    """The database is unreachable or refused the write."""


class RejectedPoll(StorageError):
    """The database refused this poll for its content: record it as failed (or set the spooled
    entry aside) and go on with the next; storing it again would fail again."""


class SpoolError(StorageError):
    """The spool could not keep an entry (disk full, read-only folder): that poll is lost, the
    service logs it and goes on; the next poll tries the database and the spool again."""
