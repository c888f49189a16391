"""poll_once() and run(): one poll as one transaction, and the APScheduler loop around it."""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from recorder import coverage, store
from recorder.db import database_error_line
from recorder.errors import ConfigError, ExchangeError, RecorderError, RejectedPoll, SpoolError, StorageError
from recorder.exchange import BinanceFuturesClient
from recorder.locks import WriterLock
from recorder.records import FetchedBalances
from recorder.spool import CorruptEntry, ForeignEntry, PollFailure, Spool, SpooledPoll
from recorder.storable import UnstorableValue, clean_text, storable_fetched, with_notes
from recorder.store import ERROR_MESSAGE_LIMIT, PollOutcome, describe_failure

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
SHUTDOWN_GRACE_SECONDS = 4.0
# How often the main thread looks for a stop request; bounds the reaction to SIGTERM.
STOP_CHECK_SECONDS = 0.1


def utcnow() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(timezone.utc)


@dataclass
class Recorder:
    """Everything one account's polls need: the exchange client, the database, our label.

    With a spool, a poll the database cannot take is kept on local disk and stored, in
    order, before the next poll; with a writer lock, the lock is checked before each write.
    """

    client: BinanceFuturesClient
    sessions: sessionmaker[Session]
    account: str
    clock: Clock = utcnow
    spool: Spool | None = None
    lock: WriterLock | None = None
    _last_finished_at: datetime | None = field(default=None, init=False, repr=False)

    def poll_once(self) -> PollOutcome:
        """Fetch balances once and store them atomically; a failure is logged, stored and raised.

        Whatever goes wrong, the attempt leaves a `polls` row or a spool entry, or (database
        and spool both failing) one ERROR line naming the lost poll.
        """
        uid = str(uuid.uuid4())
        started_at = self.clock()
        began = time.perf_counter()
        fetched: FetchedBalances | None = None
        error: ExchangeError | None = None
        try:
            fetched = self.client.fetch_balances()
        except ExchangeError as exc:
            error = exc
            log.warning(
                "poll failed account=%s error=%s ms=%d: %s",
                self.account,
                type(exc).__name__,
                _elapsed_ms(began),
                _one_line(str(exc)),
            )
        entry = SpooledPoll(
            uid=uid,
            account=self.account,
            base_url=self.client.base_url,
            endpoint=self.client.balance_path,
            started_at=started_at,
            finished_at=self._next_finished_at(started_at),
            fetched=fetched,
            failure=describe_failure(error) if error else None,
        )
        try:
            outcome = self._store_or_spool(entry, began)
        except StorageError:
            if error is not None:
                raise error from None  # the exchange failure is the news; its record waits in the spool
            raise
        if error is not None:
            raise error
        log.info(
            "poll ok account=%s assets=%d changed=%d weight=%s ms=%d",
            self.account,
            outcome.asset_count,
            outcome.changed_count,
            outcome.used_weight if outcome.used_weight is not None else "-",
            _elapsed_ms(began),
        )
        return outcome

    def _next_finished_at(self, started_at: datetime) -> datetime:
        """Now, but strictly after this recorder's previous poll: (account, finished_at) is a
        poll's key, and a coarse or stepped-back clock must not make two polls one."""
        finished_at = max(self.clock(), started_at)
        if self._last_finished_at is not None and finished_at <= self._last_finished_at:
            finished_at = self._last_finished_at + timedelta(microseconds=1)
        self._last_finished_at = finished_at
        return finished_at

    def replay_spool(self) -> int:
        """Store spooled polls, oldest first; stop at the first database failure (StorageError).

        An entry that cannot be read back, or that the database refuses for its content, is
        set aside with one log line and the replay goes on with the next: none blocks the queue.
        """
        if self.spool is None:
            return 0
        try:
            paths = self.spool.pending()
        except SpoolError as error:
            log.error("%s: older spooled polls wait until it can", error)
            return 0
        if paths and self.lock is not None:
            self.lock.ensure()
        replayed = 0
        for path in paths:
            try:
                entry = self.spool.load(path)
            except CorruptEntry as error:
                self.spool.set_aside(path, "corrupt", f"cannot be read back ({error})")
                continue
            except ForeignEntry as error:
                self.spool.set_aside(path, "rejected", f"is not for this database and account ({error})")
                continue
            try:
                self._write(entry)
            except (ConfigError, RejectedPoll) as error:
                self.spool.set_aside(path, "rejected", f"(poll {_one_line(entry.uid)[:64]}) is refused: {error}")
                continue
            try:
                self.spool.remove(path)
            except OSError as exc:
                # Stored already: replaying it again would store nothing, so skip it until restart.
                self.spool.skipped.add(path)
                log.error("cannot remove the stored spool entry %s: %s", path, exc.strerror or exc)
            replayed += 1
        if replayed:
            log.info("stored %d spooled poll(s) after the database came back", replayed)
        return replayed

    def _store_or_spool(self, entry: SpooledPoll, began: float) -> PollOutcome:
        try:
            self.replay_spool()
            return self._store(entry)
        except RejectedPoll as error:
            log.error(
                "poll rejected account=%s finished_at=%s ms=%d: %s; recorded as a failed poll",
                self.account,
                entry.finished_at.isoformat(),
                _elapsed_ms(began),
                error,
            )
            self._keep(_refusal(entry, error), began)
            raise
        except StorageError as error:
            raise self._spool(entry, error, began) from None
        except ConfigError as error:
            if entry.fetched is None:
                raise
            # The exchange answered, but the answer does not belong in this account (another
            # alias or environment): record the refusal so the poll log explains the gap.
            self._keep(_refusal(entry, error), began)
            raise

    def _keep(self, entry: SpooledPoll, began: float) -> None:
        """Store a poll's failure row, or spool it, or log it lost: never raises a storage error."""
        try:
            self._store(entry)
        except StorageError as error:
            if isinstance(error, RejectedPoll):
                log.error("poll lost account=%s uid=%s: its failure row was refused too: %s", self.account, entry.uid, error)
                return
            self._spool(entry, error, began)
        except ConfigError as error:
            log.error("could not record the refused poll: %s", error)

    def _spool(self, entry: SpooledPoll, error: StorageError, began: float) -> StorageError:
        """Keep `entry` in the spool; the error to raise: the database's, or SpoolError for a lost poll."""
        if self.spool is None:
            log.error("poll failed account=%s error=StorageError ms=%d: %s", self.account, _elapsed_ms(began), error)
            return error
        if entry.fetched is not None:
            try:
                storable_fetched(entry.fetched)
            except UnstorableValue as exc:
                # Spooled as it is, it would be set aside at replay and leave no row: spool its refusal.
                entry = _refusal(entry, RejectedPoll(f"the poll cannot be stored: {exc}"))
        try:
            path = self.spool.put(entry)
        except SpoolError as spool_error:
            message = (
                f"poll lost: uid={entry.uid} finished_at={entry.finished_at.isoformat()} account={self.account!r}; "
                f"database: {error}; spool: {spool_error}"
            )
            log.error("%s", message)
            return SpoolError(message)
        message = f"{error}; the poll is kept in {path} and will be stored when the database is back"
        log.error("poll spooled account=%s ms=%d: %s", self.account, _elapsed_ms(began), message)
        return StorageError(message)

    def _store(self, entry: SpooledPoll) -> PollOutcome:
        """Write one poll in one transaction, holding the writer lock."""
        if self.lock is not None:
            self.lock.ensure()
        return self._write(entry)

    def _write(self, entry: SpooledPoll) -> PollOutcome:
        """One transaction; a refused value becomes RejectedPoll, an unavailable database StorageError."""
        recorded_at = self.clock()
        try:
            with self.sessions.begin() as session:
                account = store.ensure_account(session, entry.account, entry.base_url, entry.started_at)
                return store.record_entry(session, account, entry, recorded_at=recorded_at)
        except SQLAlchemyError as exc:
            if store.rejected_for_content(exc):
                raise RejectedPoll(f"the database refused the poll: {_database_problem(exc)}") from None
            raise StorageError(f"cannot store the poll: {_database_problem(exc)}") from None
        except store.CONTENT_ERRORS as exc:
            raise RejectedPoll(f"the poll cannot be stored: {type(exc).__name__}: {_one_line(str(exc))[:300]}") from None


def _refusal(entry: SpooledPoll, error: RecorderError) -> SpooledPoll:
    """The failed-poll row standing for `entry`, which could not be stored as it is."""
    if isinstance(error, ConfigError):
        return replace(entry, fetched=None, failure=describe_failure(error))
    # Only text survives: a number the database refused might be the cause.
    note = f"[not storable as received: {error}]"
    if entry.failure is None:
        failure = PollFailure("RejectedPoll", note)
    else:
        failure = PollFailure(entry.failure.error_class, with_notes(entry.failure.message, [note], ERROR_MESSAGE_LIMIT))
    return replace(entry, fetched=None, failure=failure)


@dataclass(frozen=True)
class RunResult:
    """How run() ended: the exit code, and whether a poll was abandoned mid-request."""

    exit_code: int
    abandoned_poll: bool


@dataclass(frozen=True)
class PeriodicJob:
    """Another job of the run loop beside the polls (e.g. the ledger sync): `call()` every `interval` s.

    It runs under the same in-flight lock as the polls, so it never uses the exchange client
    from a second thread; a RecorderError it raises is logged by it and the next run goes on.
    """

    name: str
    interval: float
    call: Callable[[], object]


def run(recorder: Recorder, interval: float, *, stop_after: float | None = None,
        extra_jobs: Sequence[PeriodicJob] = ()) -> RunResult:
    """Poll every `interval` seconds, and run each of `extra_jobs` on its own interval, until
    SIGTERM/SIGINT (or `stop_after` seconds)."""
    # A BackgroundScheduler and a main thread that only sleeps and checks a flag: the signal
    # handler then needs no lock. Shutting a BlockingScheduler down from the handler sets a
    # threading.Event, which deadlocks when the signal lands while the main thread holds
    # that Event's lock inside its own wait() (seen here as a SIGTERM that never stopped).
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    in_flight = threading.Lock()
    stop: dict[str, object] = {}

    started_at = utcnow()
    declared = [declare_schedule(recorder, interval, source="run", at=started_at)]

    def tick() -> None:
        with in_flight:
            if "reason" in stop:
                return  # waited for another job past the stop request: nothing more starts
            if not declared[0]:
                # The database was unavailable at start: the schedule still dates from then,
                # before any poll this run spooled meanwhile.
                declared[0] = declare_schedule(recorder, interval, source="run", at=started_at)
            try:
                recorder.poll_once()
            except ConfigError as error:
                # Configuration problems (another account's key, mixed environments) need a human.
                log.error("stopping: %s", error)
                stop.setdefault("reason", "a configuration error")
                stop.setdefault("exit_code", 1)
            except RecorderError:
                pass  # already logged and recorded as a failed poll; the next tick goes on

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.setdefault("reason", f"received {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    scheduler.add_job(
        tick,
        "interval",
        seconds=interval,
        next_run_time=utcnow(),
        max_instances=1,
        coalesce=True,
        misfire_grace_time=max(1, int(interval)),
        id="poll",
    )
    for job in extra_jobs:
        scheduler.add_job(
            _guarded(job, in_flight, stop),
            "interval",
            seconds=job.interval,
            next_run_time=utcnow(),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(job.interval)),
            id=job.name,
        )
    deadline = None if stop_after is None else time.monotonic() + stop_after
    log.info("recording account=%s every %gs; stop with Ctrl-C or SIGTERM", recorder.account, interval)
    scheduler.start()
    try:
        while "reason" not in stop:
            if deadline is not None and time.monotonic() >= deadline:
                stop.setdefault("reason", "the set duration is over")
                break
            time.sleep(STOP_CHECK_SECONDS)
    finally:
        log.info("%s: finishing the current poll and stopping", stop.get("reason", "interrupted"))
        scheduler.shutdown(wait=False)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # A poll still running finishes (its transaction commits whole) or is abandoned before
    # writing; either way no half-written poll exists, because one poll is one transaction.
    abandoned = not in_flight.acquire(timeout=SHUTDOWN_GRACE_SECONDS)
    if abandoned:
        log.warning("a poll was still waiting for the exchange at shutdown; it is abandoned, nothing of it is stored")
    else:
        in_flight.release()
    log.info("stopped")
    return RunResult(int(stop.get("exit_code", 0)), abandoned)


def _guarded(job: PeriodicJob, in_flight: threading.Lock, stop: dict[str, object]) -> Callable[[], None]:
    def tick() -> None:
        with in_flight:
            if "reason" in stop:
                return  # waited for the poll past the stop request: nothing more starts
            try:
                job.call()
            except ConfigError as error:
                log.error("stopping: %s: %s", job.name, error)
                stop.setdefault("reason", "a configuration error")
                stop.setdefault("exit_code", 1)
            except RecorderError:
                pass  # already logged and recorded by the job; its next run goes on

    return tick


def declare_schedule(recorder: Recorder, interval: float, *, source: str, at: datetime) -> bool:
    """Store the interval this recorder polls the account at from `at` on; False if the database cannot take it now.

    Readers judge gaps and staleness by it (recorder.coverage), so it is written by the
    writer, in the database, instead of read from each reader's environment.
    """
    try:
        if recorder.lock is not None:
            recorder.lock.ensure()
        with recorder.sessions.begin() as session:
            account = store.ensure_account(session, recorder.account, recorder.client.base_url, at)
            changed = coverage.declare_schedule(session.connection(), account.id, interval, source=source, at=at)
    except (RecorderError, SQLAlchemyError) as exc:
        problem = _database_problem(exc) if isinstance(exc, SQLAlchemyError) else str(exc)
        log.warning("could not store the poll schedule (every %gs) yet: %s", interval, problem)
        return False
    if changed:
        log.info("poll schedule account=%s every %gs from %s (%s)", recorder.account, interval, at.isoformat(), source)
    return True


def _elapsed_ms(began: float) -> int:
    return round((time.perf_counter() - began) * 1000)


def _database_problem(exc: BaseException) -> str:
    return f"{type(getattr(exc, 'orig', None) or exc).__name__}: {_one_line(database_error_line(exc))[:300]}"


def _one_line(text: str) -> str:
    """Text for a log line: whatever the exchange put in it, it stays one line."""
    return clean_text(text)
