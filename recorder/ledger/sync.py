"""LedgerSync: archive Binance's income ledger (GET /fapi/v1/income) into `income_entries`, exactly once.

A sync walks from the newest covered time (minus OVERLAP) to now in windows of at most WINDOW,
each window paged by time with pages of at most PAGE_LIMIT entries. A window is one transaction:
its entries (insert-if-absent on the key account, incomeType, tranId, asset) and its `ok` row in
`ledger_syncs` commit together, so a crash or a failure never leaves a window recorded as covered
with entries missing; the next sync starts again from the newest covered time and the overlap is
deduplicated by the key. A failed window gets a `failed` row and ends the attempt.

Paging by time (binance-api.md section 6, ledger.md): a full page's last `time` is asked again
(never skipped: that millisecond may hold more entries than the page showed), and a full page that
is all one millisecond is read on with Binance's `page` parameter for that millisecond alone.

Weight: before each request `weight_budget(30)` says how long to wait for it to fit this IP's
budget (by default the client's own headroom rule; in `recorder run` the WeightBudget the balance
polls reserve from, which then counts the request as reserved until `settle_weight(30, header)`
reports the exchange's figure); a wait up to `max_pause` is slept, a longer one ends the attempt
early, as does a 429/418 (the client then refuses to send until its Retry-After has passed).

Handover: in a shared `recorder run --config` an account may pass to another process mid-sync.
`hold()` (the account's lease, recorder.scheduling.LeaseBook.holding) is asked before every page
request and every write, and held through the write: once the account is no longer this
process's, the attempt stops there, cleanly (no `failed` row; windows committed before stay covered).
"""

from __future__ import annotations

import importlib
import logging
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from recorder import store
from recorder.db import database_error_line
from recorder.errors import BadPayload, ExchangeError, StorageError
from recorder.ledger.supersede import supersede_statement_entries
from recorder.ledger.types import KNOWN_INCOME_TYPES
from recorder.prepared import Prepared
from recorder.records import FetchedIncome, IncomeRecord
from recorder.storable import clean_text
from recorder.store import ERROR_MESSAGE_LIMIT
from recorder.tables import income_entries, ledger_syncs

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
# Seconds to wait before a request of this weight fits the IP's budget; 0 when it fits now.
WeightBudget = Callable[[int], float]
# A context that says whether this process still holds the account, and keeps it so until it exits.
Hold = Callable[[], AbstractContextManager[bool]]

INCOME_WEIGHT = 30
PAGE_LIMIT = 1000
# No maximum span is documented; 7 days is what Binance returns by default and third-party
# ingesters use.
WINDOW = timedelta(days=7)
# Binance keeps "three months"; 90 days is the shortest reading, so a first sync never asks
# for time Binance may already have dropped and then calls it covered.
RETENTION = timedelta(days=90)
# A resumed sync re-reads this much before the newest covered time: entries Binance books a
# little after their `time`, and the window a crash interrupted, are fetched again and deduplicated.
OVERLAP = timedelta(minutes=5)
DEFAULT_INTERVAL_SECONDS = 300.0
# A weight wait longer than this ends the attempt instead (the next scheduled sync continues).
MAX_PAUSE_SECONDS = 65.0
# One window holding more pages than this is a broken or hostile answer, not a ledger.
MAX_PAGES_PER_WINDOW = 10_000

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)
_entries, _syncs = income_entries, ledger_syncs


_ENTRY_COLUMNS = ("account_id", "time", "income_type", "tran_id", "asset", "income", "symbol", "info", "trade_id",
                  "known_type", "source", "recorded_at")


@cache
def _insert_entries(dialect: str) -> Prepared:
    """Insert-if-absent of income entries, for the database's own dialect only: importing the
    other one would cost a service its memory (2.2 MB for PostgreSQL's on SQLite) for life.

    Run as the driver's executemany, which counts what it inserted: no RETURNING, whose
    multi-row VALUES statements (one per batch size, each cached by the driver) cost a
    service about 12 MB per thousand entries on PostgreSQL, and no row per entry back."""
    if dialect not in ("sqlite", "postgresql"):
        raise ValueError(f"no income insert for the {dialect} dialect")
    module = importlib.import_module(f"sqlalchemy.dialects.{dialect}")
    statement = module.insert(_entries).on_conflict_do_nothing(
        index_elements=["account_id", "income_type", "tran_id", "asset"])
    return Prepared(statement, _ENTRY_COLUMNS)


class IncomeClient(Protocol):
    """What a sync needs of the exchange client (BinanceFuturesClient)."""

    base_url: str
    last_used_weight: int | None
    last_reported_weight: int | None

    def fetch_income(self, start_ms: int, end_ms: int, limit: int = ..., *, page: int | None = ...) -> FetchedIncome: ...

    def weight_wait(self, cost: int) -> float: ...


def utcnow() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(timezone.utc)


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime, exactly (integer arithmetic, truncated)."""
    return (moment - _EPOCH) // _MS


def from_ms(ms: int) -> datetime:
    """An aware UTC datetime from epoch milliseconds."""
    return _EPOCH + timedelta(milliseconds=ms)


@dataclass(frozen=True)
class SyncResult:
    """What one sync attempt did."""

    attempt_id: str
    windows: int
    requests: int
    entries_fetched: int
    entries_new: int
    # The newest covered time after this attempt; None if nothing was ever covered.
    covered_until: datetime | None
    # True when the weight budget ended the attempt before it reached now.
    paused: bool = False
    # True when the account passed to another process (its lease) and the attempt ended there.
    stopped: bool = False


class _Paused(Exception):
    """The weight budget asks for a longer wait than a sync may pause."""


class _Stopped(Exception):
    """The account is no longer this process's: the attempt ends before its next request or write."""


@dataclass
class _Window:
    start_ms: int
    end_ms: int
    entries: dict[tuple[str, int, str], IncomeRecord] = field(default_factory=dict)
    requests: int = 0
    pages: int = 0
    used_weight: int | None = None


@dataclass
class LedgerSync:
    """One account's income-ledger archiver; `sync_once()` is one attempt, safe to call on any schedule."""

    client: IncomeClient
    sessions: sessionmaker[Session]
    account: str
    clock: Clock = utcnow
    # Seconds to wait before a request of a given weight fits; default: the client's own rule.
    weight_budget: WeightBudget | None = None
    # Told after each request the budget let through: (its weight, the IP's used weight the answer reported).
    settle_weight: Callable[[int, int | None], None] | None = None
    # Where a first sync starts; default (and never older than) what Binance keeps.
    since: datetime | None = None
    # Called before every write, e.g. the writer lock's ensure().
    before_write: Callable[[], None] | None = None
    # Whether this process still holds the account, asked before every request and held through
    # every write (run --config's lease); default: always.
    hold: Hold | None = None
    max_pause: float = MAX_PAUSE_SECONDS
    sleep: Callable[[float], None] = time.sleep
    page_limit: int = PAGE_LIMIT
    window: timedelta = WINDOW
    _warned_types: set[str] = field(default_factory=set, init=False, repr=False)

    def sync_once(self) -> SyncResult:
        """Fetch every entry from the newest covered time to now and store each once; raise on a failure.

        A failure is logged and recorded as a `failed` window, then raised (ExchangeError or
        StorageError); windows committed before it stay covered.
        """
        attempt_id = str(uuid.uuid4())
        began = time.perf_counter()
        now = self.clock()
        try:
            account_id, covered_until = self._prepare(now)
        except StorageError as error:
            log.warning("ledger sync failed account=%s error=StorageError ms=%d: %s", self.account, _elapsed_ms(began), error)
            raise
        except _Stopped:
            return self._end(attempt_id, began, "stopped", 0, 0, 0, 0, None)
        end_ms = to_ms(now)
        oldest_kept = to_ms(now - RETENTION)
        if covered_until is None:
            start_ms = max(to_ms(self.since) if self.since is not None else oldest_kept, oldest_kept)
        else:
            start_ms = to_ms(covered_until - OVERLAP)
            if start_ms < oldest_kept:
                log.warning(
                    "ledger gap account=%s: nothing synced since %s and Binance keeps only %d days; "
                    "entries from then to %s are lost to the archive (recorder ledger --coverage)",
                    self.account, covered_until.isoformat(), RETENTION.days, from_ms(oldest_kept).isoformat(),
                )
                start_ms = oldest_kept
        start_ms = min(start_ms, end_ms)
        windows = requests = fetched = new = 0
        window_ms = self.window // _MS
        while True:
            window = _Window(start_ms, min(start_ms + window_ms - 1, end_ms))
            window_started = self.clock()
            try:
                self._fetch(window)
            except _Paused as pause:
                log.info("ledger sync paused account=%s: %s; the next sync goes on from %s",
                         self.account, pause, from_ms(window.start_ms).isoformat())
                return self._end(attempt_id, began, "paused", windows, requests, fetched, new, covered_until)
            except _Stopped:
                return self._end(attempt_id, began, "stopped", windows, requests, fetched, new, covered_until)
            except ExchangeError as error:
                self._record_failure(account_id, attempt_id, window, window_started, error)
                log.warning("ledger sync failed account=%s window=%s..%s error=%s ms=%d: %s",
                            self.account, from_ms(window.start_ms).isoformat(), from_ms(window.end_ms).isoformat(),
                            type(error).__name__, _elapsed_ms(began), clean_text(str(error)))
                raise
            # Held through the write and, for the last window, the "ok" line: a handover waits for
            # both, so nothing is written and no sync ends "ok" after this process logs the account
            # handed over.
            with self._hold() as held:
                if not held:
                    return self._end(attempt_id, began, "stopped", windows, requests, fetched, new, covered_until)
                try:
                    added = self._store(account_id, attempt_id, window, window_started)
                except StorageError as error:
                    log.warning("ledger sync failed account=%s error=StorageError ms=%d: %s",
                                self.account, _elapsed_ms(began), error)
                    raise
                windows += 1
                requests += window.requests
                fetched += len(window.entries)
                new += added
                covered_until = from_ms(window.end_ms)
                if window.end_ms >= end_ms:
                    return self._end(attempt_id, began, "ok", windows, requests, fetched, new, covered_until)
            # The next window starts on this one's last millisecond: windows touch, so coverage
            # is one stretch, and the shared millisecond is deduplicated.
            start_ms = window.end_ms

    def _end(self, attempt_id: str, began: float, outcome: str, windows: int, requests: int, fetched: int,
             new: int, covered_until: datetime | None) -> SyncResult:
        """The attempt's one summary line, and its result."""
        log.info("ledger sync %s account=%s windows=%d requests=%d fetched=%d new=%d covered_until=%s weight=%s ms=%d%s",
                 outcome, self.account, windows, requests, fetched, new,
                 covered_until.isoformat() if covered_until else "-",
                 self.client.last_reported_weight if self.client.last_reported_weight is not None else "-",
                 _elapsed_ms(began),
                 ": the account was handed to another recorder (or its lease lapsed); nothing more is fetched or "
                 "stored for it here" if outcome == "stopped" else "")
        return SyncResult(attempt_id, windows, requests, fetched, new, covered_until,
                          paused=outcome == "paused", stopped=outcome == "stopped")

    def _hold(self) -> AbstractContextManager[bool]:
        return self.hold() if self.hold is not None else nullcontext(True)

    def _prepare(self, now: datetime) -> tuple[int, datetime | None]:
        """The account's id (created if new) and its newest covered time."""
        try:
            with self._hold() as held:
                if not held:
                    raise _Stopped
                if self.before_write is not None:
                    self.before_write()
                with self.sessions.begin() as session:
                    account = store.ensure_account(session, self.account, self.client.base_url, now)
                    newest = session.execute(
                        select(func.max(_syncs.c.window_end)).where(
                            _syncs.c.account_id == account.id, _syncs.c.outcome == "ok"
                        )
                    ).scalar_one()
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot read the ledger's coverage: {database_error_line(exc)}") from None
        return account.id, _aware(newest)

    def _wait_for_budget(self) -> None:
        budget = self.weight_budget or self.client.weight_wait
        wait = budget(INCOME_WEIGHT)
        if wait <= 0:
            return
        if wait > self.max_pause:
            raise _Paused(f"this IP's weight budget has no room for {INCOME_WEIGHT} more for {wait:.0f}s")
        log.info("ledger sync account=%s waits %.1fs for this IP's weight budget", self.account, wait)
        self.sleep(wait)
        if budget(INCOME_WEIGHT) > 0:
            raise _Paused("this IP's weight budget is still full after waiting")

    def _page(self, window: _Window, start_ms: int, end_ms: int, page: int | None = None) -> FetchedIncome:
        if window.requests >= MAX_PAGES_PER_WINDOW:
            raise BadPayload(f"/fapi/v1/income: more than {MAX_PAGES_PER_WINDOW} pages in one window; not stored")
        with self._hold() as held:
            # Not held through the request: a handover would wait for the exchange's answer.
            if not held:
                raise _Stopped
        self._wait_for_budget()
        window.requests += 1
        try:
            fetched = self.client.fetch_income(start_ms, end_ms, self.page_limit, page=page)
        finally:
            if self.settle_weight is not None:
                self.settle_weight(INCOME_WEIGHT, self.client.last_used_weight)
        window.pages += 1
        window.used_weight = fetched.used_weight
        for entry in fetched.entries:
            window.entries.setdefault(entry.key, entry)
        return fetched

    def _fetch(self, window: _Window) -> None:
        """Every entry of the window into window.entries, paging by time."""
        cursor = window.start_ms
        while True:
            fetched = self._page(window, cursor, window.end_ms)
            if len(fetched.entries) < self.page_limit:
                return
            last = max(entry.time_ms for entry in fetched.entries)
            if last - 1 > window.start_ms:
                # The page holds every entry before its last millisecond: the window ends there,
                # and the next one (which starts on this one's end) reads that millisecond in full.
                # So a window holds one page, not a week of a busy account's entries in memory.
                self._end_early(window, last - 1)
                return
            if last > cursor:
                # Ask the last millisecond again: more of its entries may follow the page's end.
                cursor = last
                continue
            # A whole page in one millisecond: time cannot advance, so read that millisecond by page.
            page = 2
            while True:
                known = len(window.entries)
                if len(self._page(window, cursor, cursor, page).entries) < self.page_limit:
                    break
                if len(window.entries) == known:
                    # A server that ignores `page` (it is undocumented, and newer than the endpoint)
                    # answers page 1 again: going on would only repeat it, and stopping would drop the rest.
                    raise BadPayload(f"/fapi/v1/income: page {page} of the {self.page_limit}+ entries at {cursor} "
                                     "repeats entries already read (the server ignores 'page'); not stored")
                page += 1
            if cursor >= window.end_ms:
                return
            if cursor > window.start_ms:
                self._end_early(window, cursor)  # that millisecond is read in full
                return
            cursor += 1

    @staticmethod
    def _end_early(window: _Window, end_ms: int) -> None:
        """End `window` at `end_ms`, dropping what it read past it (the next window reads that again).

        Only ever later than the window's start: the next window starts on this one's end, so an
        end on the start would read the same page again, forever."""
        window.end_ms = end_ms
        for key in [key for key, entry in window.entries.items() if entry.time_ms > end_ms]:
            del window.entries[key]

    def _store(self, account_id: int, attempt_id: str, window: _Window, started_at: datetime) -> int:
        """The window's entries (insert-if-absent) and its `ok` row, in one transaction; how many were new.

        The caller holds the account (hold()) throughout."""
        recorded_at = self.clock()
        rows = []
        for entry in sorted(window.entries.values(), key=lambda e: (e.time_ms, e.income_type, e.tran_id, e.asset)):
            known = entry.income_type in KNOWN_INCOME_TYPES
            if not known and entry.income_type not in self._warned_types:
                self._warned_types.add(entry.income_type)
                log.warning("income type %s is unknown to this recorder: stored and flagged (known_type false), "
                            "never counted as zero; account=%s", entry.income_type, self.account)
            rows.append({
                "account_id": account_id, "time": entry.time, "income_type": entry.income_type,
                "tran_id": entry.tran_id, "asset": entry.asset, "income": entry.income, "symbol": entry.symbol,
                "info": entry.info, "trade_id": entry.trade_id, "known_type": known, "source": "api",
                "recorded_at": recorded_at,
            })
        try:
            if self.before_write is not None:
                self.before_write()
            with self.sessions.begin() as session:
                connection = session.connection()
                added = 0
                if rows:
                    added = _insert_entries(connection.dialect.name).executemany(connection, rows)
                    # A statement imported before the API caught up holds these movements without
                    # Binance's key: its copies go in the same transaction, or they would count twice.
                    superseded = supersede_statement_entries(session, account_id, from_ms(window.start_ms),
                                                             from_ms(window.end_ms + 1))
                    if superseded:
                        log.info("ledger sync account=%s: %d statement-imported entries superseded by the API's",
                                 self.account, superseded)
                connection.execute(_syncs.insert().values(
                    **self._sync_row(account_id, attempt_id, window, started_at, "ok"), entries_new=added,
                ))
        except SQLAlchemyError as exc:
            error = StorageError(f"cannot store the ledger window: {database_error_line(exc)}")
            self._insert_failure(self._failure_row(account_id, attempt_id, window, started_at, error))
            raise error from None
        return added

    def _sync_row(self, account_id: int, attempt_id: str, window: _Window, started_at: datetime,
                  outcome: str) -> dict[str, object]:
        return {
            "account_id": account_id, "attempt_id": attempt_id, "started_at": started_at,
            "finished_at": max(self.clock(), started_at), "window_start": from_ms(window.start_ms),
            "window_end": from_ms(window.end_ms), "outcome": outcome, "pages": window.pages,
            "requests": window.requests, "entries_fetched": len(window.entries),
            "used_weight": _storable_weight(window.used_weight),
        }

    def _record_failure(self, account_id: int, attempt_id: str, window: _Window, started_at: datetime,
                        error: ExchangeError | StorageError) -> None:
        """A `failed` row for the window while the account is still this process's; if the database
        cannot take it either, one ERROR line."""
        row = self._failure_row(account_id, attempt_id, window, started_at, error)
        with self._hold() as held:
            # Handed over meanwhile: the new holder's syncs cover the window, and only it writes now.
            if held:
                self._insert_failure(row)

    def _failure_row(self, account_id: int, attempt_id: str, window: _Window, started_at: datetime,
                     error: ExchangeError | StorageError) -> dict[str, object]:
        failure = store.describe_failure(error)
        row = self._sync_row(account_id, attempt_id, window, started_at, "failed")
        row.update(
            entries_new=0, error_class=failure.error_class,
            error_message=clean_text(failure.message)[:ERROR_MESSAGE_LIMIT],
            http_status=_bounded(failure.http_status, 0, 999),
            error_code=_bounded(failure.code, -(2**63), 2**63 - 1),
            used_weight=_storable_weight(failure.used_weight if failure.used_weight is not None else window.used_weight),
        )
        return row

    def _insert_failure(self, row: dict[str, object]) -> None:
        try:
            if self.before_write is not None:
                self.before_write()
            with self.sessions.begin() as session:
                session.connection().execute(_syncs.insert().values(**row))
        except SQLAlchemyError as exc:
            log.error("ledger sync account=%s: cannot record the failed window either: %s",
                      self.account, database_error_line(exc))


def _storable_weight(weight: int | None) -> int | None:
    """The weight header as a BIGINT holds it; a hostile count past that is unknown (NULL), not an error."""
    return _bounded(weight, 0, 2**63 - 1)


def _bounded(value: int | None, low: int, high: int) -> int | None:
    # Compared, never `in range(...)`: a None there would make range scan all of itself.
    return value if isinstance(value, int) and low <= value <= high else None


def _aware(value: datetime | str | None) -> datetime | None:
    """max() over a UtcDateTime column comes back untyped on SQLite (text); make it an aware datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _elapsed_ms(began: float) -> int:
    return round((time.perf_counter() - began) * 1000)
