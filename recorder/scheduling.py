"""Many accounts inside one per-IP weight budget: the plan, the budget, the slots, the wait; leases on PostgreSQL.

    plan_intervals  stretch every interval evenly when the accounts ask more weight than the budget allows
    WeightBudget    one IP's weight per calendar minute, from X-MBX-USED-WEIGHT-1M; every request
                    drawing on the IP (balance polls today, a ledger sync later) reserves from it
    Slot            an account's fixed poll times: phase + k * interval
    Wakeup          the run loop's only wait: the next deadline, a signal, or a worker's nudge
    LeaseBook       which accounts this process polls when several share a PostgreSQL database

Binance counts weight per IP per calendar minute (binance-api.md section 4) and answers 429,
then 418 bans, past its limit; we keep to WEIGHT_SAFETY of it, as the client does per request.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import select
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from recorder.locks import advisory_key

log = logging.getLogger(__name__)

# Stop before this share of the IP's minute budget is used (the client's own guard uses the same).
WEIGHT_SAFETY = 0.9
MINUTE_SECONDS = 60.0


@dataclass(frozen=True)
class Demand:
    """What one account asks of the budget: its label, interval and weight per poll."""

    label: str
    interval: float
    weight: int


@dataclass(frozen=True)
class Plan:
    """The intervals the accounts are polled at, and the figures behind them."""

    intervals: dict[str, float]
    asked_per_minute: float  # weight a minute at the intervals asked for
    allowed_per_minute: float  # WEIGHT_SAFETY of the IP's limit
    stretch: float  # 1.0, or the factor every interval was multiplied by

    @property
    def stretched(self) -> bool:
        """True when the budget cannot carry the intervals asked for."""
        return self.stretch > 1.0

    def warning(self) -> str:
        """The one WARNING line announcing a stretch, with the numbers."""
        shortest = min(self.intervals.values())
        return (
            f"{len(self.intervals)} accounts at their intervals need {self.asked_per_minute:.0f} request weight a "
            f"minute, but this IP's budget allows {self.allowed_per_minute:.0f} ({WEIGHT_SAFETY:.0%} of "
            f"{self.allowed_per_minute / WEIGHT_SAFETY:.0f}): every interval is stretched x{self.stretch:.3f}, "
            f"the shortest to {shortest:g}s, the fastest the budget allows"
        )


def plan_intervals(demands: Sequence[Demand], weight_limit: int) -> Plan:
    """Keep the asked intervals when they fit the budget; otherwise stretch all by one factor until they do."""
    asked = sum(demand.weight * MINUTE_SECONDS / demand.interval for demand in demands)
    allowed = weight_limit * WEIGHT_SAFETY
    stretch = max(1.0, asked / allowed)
    if stretch == 1.0:
        return Plan({d.label: d.interval for d in demands}, asked, allowed, 1.0)
    # Rounded up to the millisecond: a rounded-down interval would ask a little more than allowed.
    intervals = {d.label: math.ceil(d.interval * stretch * 1000) / 1000 for d in demands}
    return Plan(intervals, asked, allowed, stretch)


class WeightBudget:
    """One IP's request weight in the current calendar minute (exchange clock), shared by threads.

    The exchange reports the IP's total in X-MBX-USED-WEIGHT-1M with every answer, so the
    figure includes other processes on this host; what this process has sent and not yet seen
    counted is added on top. A 429/418 holds every account until its Retry-After.
    """

    def __init__(self, limit: int, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.ceiling = limit * WEIGHT_SAFETY
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._minute = -1
        self._reported = 0  # the highest X-MBX-USED-WEIGHT-1M seen this minute
        self._unreported = 0  # reserved by this process, not yet in a header we saw
        self._held_until = 0.0  # wall-clock time a 429/418 told us to wait for
        self.offset_ms: int | None = None  # exchange clock minus ours, from any client's sync

    def _now_ms(self) -> int:
        return round(self._wall_clock() * 1000) + (self.offset_ms or 0)

    def _roll(self, now_ms: int) -> None:
        minute = now_ms // 60_000
        if minute != self._minute:
            # Binance's window is the calendar minute: a new minute starts at zero.
            self._minute, self._reported, self._unreported = minute, 0, 0

    def reserve(self, weight: int) -> float:
        """Reserve `weight` now and return 0.0, or return the seconds to wait before asking again."""
        with self._lock:
            now = self._wall_clock()
            if now < self._held_until:
                return self._held_until - now
            now_ms = self._now_ms()
            self._roll(now_ms)
            if self._reported + self._unreported + weight <= self.ceiling:
                self._unreported += weight
                return 0.0
            # Just past the minute's turn on the exchange clock, spread so the waiters do not
            # all come back in the same millisecond.
            return (60_000 - now_ms % 60_000) / 1000 + 0.05 + (self._unreported % 97) / 1000

    def settle(self, weight: int, reported: int | None) -> None:
        """A reserved request got its answer: `reported` is the IP's total the exchange sent, if any."""
        with self._lock:
            self._roll(self._now_ms())
            self._unreported = max(0, self._unreported - weight)
            if reported is not None:
                self._reported = max(self._reported, reported)

    def hold(self, seconds: float) -> None:
        """Send nothing from this IP for `seconds` (a 429's or 418's Retry-After)."""
        with self._lock:
            self._held_until = max(self._held_until, self._wall_clock() + seconds)


@dataclass(frozen=True)
class Slot:
    """An account's poll times: `phase + k * interval` in wall-clock seconds.

    Fixed slots keep the polls spread evenly and let several processes agree on a tick: the
    process that takes an account over polls at the slots its previous holder would have.
    """

    phase: float
    interval: float

    def next_after(self, moment: float) -> float:
        """The first slot strictly after `moment`."""
        return self.phase + (math.floor((moment - self.phase) / self.interval) + 1) * self.interval

    def tick(self, moment: float) -> int:
        """The index k of the slot at or before `moment`."""
        return math.floor((moment - self.phase) / self.interval + 1e-9)


def spread_slots(intervals: Sequence[float]) -> list[Slot]:
    """Slots for accounts in file order, the i-th of n at i/n of its interval past each multiple of it.

    Anchored on the Unix epoch, not on the start: every process sharing the file derives the
    same slots.
    """
    count = len(intervals)
    return [Slot(phase=index / count * interval, interval=interval) for index, interval in enumerate(intervals)]


class Wakeup:
    """Blocks the main thread until a deadline, a SIGTERM/SIGINT or a worker's nudge; nothing else wakes it.

    The signal handler only sets a flag: Python runs it in the main thread, and the C-level
    handler writes a byte to the wake-up pipe whichever thread the kernel chose, so the
    select() below returns at once. No lock is taken in the handler, which is what made
    `Event.wait()` deadlock when a signal landed inside it.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self.stop_reason: str | None = None
        self._previous: dict[int, object] = {}
        self._previous_fd: int | None = None

    def install(self) -> None:
        """Route SIGTERM and SIGINT here (main thread only; elsewhere only nudges and deadlines wake it)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop_reason is None:
            self.stop_reason = f"received {signal.Signals(signum).name}"

    def stop(self, reason: str) -> None:
        """Ask the loop to stop (any thread)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.nudge()

    def nudge(self) -> None:
        """Wake the waiting thread now (any thread)."""
        try:
            os.write(self._write, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def wait(self, seconds: float) -> None:
        """Block up to `seconds`, less if woken."""
        if seconds > 0:
            try:
                readable, _, _ = select.select([self._read], [], [], seconds)
            except InterruptedError:
                readable = [self._read]
            if not readable:
                return  # the deadline came and nothing was written: no read() to find the pipe empty
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                raise

    def close(self) -> None:
        """Give the signals and the wake-up fd back to whoever had them."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        if self._previous_fd is not None:
            signal.set_wakeup_fd(self._previous_fd)
        os.close(self._read)
        os.close(self._write)


def lease_seconds(shortest_interval: float) -> float:
    """How long a lease lasts: under half the shortest interval, so a dead holder's accounts are
    taken over (lease expiry plus one refresh of the survivors) within one interval."""
    return max(1.0, 0.4 * shortest_interval)


class LeaseBook:
    """This process's share of the accounts file on a PostgreSQL database shared by several processes.

    Every `period` seconds one transaction, on PostgreSQL's clock: renew this process's
    heartbeat and leases, count the live processes, and take free or expired leases up to
    ceil(accounts / processes), or give back the ones above it. Each leased account's writer
    advisory lock (the one an env-only `recorder run` takes) is held on one connection, so a
    process cut off from the database, still holding its session, keeps its accounts from a
    second writer, and the server frees them when the process dies.
    """

    def __init__(self, engine: Engine, labels: Sequence[str], ttl: float) -> None:
        self.engine = engine
        self.labels = list(labels)
        self.ttl = ttl
        self.period = ttl / 2
        self.holder = f"pid {os.getpid()} on {socket.gethostname()} #{uuid.uuid4().hex[:8]}"[:128]
        self.held: set[str] = set()
        self._valid_until = 0.0  # time.monotonic() until which our leases are surely ours
        self._locks: Connection | None = None

    def valid(self) -> bool:
        """True while the leases renewed last are surely still ours."""
        return time.monotonic() < self._valid_until

    def refresh(self) -> tuple[set[str], set[str]]:
        """Renew, rebalance; return (accounts gained, accounts given up). Raises SQLAlchemyError."""
        began = time.monotonic()
        interval = {"ttl": self.ttl, "holder": self.holder, "labels": self.labels}
        with self.engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO lease_holders (holder, expires_at) VALUES (:holder, now() + make_interval(secs => :ttl)) "
                    "ON CONFLICT (holder) DO UPDATE SET expires_at = excluded.expires_at"
                ),
                interval,
            )
            connection.execute(text("DELETE FROM lease_holders WHERE expires_at < now()"))
            live = connection.execute(text("SELECT count(*) FROM lease_holders WHERE expires_at >= now()")).scalar_one()
            connection.execute(
                text(
                    "INSERT INTO account_leases (account, holder, expires_at) "
                    "SELECT unnest(CAST(:labels AS varchar[])), NULL, now() ON CONFLICT (account) DO NOTHING"
                ),
                interval,
            )
            mine = set(
                connection.execute(
                    text(
                        "UPDATE account_leases SET expires_at = now() + make_interval(secs => :ttl) "
                        "WHERE holder = :holder AND expires_at >= now() AND account = ANY(CAST(:labels AS varchar[])) "
                        "RETURNING account"
                    ),
                    interval,
                ).scalars()
            )
            share = math.ceil(len(self.labels) / max(1, live))
            if len(mine) > share:
                extra = sorted(mine)[share:]
                connection.execute(
                    text("UPDATE account_leases SET holder = NULL, expires_at = now() WHERE account = ANY(CAST(:extra AS varchar[]))"),
                    {"extra": extra},
                )
                mine -= set(extra)
            elif len(mine) < share:
                free = connection.execute(
                    text(
                        "SELECT account FROM account_leases WHERE account = ANY(CAST(:labels AS varchar[])) "
                        "AND (holder IS NULL OR expires_at < now()) ORDER BY account LIMIT :wanted "
                        "FOR UPDATE SKIP LOCKED"
                    ),
                    {**interval, "wanted": share - len(mine)},
                ).scalars().all()
                if free:
                    connection.execute(
                        text(
                            "UPDATE account_leases SET holder = :holder, expires_at = now() + make_interval(secs => :ttl) "
                            "WHERE account = ANY(CAST(:free AS varchar[]))"
                        ),
                        {**interval, "free": list(free)},
                    )
                    mine |= set(free)
        # Leases run from the transaction's now(), which was no earlier than `began`.
        self._valid_until = began + self.ttl
        gained, lost = mine - self.held, self.held - mine
        refused = self._lock_writers(gained, lost)
        if refused:
            self._give_up(refused)
            gained -= refused
            mine -= refused
        self.held = mine
        return gained, lost

    def _lock_writers(self, gained: set[str], lost: set[str]) -> set[str]:
        """Take the writer advisory locks of `gained`, drop those of `lost`; the labels whose lock another holds."""
        if not gained and not lost:
            return set()
        if self._locks is None:
            self._locks = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._locks.execute(text("SELECT set_config('application_name', :name, false)"),
                                {"name": f"recorder {self.holder}"[:63]})
        for label in lost:
            self._locks.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": advisory_key(label)})
        refused = set()
        for label in sorted(gained):
            if not self._locks.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": advisory_key(label)}).scalar():
                log.warning("account %s: another recorder holds its writer lock; leaving it to that one", label)
                refused.add(label)
        return refused

    def _give_up(self, labels: set[str]) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                text("UPDATE account_leases SET holder = NULL, expires_at = now() "
                     "WHERE holder = :holder AND account = ANY(CAST(:labels AS varchar[]))"),
                {"holder": self.holder, "labels": sorted(labels)},
            )

    def release_all(self) -> None:
        """Hand every account back at shutdown, so the others take them at their next refresh."""
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    text("UPDATE account_leases SET holder = NULL, expires_at = now() WHERE holder = :holder"),
                    {"holder": self.holder},
                )
                connection.execute(text("DELETE FROM lease_holders WHERE holder = :holder"), {"holder": self.holder})
        except SQLAlchemyError as exc:
            log.warning("could not hand the accounts back (%s); they pass on when the leases expire", type(exc).__name__)
        if self._locks is not None:
            try:
                self._locks.invalidate()
                self._locks.close()
            except SQLAlchemyError:
                pass
            self._locks = None
        self.held = set()
