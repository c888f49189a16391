"""LedgerSync: archive Binance's income ledger (GET /fapi/v1/income) into `income_entries`, exactly once.

A sync walks from the newest covered time (minus OVERLAP) to now in windows of at most WINDOW,
each window paged by time with pages of at most PAGE_LIMIT entries. A window is one transaction:
its entries (insert-if-absent on the key account, incomeType, tranId, asset) and its `ok` row in
`ledger_syncs` commit together, so a crash or a failure never leaves a window recorded as covered
with entries missing; the next sync starts again from the newest covered time and the overlap is
deduplicated by the key. A failed window gets a `failed` row and ends the attempt.

Entries without a usable tranId (0, or negative: recorder.ledger.keys) are keyed by a synthetic id
from their content and their occurrence among identical entries. Identical entries in one answer
are that many movements; the same millisecond asked again (paging, touching windows, OVERLAP)
shows them again, so a window keeps, per content, the most any one answer held (a multiset union,
never a sum). An entry with a real key that arrives with other content than the same window or
the archive holds is a contradiction: the window fails naming the key and the field, nothing of
it is stored, and each later sync fails on it again until someone looks.

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
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from recorder import store
from recorder.db import database_error_line
from recorder.db_types import aware_utc
from recorder.errors import BadPayload, ExchangeError, StorageError
from recorder.exchange import INCOME_PATH
from recorder.ledger.keys import api_tran_id, archived_with_keys, content_key, usable_tran_id
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
    # Entries with a real tranId, by Binance's key.
    entries: dict[tuple[str, int, str], IncomeRecord] = field(default_factory=dict)
    # Entries without one, by content (keys.content_key): one of them, and how many there are.
    unkeyed: dict[tuple[object, ...], IncomeRecord] = field(default_factory=dict)
    unkeyed_counts: Counter[tuple[object, ...]] = field(default_factory=Counter)
    requests: int = 0
    pages: int = 0
    used_weight: int | None = None

    @property
    def count(self) -> int:
        return len(self.entries) + sum(self.unkeyed_counts.values())

    def merge(self, answer: Counter[tuple[object, ...]]) -> None:
        """One answer's entries without an id: per content, the most any answer held."""
        for content, count in answer.items():
            if count > self.unkeyed_counts[content]:
                self.unkeyed_counts[content] = count

    def records(self) -> list[IncomeRecord]:
        """Every entry to store, those without an id under their synthetic ids."""
        records = list(self.entries.values())
        for content, count in self.unkeyed_counts.items():
            entry = self.unkeyed[content]
            records.extend(replace(entry, tran_id=api_tran_id(entry, occurrence)) for occurrence in range(count))
        return records


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
                except ExchangeError as error:
                    log.warning("ledger sync failed account=%s window=%s..%s error=%s ms=%d: %s",
                                self.account, from_ms(window.start_ms).isoformat(), from_ms(window.end_ms).isoformat(),
                                type(error).__name__, _elapsed_ms(began), clean_text(str(error)))
                    raise
                windows += 1
                requests += window.requests
                fetched += window.count
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
        return account.id, aware_utc(newest)

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

    def _page(self, window: _Window, answer: Counter[tuple[object, ...]], start_ms: int, end_ms: int,
              page: int | None = None) -> FetchedIncome:
        """One request; its entries with an id into the window, those without counted into `answer`."""
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
            if not usable_tran_id(entry.tran_id):
                content = content_key(entry)
                window.unkeyed.setdefault(content, entry)
                answer[content] += 1
                continue
            known = window.entries.setdefault(entry.key, entry)
            difference = _difference(known, entry)
            if difference is not None:
                name, before, after = difference
                raise BadPayload(f"{INCOME_PATH}: {_key_text(entry)} came twice in this window with {name} "
                                 f"{before} and {after}; not stored")
        return fetched

    def _fetch(self, window: _Window) -> None:
        """Every entry of the window into window.entries, paging by time."""
        cursor = window.start_ms
        while True:
            answer: Counter[tuple[object, ...]] = Counter()
            fetched = self._page(window, answer, cursor, window.end_ms)
            if len(fetched.entries) < self.page_limit:
                window.merge(answer)
                return
            last = max(entry.time_ms for entry in fetched.entries)
            if last - 1 > window.start_ms:
                # The page holds every entry before its last millisecond: the window ends there,
                # and the next one (which starts on this one's end) reads that millisecond in full.
                # So a window holds one page, not a week of a busy account's entries in memory.
                window.merge(answer)
                self._end_early(window, last - 1)
                return
            if last > cursor:
                # Ask the last millisecond again: more of its entries may follow the page's end.
                window.merge(answer)
                cursor = last
                continue
            # A whole page in one millisecond: time cannot advance, so read that millisecond by page.
            # Its pages are one answer cut in parts: their counts add up, before the window takes the maximum.
            page = 2
            previous = fetched.entries
            while True:
                known = len(window.entries)
                fetched = self._page(window, answer, cursor, cursor, page)
                if len(fetched.entries) < self.page_limit:
                    break
                if fetched.entries == previous or (
                        len(window.entries) == known and all(usable_tran_id(e.tran_id) for e in fetched.entries)):
                    # A server that ignores `page` (it is undocumented, and newer than the endpoint)
                    # answers page 1 again: going on would only repeat it, and stopping would drop the rest.
                    # A whole page of identical entries without an id, twice, looks the same: refused too,
                    # since which it is cannot be told.
                    raise BadPayload(f"/fapi/v1/income: page {page} of the {self.page_limit}+ entries at {cursor} "
                                     "repeats entries already read (the server ignores 'page'); not stored")
                previous = fetched.entries
                page += 1
            window.merge(answer)
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
        for content in [content for content, entry in window.unkeyed.items() if entry.time_ms > end_ms]:
            del window.unkeyed[content]
            del window.unkeyed_counts[content]

    def _store(self, account_id: int, attempt_id: str, window: _Window, started_at: datetime) -> int:
        """The window's entries (insert-if-absent) and its `ok` row, in one transaction; how many were new.

        The caller holds the account (hold()) throughout."""
        recorded_at = self.clock()
        rows = []
        records: dict[tuple[str, int, str], IncomeRecord] = {}
        for entry in window.records():
            if records.setdefault(entry.key, entry) is not entry:
                # Two different contents hashed to one synthetic id (odds 2^-62): refused, never merged.
                raise BadPayload(f"{INCOME_PATH}: two different entries share the synthetic key {_key_text(entry)}; "
                                 "not stored")
        for entry in sorted(records.values(), key=lambda e: (e.time_ms, e.income_type, e.tran_id, e.asset)):
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
                    # Raises inside the transaction: a contradiction stores nothing of the window.
                    _check_archived(connection, account_id, list(records.values()))
                    added = _insert_entries(connection.dialect.name).executemany(connection, rows)
                    # A statement imported before the API caught up holds these movements without
                    # Binance's key: its copies go in the same transaction, or they would count twice.
                    superseded = supersede_statement_entries(session, account_id, from_ms(window.start_ms),
                                                             from_ms(window.end_ms + 1))
                    if superseded:
                        log.info("ledger sync account=%s: %d file-imported entries without Binance's id superseded by the API's",
                                 self.account, superseded)
                connection.execute(_syncs.insert().values(
                    **self._sync_row(account_id, attempt_id, window, started_at, "ok"), entries_new=added,
                ))
        except SQLAlchemyError as exc:
            error = StorageError(f"cannot store the ledger window: {database_error_line(exc)}")
            self._insert_failure(self._failure_row(account_id, attempt_id, window, started_at, error))
            raise error from None
        except BadPayload as error:
            self._record_failure(account_id, attempt_id, window, started_at, error)
            raise
        return added

    def _sync_row(self, account_id: int, attempt_id: str, window: _Window, started_at: datetime,
                  outcome: str) -> dict[str, object]:
        return {
            "account_id": account_id, "attempt_id": attempt_id, "started_at": started_at,
            "finished_at": max(self.clock(), started_at), "window_start": from_ms(window.start_ms),
            "window_end": from_ms(window.end_ms), "outcome": outcome, "pages": window.pages,
            "requests": window.requests, "entries_fetched": window.count,
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


def _key_text(entry: IncomeRecord) -> str:
    return f"{entry.income_type} tranId {entry.tran_id} {entry.asset}"


def _difference(known: IncomeRecord, entry: IncomeRecord) -> tuple[str, object, object] | None:
    """The first field in which two entries with one key differ: (its name, known value, new value)."""
    for name, before, after in (("time", known.time_ms, entry.time_ms), ("income", known.income, entry.income),
                                ("symbol", known.symbol, entry.symbol), ("info", known.info, entry.info),
                                ("tradeId", known.trade_id, entry.trade_id)):
        if before != after:
            return name, _shown(before), _shown(after)
    return None


def _shown(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _check_archived(connection: Any, account_id: int, entries: list[IncomeRecord]) -> None:
    """Raise BadPayload if an entry whose key the archive already holds differs from the archived one.

    An API row must match in every field; a file's row holds less (time in whole seconds, no info
    or trade id), so it is compared on what it has: the amount, and the time within a second
    either way, since whether Binance's export truncates or rounds the milliseconds is unknown.
    """
    by_key = {entry.key: entry for entry in entries}
    for key, row in archived_with_keys(connection, account_id, by_key).items():
        entry = by_key[key]
        stored_ms = to_ms(aware_utc(row.time))
        if row.source == "api":
            stored = IncomeRecord(time=aware_utc(row.time), time_ms=stored_ms, income_type=row.income_type,
                                  tran_id=row.tran_id, asset=row.asset, income=row.income, symbol=row.symbol,
                                  info=row.info, trade_id=row.trade_id)
            difference = _difference(stored, entry)
        elif abs(entry.time_ms - stored_ms) >= 1000:
            difference = "time", str(aware_utc(row.time)), str(entry.time)
        elif row.income != entry.income:
            difference = "income", str(row.income), str(entry.income)
        else:
            difference = None
        if difference is not None:
            name, before, after = difference
            raise BadPayload(f"{INCOME_PATH}: {_key_text(entry)} arrived again with {name} {after} where "
                             f"the archive holds {before} (from {row.source}); window not stored")


def _storable_weight(weight: int | None) -> int | None:
    """The weight header as a BIGINT holds it; a hostile count past that is unknown (NULL), not an error."""
    return _bounded(weight, 0, 2**63 - 1)


def _bounded(value: int | None, low: int, high: int) -> int | None:
    # Compared, never `in range(...)`: a None there would make range scan all of itself.
    return value if isinstance(value, int) and low <= value <= high else None


def _elapsed_ms(began: float) -> int:
    return round((time.perf_counter() - began) * 1000)
