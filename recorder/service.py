"""poll_once() and run(): one poll as one transaction, and the deadline loop that runs it for one or many accounts."""

from __future__ import annotations

import heapq
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from recorder import coverage, store
from recorder.config import Settings, environment_of
from recorder.db import database_error_line
from recorder.errors import (ConfigError, ExchangeError, HandedOver, RateLimited, RecorderError, RejectedPoll,
                             SpoolError, StorageError)
from recorder.exchange import INCOME_PATH, REQUEST_WEIGHT, SERVER_TIME_PATH, BinanceFuturesClient
from recorder.locks import WriterLock
from recorder.records import FetchedBalances
from recorder.scheduling import (Demand, LeaseBook, Slot, Wakeup, WeightBudget, lease_seconds, plan_intervals,
                                 spread_slots)
from recorder.spool import CorruptEntry, ForeignEntry, PollFailure, Spool, SpooledPoll
from recorder.storable import UnstorableValue, clean_text, storable_fetched, with_notes
from recorder.store import ERROR_MESSAGE_LIMIT, PollOutcome, describe_failure

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from recorder.db import WriteSessions

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
SHUTDOWN_GRACE_SECONDS = 4.0


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
    # write_sessions() (Core, as the service uses it) or an ORM sessionmaker (library use, tests).
    sessions: WriteSessions | sessionmaker[Session]
    account: str
    clock: Clock = utcnow
    spool: Spool | None = None
    lock: WriterLock | None = None
    # Told of every poll: (account, PollOutcome or None, the error raised or None, seconds).
    observer: Callable[[str, PollOutcome | None, BaseException | None, float], None] | None = None
    # Told of every ledger sync the run loop makes for the account: (account, SyncResult or None, the
    # error raised or None); recorder.cli.ledger_job reads it at each sync, so it may be set later.
    ledger_observer: Callable[[str, Any, BaseException | None], None] | None = None
    # Whether this process still holds the account, held through the poll's writes (run --config's
    # lease, LeaseBook.holding); None: always (one process per account, the writer lock's job).
    hold: Callable[[], AbstractContextManager[bool]] | None = None
    _last_finished_at: datetime | None = field(default=None, init=False, repr=False)
    # Only with a writer lock: see store.HeadCache for why the lock makes it sound.
    _heads: store.HeadCache = field(default_factory=store.HeadCache, init=False, repr=False)
    _heads_lock_generation: int | None = field(default=None, init=False, repr=False)
    _connection: Connection | None = field(default=None, init=False, repr=False)

    def poll_once(self) -> PollOutcome:
        """Poll (see _poll_once) and tell the observer how it went; its own failure never fails the poll."""
        began = time.perf_counter()
        outcome, error = None, None
        try:
            outcome = self._poll_once()
            return outcome
        except BaseException as exc:
            # Whatever ends the poll, a bug included, is not a success in the figures.
            error = exc
            raise
        finally:
            # A poll handed over with its account is its new holder's to count, not this process's.
            if self.observer is not None and not isinstance(error, HandedOver):
                try:
                    self.observer(self.account, outcome, error, time.perf_counter() - began)
                except Exception:  # noqa: BLE001 - figures are a side show: the poll's result stands
                    log.exception("the poll observer failed")

    def _poll_once(self) -> PollOutcome:
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
            paths = self.spool.waiting()
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
        if self.hold is None:
            return self._store_or_spool_held(entry, began)
        # Held through the writes (spool replay and failure rows included): a handover waits for
        # them, so once the next holder may write, this process never writes for the account again.
        with self.hold() as held:
            if not held:
                log.info("poll dropped account=%s finished_at=%s: the account was handed to another recorder "
                         "before this poll was stored; that recorder polls it now",
                         self.account, entry.finished_at.isoformat())
                raise HandedOver(f"account {self.account} is another recorder's now: this poll is not stored here")
            return self._store_or_spool_held(entry, began)

    def _store_or_spool_held(self, entry: SpooledPoll, began: float) -> PollOutcome:
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
            return self._transaction(entry, recorded_at)
        except SQLAlchemyError as exc:
            if store.rejected_for_content(exc):
                raise RejectedPoll(f"the database refused the poll: {_database_problem(exc)}") from None
            raise StorageError(f"cannot store the poll: {_database_problem(exc)}") from None
        except store.CONTENT_ERRORS as exc:
            raise RejectedPoll(f"the poll cannot be stored: {type(exc).__name__}: {_one_line(str(exc))[:300]}") from None

    def _transaction(self, entry: SpooledPoll, recorded_at: datetime) -> PollOutcome:
        """One poll's transaction; holding the writer lock, on a kept connection through the head cache."""
        cache = self._head_cache()
        # Core connections rather than ORM Sessions: the store writes Core statements only,
        # and the Session's own bookkeeping cost about 0.15 ms of CPU a poll for nothing.
        bind = self.sessions.kw.get("bind")
        if cache is None or bind is None:
            with (bind.begin() if bind is not None else self.sessions.begin()) as session:
                account = store.ensure_account(session, entry.account, entry.base_url, entry.started_at)
                return store.record_entry(session, account, entry, recorded_at=recorded_at)
        try:
            return self._kept_transaction(bind, cache, entry, recorded_at)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # The kept connection was dead (a restarted server, an idle connection dropped by a
            # firewall): what the pool's pre-ping did, once, on a new connection. Nothing was
            # stored, or if the commit did go through, the poll's key makes the retry store nothing.
            log.info("the database connection was lost since the last poll; writing on a new one")
            return self._kept_transaction(bind, self._head_cache(), entry, recorded_at)

    def _kept_transaction(
        self, bind: Engine, cache: store.HeadCache, entry: SpooledPoll, recorded_at: datetime
    ) -> PollOutcome:
        try:
            if self._connection is None:
                # Kept between polls: a pool checkout and return (and PostgreSQL's pre-ping
                # round trip) per poll cost more CPU than the poll's own SQL.
                self._connection = bind.connect()
            with self._connection.begin():
                cache.begin()
                account = cache.account
                if account is None or (account.label, account.environment) != (entry.account, environment_of(entry.base_url)):
                    # First write, or a spooled poll from another endpoint: ensure_account checks it.
                    account = store.ensure_account(self._connection, entry.account, entry.base_url, entry.started_at)
                outcome = store.record_entry(self._connection, account, entry, recorded_at=recorded_at, cache=cache)
            cache.commit(account)
            return outcome
        except BaseException:
            # Rolled back, or not known to have committed: the next write reads the database
            # again, on a new connection.
            self._forget_database_state()
            raise

    def schedule_declared(self, started_at: datetime) -> None:
        """A schedule starting at `started_at` is being stored for this account outside the poll's transaction."""
        self._heads.schedule_declared(started_at)

    def close(self) -> None:
        """Close the connection kept between polls; the client and the writer lock are the caller's to close."""
        self._forget_database_state()

    def _forget_database_state(self) -> None:
        """Drop the head cache and the kept connection (after a failure, or the lock taken again)."""
        self._heads.clear()
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.invalidate()  # never back to the pool: it failed, or the server may be another
                connection.close()
            except SQLAlchemyError:
                pass  # already broken: dropping it is all that is left to do

    def _head_cache(self) -> store.HeadCache | None:
        """The head cache, valid while the writer lock has been held without a break; None without a lock."""
        if self.lock is None:
            return None
        if self._heads_lock_generation != self.lock.generation:
            # The lock was (re)taken since the cache was filled: another writer may have written
            # meanwhile (and on PostgreSQL the server may have restarted under the kept connection).
            self._forget_database_state()
            self._heads_lock_generation = self.lock.generation
        return self._heads


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

    It runs for one account and never at the same time as that account's poll, so the account's
    exchange client is never used from two threads; a RecorderError it raises is logged by it and
    its next run goes on.
    """

    name: str
    interval: float
    call: Callable[[], object]
    # None: first at start, then every `interval`. Else at its slots `phase + k * interval`
    # (wall clock), so many accounts' jobs spread over the interval instead of all at start.
    phase: float | None = None


@dataclass(frozen=True)
class JobPlan:
    """Where an account's periodic job sits in `run --config`'s shared schedule and budget."""

    budget: WeightBudget
    interval: float  # the planned interval (stretched when the polls leave the ledger less than it asks)
    phase: float
    leave: float  # weight a minute the job leaves free for the polls (plan.polls_per_minute)
    # Whether this process still holds the account, held through a write (LeaseBook.holding); None: always.
    hold: Callable[[], AbstractContextManager[bool]] | None = None


def run(recorder: Recorder, interval: float, *, stop_after: float | None = None,
        extra_jobs: Sequence[PeriodicJob] = (), budget: WeightBudget | None = None) -> RunResult:
    """Poll one account every `interval` seconds, the first poll at once, and run each of `extra_jobs`
    on its own interval, until SIGTERM/SIGINT (or `stop_after` s).

    `budget`: the IP's weight budget, the one the jobs (the ledger sync) reserve from too.
    """
    started = time.time()
    member = Member(recorder, Slot(phase=started, interval=interval), weight=_poll_weight(recorder))
    log.info("recording account=%s every %gs; stop with Ctrl-C or SIGTERM", recorder.account, interval)
    return run_accounts([member], budget=budget or WeightBudget(recorder.client.weight_limit), first_at=started,
                        stop_after=stop_after, single=True, extra_jobs=[(member, job) for job in extra_jobs])


@dataclass
class Member:
    """One account in the run loop: its recorder, its slots and its state."""

    recorder: Recorder
    slot: Slot
    weight: int
    busy: bool = False
    stopped: bool = False
    declared: bool = False
    declared_at: datetime | None = None
    # Busy with a PeriodicJob (the ledger sync) rather than a poll: the poll waits for it instead of
    # skipping its slot, as it waited before the loop had its own scheduler.
    job_running: bool = False


def run_accounts(
    members: list[Member],
    *,
    budget: WeightBudget,
    first_at: float | None = None,
    leases: LeaseBook | None = None,
    on_lease: Callable[[Member, bool], None] | None = None,
    workers: int = 16,
    stop_after: float | None = None,
    single: bool = False,
    close_between_polls: bool = False,
    extra_jobs: Sequence[tuple[Member, PeriodicJob]] = (),
) -> RunResult:
    """Poll every member at its slots on a small thread pool until SIGTERM/SIGINT or `stop_after` seconds.

    The main thread sleeps until the next slot (or lease refresh) and wakes for nothing else:
    no timer ticks between polls. A member still polling at its next slot skips that slot, so a
    slow or hung account holds one worker and delays no other. Every poll first reserves its
    weight from `budget`; without room it waits for the next minute instead of earning a 429.
    With `leases`, only the accounts this process leases are polled; `on_lease(member, held)`
    runs when one is gained or given up. With `single` (one account, `run`), the polls run on
    the calling thread and only the extra jobs use the pool; a SIGTERM then ends the loop once
    the current poll is over, which the HTTP deadline bounds.
    """
    wakeup = Wakeup()
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(members))), thread_name_prefix="poll")
    in_flight = threading.Condition()
    running = [0]
    by_label = {member.recorder.account: member for member in members}
    monotonic_end = None if stop_after is None else time.monotonic() + stop_after
    now = time.time()
    # (due wall-clock time, sequence, member index or -1 for the lease refresh)
    heap: list[tuple[float, int, int]] = []
    for index, member in enumerate(members):
        due = first_at if first_at is not None else member.slot.next_after(now - 1e-6)
        heap.append((due, index, index))
    if leases is not None:
        heap.append((now, -1, -1))
    # A job's heap index is -2 - its position in extra_jobs; it first runs after the first polls,
    # or at its first slot when it has a phase.
    job_slots = [None if job.phase is None else Slot(job.phase, job.interval) for _, job in extra_jobs]
    for position, job_slot in enumerate(job_slots):
        due = job_slot.next_after(now - 1e-6) if job_slot is not None else first_at if first_at is not None else now
        heap.append((due, len(members) + 1 + position, -2 - position))
    heapq.heapify(heap)
    sequence = [len(members) + 1 + len(extra_jobs)]

    def push(due: float, index: int) -> None:
        sequence[0] += 1
        heapq.heappush(heap, (due, sequence[0], index))

    def stop_for_configuration(member: Member, problem: str) -> None:
        # Configuration problems (another account's key, mixed environments) need a human: the
        # account stops until restart, and the process when it was the only one left.
        if single:
            log.error("stopping: %s", problem)
            wakeup.stop("a configuration error")
            stop_code[0] = 1
            return
        log.error("account %s stopped until restart: %s", member.recorder.account, problem)
        member.stopped = True
        if all(m.stopped for m in members):
            stop_code[0] = 1
            wakeup.stop("every account stopped on a configuration error")

    def hold_the_ip(error: RateLimited) -> None:
        # A 429/418 is about the IP, not the account: every account waits.
        if error.retry_after:
            budget.hold(error.retry_after)

    def poll(member: Member) -> None:
        recorder = member.recorder
        try:
            if not member.declared:
                # The database may have been unavailable at start: the schedule still dates from then.
                member.declared = declare_schedule(recorder, member.slot.interval, source="run",
                                                   at=member.declared_at or utcnow())
            recorder.poll_once()
        except ConfigError as error:
            stop_for_configuration(member, str(error))
        except RateLimited as error:
            hold_the_ip(error)
        except RecorderError:
            pass  # already logged and recorded as a failed poll; the next slot goes on
        finally:
            if close_between_polls:
                # Past a few hundred accounts, a kept HTTP and database connection each would
                # cost more memory and file handles than reopening them costs CPU.
                recorder.client.close()
                recorder.close()
            budget.settle(member.weight, recorder.client.last_used_weight)
            offset = recorder.client.clock_offset_ms
            if offset is not None and budget.offset_ms is None:
                budget.offset_ms = offset
            member.weight = _poll_weight(recorder)
            with in_flight:
                member.busy = False
                running[0] -= 1
                in_flight.notify_all()

    def run_job(member: Member, job: PeriodicJob) -> None:
        try:
            job.call()
        except ConfigError as error:
            stop_for_configuration(member, f"{job.name}: {error}")
        except RateLimited as error:
            # The job's request drew on the IP like a poll.
            hold_the_ip(error)
        except RecorderError:
            pass  # already logged and recorded by the job; its next run goes on
        finally:
            if close_between_polls:
                member.recorder.client.close()
            with in_flight:
                member.busy = member.job_running = False
                running[0] -= 1
                in_flight.notify_all()

    def cancelled(future: Future[None], member: Member) -> None:
        # A poll still queued at shutdown never runs: it is not in flight either.
        if future.cancelled():
            with in_flight:
                member.busy = member.job_running = False
                running[0] -= 1
                in_flight.notify_all()

    stop_code = [0]
    now_utc = utcnow()
    for member in members:
        member.declared_at = now_utc
        if leases is None:
            member.declared = declare_schedule(member.recorder, member.slot.interval, source="run", at=now_utc)
    wakeup.install()
    try:
        while wakeup.stop_reason is None:
            wait = heap[0][0] - time.time() if heap else 3600.0
            if monotonic_end is not None:
                wait = min(wait, monotonic_end - time.monotonic())
            wakeup.wait(wait)
            if wakeup.stop_reason is not None:
                break
            if monotonic_end is not None and time.monotonic() >= monotonic_end:
                wakeup.stop("the set duration is over")
                break
            now = time.time()
            while heap and heap[0][0] <= now and wakeup.stop_reason is None:
                due, _, index = heapq.heappop(heap)
                if index == -1:
                    _refresh_leases(leases, by_label, on_lease)
                    push(now + leases.period, -1)
                    continue
                if index <= -2:
                    owner, job = extra_jobs[-2 - index]
                    job_slot = job_slots[-2 - index]
                    following = job_slot.next_after(now) if job_slot is not None else now + job.interval
                    if owner.stopped or (
                        leases is not None and (owner.recorder.account not in leases.held or not leases.valid())
                    ):
                        # Only the process holding the account's lease writes for it, its ledger included.
                        push(following, index)
                        continue
                    with in_flight:
                        if owner.busy:
                            # Its account is polling: run right after, not a whole interval later.
                            push(now + JOB_RETRY_SECONDS, index)
                            continue
                        owner.busy = owner.job_running = True
                        running[0] += 1
                    if budget.offset_ms is not None and owner.recorder.client.clock_offset_ms is None:
                        owner.recorder.client.adopt_clock_offset(budget.offset_ms)
                    pool.submit(run_job, owner, job).add_done_callback(lambda future, m=owner: cancelled(future, m))
                    push(following, index)
                    continue
                member = members[index]
                if member.stopped:
                    continue
                if leases is not None and (member.recorder.account not in leases.held or not leases.valid()):
                    push(member.slot.next_after(now), index)
                    continue
                with in_flight:
                    if member.busy and member.job_running:
                        # The account's ledger sync holds its client: poll as soon as it is done.
                        push(now + JOB_RETRY_SECONDS, index)
                        continue
                    if member.busy:
                        # Still polling since an earlier slot: this one is skipped (coalesced).
                        push(member.slot.next_after(now), index)
                        continue
                wait_for_budget = budget.reserve(member.weight)
                if wait_for_budget > 0:
                    push(now + wait_for_budget, index)
                    continue
                if budget.offset_ms is not None and member.recorder.client.clock_offset_ms is None:
                    member.recorder.client.adopt_clock_offset(budget.offset_ms)
                with in_flight:
                    member.busy = True
                    running[0] += 1
                push(member.slot.next_after(max(now, due)), index)
                if single:
                    # One account: the poll runs here, without a hand-off to a worker and back
                    # (two thread wake-ups a poll). A signal still stops the loop after this poll;
                    # the HTTP deadline bounds a hung request.
                    poll(member)
                else:
                    pool.submit(poll, member).add_done_callback(lambda future, m=member: cancelled(future, m))
    finally:
        reason = wakeup.stop_reason or "interrupted"
        wakeup.close()
        log.info("%s: finishing the current poll and stopping", reason)
        pool.shutdown(wait=False, cancel_futures=True)
    # A poll still running finishes (its transaction commits whole) or is abandoned before
    # writing; either way no half-written poll exists, because one poll is one transaction.
    with in_flight:
        abandoned = not in_flight.wait_for(lambda: running[0] == 0, timeout=SHUTDOWN_GRACE_SECONDS)
    if abandoned:
        log.warning("a poll was still waiting for the exchange at shutdown; it is abandoned, nothing of it is stored")
    if leases is not None:
        leases.release_all()
    log.info("stopped")
    return RunResult(stop_code[0], abandoned)


def _refresh_leases(leases: LeaseBook, by_label: dict[str, Member],
                    on_lease: Callable[[Member, bool], None] | None) -> None:
    try:
        gained, lost = leases.refresh()
    except SQLAlchemyError as exc:
        log.warning("could not renew the account leases: %s; polling stops when they expire", _database_problem(exc))
        return
    # LeaseBook.refresh logged each of `lost` as handed over.
    for label in sorted(lost):
        if on_lease is not None:
            on_lease(by_label[label], False)
    for label in sorted(gained):
        log.info("account %s taken (this recorder polls %d of %d)", label, len(leases.held), len(by_label))
        if on_lease is not None:
            on_lease(by_label[label], True)


def _poll_weight(recorder: Recorder) -> int:
    """The IP weight the member's next poll costs, a clock sync included when it has none yet."""
    client = recorder.client
    weight = REQUEST_WEIGHT.get(client.balance_path, 10)
    return weight + (REQUEST_WEIGHT[SERVER_TIME_PATH] if client.clock_offset_ms is None else 0)


def declare_schedule(recorder: Recorder, interval: float, *, source: str, at: datetime) -> bool:
    """Store the interval this recorder polls the account at from `at` on; False if the database cannot take it now.

    Readers judge gaps and staleness by it (recorder.coverage), so it is written by the
    writer, in the database, instead of read from each reader's environment.
    """
    # The polls' gap check keeps the schedule in force between polls (store.HeadCache): not past this one.
    recorder.schedule_declared(at)
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


# Past this many accounts a poll opens its own connection and closes it after: hundreds of
# idle keep-alive sockets (one per account, each idle a whole interval) cost more than a
# connect per poll.
KEEP_ALIVE_MAX_ACCOUNTS = 64
# How soon a poll or job that found its account busy with the other is tried again.
JOB_RETRY_SECONDS = 0.5
POLL_WORKERS = 8


def run_accounts_file(path: str, environ: Mapping[str, str], overrides: Mapping[str, Any], *,
                      stop_after: float | None = None,
                      jobs_for: Callable[[Recorder, Settings, JobPlan], Sequence[PeriodicJob]] | None = None,
                      ) -> RunResult:
    """`recorder run --config FILE`: poll every account of the file inside one weight budget.

    SQLite: this process polls every account, each under its writer lock, as `run` does for
    one. PostgreSQL: the accounts are shared by every process running this file on the
    database, through leases (recorder.scheduling.LeaseBook).

    `jobs_for(recorder, settings, plan)`: each account's periodic jobs (its ledger sync), planned
    into the same budget after the polls (plan_intervals: polls first, the ledger interval
    stretched when they leave it less than it asks) and spread over their interval; a job runs
    only while this process holds the account.
    """
    from recorder.accounts import load_accounts_file, process_settings
    from recorder.db import SERVICE_SQLITE_CACHE_KIB, make_engine, write_sessions
    from recorder.identity import database_id
    from recorder.schema import upgrade_to_head
    from recorder.spool import spool_dir_for

    accounts = load_accounts_file(path)
    process = process_settings(accounts, environ, overrides)
    # Every credential is read before the first request: a missing one stops the start, not a poll.
    settings = [entry.settings(environ, process) for entry in accounts.accounts]
    for one in settings:
        one.require_credentials()
    _check_keys(settings)
    ledger_weight = REQUEST_WEIGHT[INCOME_PATH]
    plan = plan_intervals(
        [Demand(s.account, s.interval, REQUEST_WEIGHT[s.balance_path],
                ledger_interval=s.ledger_interval if jobs_for is not None else None, ledger_weight=ledger_weight)
         for s in settings],
        process.weight_limit,
    )
    if announcement := plan.announcement():
        log.warning("%s", announcement)
    engine = make_engine(process.database_url, sqlite_cache_kib=SERVICE_SQLITE_CACHE_KIB)
    upgrade_to_head(engine)
    shared = engine.dialect.name == "postgresql"
    if not shared:
        _allow_open_files(2 * len(settings) + 256)
    identity = database_id(engine)
    sessions = write_sessions(engine)
    slots = spread_slots([plan.intervals[s.account] for s in settings])
    members: list[Member] = []
    locks: list[WriterLock] = []
    try:
        for one, slot in zip(settings, slots):
            client = BinanceFuturesClient.from_settings(one)
            recorder = Recorder(client=client, sessions=sessions, account=one.account)
            if not shared:
                lock = WriterLock(engine, one.account)
                lock.acquire()
                locks.append(lock)
                recorder.lock = lock
                recorder.spool = Spool(spool_dir_for(process.spool_dir, identity, one.account),
                                       database_id=identity, account=one.account, exclusive=True)
            members.append(Member(recorder, slot, weight=_poll_weight(recorder)))

        budget = WeightBudget(process.weight_limit)
        leases = LeaseBook(engine, [s.account for s in settings], lease_seconds(min(plan.intervals.values()))) \
            if shared else None
        if leases is not None:
            for member, one in zip(members, settings):
                member.recorder.hold = partial(leases.holding, one.account)
        jobs: list[tuple[Member, PeriodicJob]] = []
        if jobs_for is not None:
            leave = plan.polls_share(budget, ledger_weight)
            for index, (member, one) in enumerate(zip(members, settings)):
                interval = plan.ledger_intervals[one.account]
                # Half a step off the polls' spread, so an account's sync and its poll rarely fall due together.
                job_plan = JobPlan(budget, interval, (index + 0.5) / len(members) * interval, leave,
                                   partial(leases.holding, one.account) if leases is not None else None)
                jobs.extend((member, job) for job in jobs_for(member.recorder, one, job_plan))

        metrics = _poll_metrics(process)

        def watch(member: Member) -> None:
            if metrics is not None:
                label = member.recorder.account
                metrics.watch(label, member.slot.interval, spool_dir_for(process.spool_dir, identity, label))
                member.recorder.observer = metrics.observe
                if jobs_for is not None:
                    watch_ledger(metrics, member.recorder)

        def on_lease(member: Member, held: bool) -> None:
            # The lease, not a folder lock, makes this process the account's only writer now.
            label = member.recorder.account
            member.recorder.spool = (
                Spool(spool_dir_for(process.spool_dir, identity, label), database_id=identity, account=label)
                if held else None
            )
            member.declared = False
            # Health judges the accounts this process polls; the others are their holders' to judge.
            if held:
                watch(member)
            elif metrics is not None:
                metrics.forget(label)

        if not shared:
            for member in members:
                watch(member)
        server = _serve(metrics, process)
        log.info(
            "recording %d accounts from %s (%s); stop with Ctrl-C or SIGTERM",
            len(members), path,
            "shared with every recorder running it on this database" if shared else "this process polls all",
        )
        try:
            return run_accounts(members, budget=budget, leases=leases, on_lease=on_lease,
                                workers=POLL_WORKERS, stop_after=stop_after,
                                close_between_polls=len(members) > KEEP_ALIVE_MAX_ACCOUNTS, extra_jobs=jobs)
        finally:
            if server is not None:
                server.stop()
    finally:
        for member in members:
            member.recorder.client.close()
            member.recorder.close()
        for lock in locks:
            lock.release()


def _check_keys(settings: list[Settings]) -> None:
    """The read-only key check of every account, before the database is touched, a few at a time.

    A refused key (RECORDER_REQUIRE_READ_ONLY_KEY) stops the start with its account named.
    """
    from recorder.keycheck import check_key

    def check(one: Settings) -> None:
        client = BinanceFuturesClient.from_settings(one)
        try:
            check_key(client, one, name_account=True)
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=POLL_WORKERS, thread_name_prefix="recorder-keycheck") as pool:
        for future in [pool.submit(check, one) for one in settings]:
            future.result()


def watch_ledger(metrics: Any, recorder: Recorder) -> None:
    """Have `metrics` (a PollMetrics) judge the recorder's ledger: seeded from the database now (one
    read per account), then fed by each sync of the run loop's ledger job."""
    from recorder.health import read_ledger_of

    try:
        with recorder.sessions.kw["bind"].connect() as connection:
            figures = read_ledger_of(connection, recorder.account)
    except SQLAlchemyError as exc:
        # Judged from the first sync on, as for an account never synced.
        log.warning("cannot read the ledger's coverage of account=%s for /healthz yet: %s",
                    recorder.account, database_error_line(exc))
        figures = None
    metrics.watch_ledger(recorder.account, figures)
    recorder.ledger_observer = metrics.observe_ledger


def _poll_metrics(process: Settings) -> Any:
    """The figures behind /metrics and /healthz when --metrics-addr asks for them, else None."""
    if process.metrics_addr is None:
        return None
    from recorder.metrics import PollMetrics

    return PollMetrics()


def _serve(metrics: Any, process: Settings) -> Any:
    if metrics is None:
        return None
    from recorder.metrics import serve_metrics

    return serve_metrics(metrics, process.metrics_addr)


def _allow_open_files(needed: int) -> None:
    """Raise the soft open-files limit towards `needed`: on SQLite each account holds its writer
    lock and its spool folder's lock open, and a common default soft limit is 1024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
