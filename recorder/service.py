"""poll_once() and run(): one poll as one transaction, and the APScheduler loop around it."""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from types import FrameType

from apscheduler.schedulers.blocking import BlockingScheduler
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from recorder import store
from recorder.errors import ConfigError, ExchangeError, RecorderError, StorageError
from recorder.exchange import BinanceFuturesClient
from recorder.store import PollOutcome

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
SHUTDOWN_GRACE_SECONDS = 4.0


def utcnow() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(timezone.utc)


@dataclass
class Recorder:
    """Everything one account's polls need: the exchange client, the database, our label."""

    client: BinanceFuturesClient
    sessions: sessionmaker[Session]
    account: str
    clock: Clock = utcnow

    def poll_once(self) -> PollOutcome:
        """Fetch balances once and store them atomically; a failure is logged, stored and raised."""
        uid = str(uuid.uuid4())
        started_at = self.clock()
        began = time.perf_counter()
        try:
            fetched = self.client.fetch_balances()
        except ExchangeError as error:
            self._record_failure(error, uid, started_at, began)
            raise
        finished_at = self.clock()
        try:
            with self.sessions.begin() as session:
                account = store.ensure_account(session, self.account, self.client.base_url, started_at)
                outcome = store.record_poll(
                    session, account, fetched, uid=uid, started_at=started_at, finished_at=finished_at
                )
        except ConfigError as error:
            self._record_failure(error, uid, started_at, began)
            raise
        except SQLAlchemyError as exc:
            error = StorageError(f"cannot store the poll: {_database_problem(exc)}")
            log.error("poll failed account=%s error=StorageError ms=%d: %s", self.account, _elapsed_ms(began), error)
            raise error from None
        log.info(
            "poll ok account=%s assets=%d changed=%d weight=%s ms=%d",
            self.account,
            outcome.asset_count,
            outcome.changed_count,
            outcome.used_weight if outcome.used_weight is not None else "-",
            _elapsed_ms(began),
        )
        return outcome

    def _record_failure(self, error: RecorderError, uid: str, started_at: datetime, began: float) -> None:
        log.warning(
            "poll failed account=%s error=%s ms=%d: %s", self.account, type(error).__name__, _elapsed_ms(began), error
        )
        try:
            with self.sessions.begin() as session:
                account = store.ensure_account(session, self.account, self.client.base_url, started_at)
                store.record_failure(
                    session,
                    account,
                    error,
                    uid=uid,
                    endpoint=self.client.balance_path,
                    started_at=started_at,
                    finished_at=max(self.clock(), started_at),
                )
        except (SQLAlchemyError, ConfigError) as exc:
            # The poll already failed; not being able to log it must not hide that failure.
            log.error("could not record the failed poll: %s", _database_problem(exc))


@dataclass(frozen=True)
class RunResult:
    """How run() ended: the exit code, and whether a poll was abandoned mid-request."""

    exit_code: int
    abandoned_poll: bool


def run(recorder: Recorder, interval: float, *, stop_after: float | None = None) -> RunResult:
    """Poll every `interval` seconds until SIGTERM/SIGINT (or `stop_after` seconds)."""
    scheduler = BlockingScheduler(timezone=timezone.utc)
    in_flight = threading.Lock()
    exit_code = 0

    def tick() -> None:
        nonlocal exit_code
        with in_flight:
            try:
                recorder.poll_once()
            except ConfigError as error:
                # Configuration problems (another account's key, mixed environments) need a human.
                log.error("stopping: %s", error)
                exit_code = 1
                _shutdown(scheduler)
            except RecorderError:
                pass  # already logged and recorded as a failed poll; the next tick goes on

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: finishing the current poll and stopping", signal.Signals(signum).name)
        _shutdown(scheduler)

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
    stop_timer = threading.Timer(stop_after, _shutdown, args=[scheduler]) if stop_after is not None else None
    if stop_timer is not None:
        stop_timer.daemon = True
        stop_timer.start()
    log.info("recording account=%s every %gs; stop with Ctrl-C or SIGTERM", recorder.account, interval)
    try:
        scheduler.start()
    finally:
        if stop_timer is not None:
            stop_timer.cancel()
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
    return RunResult(exit_code, abandoned)


def _shutdown(scheduler: BlockingScheduler) -> None:
    if scheduler.running:
        scheduler.shutdown(wait=False)


def _elapsed_ms(began: float) -> int:
    return round((time.perf_counter() - began) * 1000)


def _database_problem(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    return f"{type(original).__name__}: {lines[0] if lines else ''}"
