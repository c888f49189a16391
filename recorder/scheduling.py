"""Many accounts inside one per-IP weight budget: the plan, the budget, the slots, the wait; leases on PostgreSQL.

    plan_intervals  polls first: when the accounts ask more weight than the budget allows, the ledger
                    syncs give way down to once a day, then the poll intervals are stretched evenly
    WeightBudget    one IP's weight per calendar minute, from X-MBX-USED-WEIGHT-1M; every request
                    drawing on the IP (balance polls and ledger syncs) reserves from it
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from recorder.errors import ConfigError
from recorder.locks import advisory_key

log = logging.getLogger(__name__)

# Stop before this share of the IP's minute budget is used (the client's own guard uses the same).
WEIGHT_SAFETY = 0.9
MINUTE_SECONDS = 60.0


@dataclass(frozen=True)
class Demand:
    """What one account asks of the budget: its label, poll interval and weight per poll, and its
    ledger sync's interval and weight per sync (none without a ledger sync)."""

    label: str
    interval: float
    weight: int
    ledger_interval: float | None = None
    # A steady-state sync is one request (one window since the last): its weight.
    ledger_weight: int = 0

    def per_minute(self) -> tuple[float, float]:
        """(polls, ledger) weight a minute at the intervals asked for."""
        ledger = self.ledger_weight * MINUTE_SECONDS / self.ledger_interval if self.ledger_interval else 0.0
        return self.weight * MINUTE_SECONDS / self.interval, ledger


# The ledger's floor when the polls leave it less: each account's ledger synced once a day. Binance
# keeps the ledger three months, so a day's lag loses nothing; the balance polls are the record.
LEDGER_FLOOR_SECONDS = 86_400.0


@dataclass(frozen=True)
class Plan:
    """The intervals the accounts are polled and their ledgers synced at, and the figures behind them."""

    intervals: dict[str, float]
    asked_per_minute: float  # weight a minute at the intervals asked for, polls and ledger syncs
    allowed_per_minute: float  # WEIGHT_SAFETY of the IP's limit
    stretch: float  # 1.0, or the factor every poll interval was multiplied by
    ledger_intervals: dict[str, float] = field(default_factory=dict)  # accounts with a ledger sync only
    polls_per_minute: float = 0.0  # the polls' weight a minute at the planned intervals
    ledger_stretch: float = 1.0  # 1.0, or the factor the ledger intervals were multiplied by (polls first)
    asked_polls_per_minute: float = 0.0
    asked_ledger_intervals: dict[str, float] = field(default_factory=dict)
    ledger_floor_per_minute: float = 0.0  # the ledger's floor (once a day each, at least one request)

    def polls_share(self, budget: WeightBudget, request_weight: int) -> float:
        """Weight a minute a ledger request leaves free for the polls: their planned share, but
        never so much that one request of `request_weight` can no longer fit (the plan gave the
        ledger at least that room)."""
        return max(0.0, min(self.polls_per_minute, budget.ceiling - request_weight))

    @property
    def stretched(self) -> bool:
        """True when the budget cannot carry the poll intervals asked for."""
        return self.stretch > 1.0

    @property
    def ledger_stretched(self) -> bool:
        """True when the polls keep their intervals but the ledger syncs take only what they leave."""
        return not self.stretched and self.ledger_stretch > 1.0

    def _budget(self) -> str:
        return f"{self.allowed_per_minute:.0f} ({WEIGHT_SAFETY:.0%} of {self.allowed_per_minute / WEIGHT_SAFETY:.0f})"

    def warning(self) -> str:
        """The one WARNING line announcing a stretch of the polls, with the numbers."""
        shortest = min(self.intervals.values())
        if not self.ledger_intervals:
            return (
                f"{len(self.intervals)} accounts at their intervals need {self.asked_per_minute:.0f} request weight a "
                f"minute, but this IP's budget allows {self._budget()}: every interval is stretched "
                f"x{self.stretch:.3f}, the shortest to {shortest:g}s, the fastest the budget allows"
            )
        asked_ledger = self.asked_per_minute - self.asked_polls_per_minute
        return (
            f"{len(self.intervals)} accounts at their intervals need {self.asked_polls_per_minute:.0f} request weight "
            f"a minute for their polls and {asked_ledger:.0f} for their ledger syncs, but this IP's budget allows "
            f"{self._budget()}: the ledger syncs keep only their floor, each account's once a day "
            f"({self.ledger_floor_per_minute:.0f} a minute), and every poll interval is stretched x{self.stretch:.3f}, "
            f"the shortest to {shortest:g}s, the fastest the budget allows"
        )

    def announcement(self) -> str | None:
        """The start-up WARNING line when the plan departs from the intervals asked, else None."""
        if self.stretched:
            return self.warning()
        return self.ledger_notice() if self.ledger_stretched else None

    def ledger_notice(self) -> str:
        """The one WARNING line announcing that the ledger syncs, not the polls, give way."""
        polls = set(self.intervals.values())
        kept = f"{min(polls):g} s polls" if len(polls) == 1 else f"polls (the shortest every {min(polls):g} s)"
        asked_ledger = self.asked_per_minute - self.asked_polls_per_minute
        count = len(self.intervals)
        who = f"{count} accounts keep their" if count != 1 else "1 account keeps its"
        return (
            f"ledger syncs every {min(self.ledger_intervals.values()):,g} s instead of "
            f"{min(self.asked_ledger_intervals.values()):,g} s (x{self.ledger_stretch:.3f}) so {who} {kept} inside "
            f"this IP's budget: polls {self.asked_polls_per_minute:.0f} + ledger "
            f"{asked_ledger:.0f} request weight a minute asked, {self._budget()} allowed, the ledger takes the "
            f"{self.allowed_per_minute - self.asked_polls_per_minute:.0f} the polls leave"
        )


def plan_intervals(demands: Sequence[Demand], weight_limit: int) -> Plan:
    """Polls first, the ledger takes what is left.

    P, L: the polls' and ledger syncs' weight a minute at the intervals asked; B: the budget;
    F: the ledger floor (every syncing account once a day, never less than one request's room a
    minute: a request's weight is not split over minutes).
      P + L <= B        every interval as asked
      P + F <= B        polls as asked; the ledger intervals stretched by one factor (none past
                        the floor) so the ledger takes the B - P the polls leave
      otherwise         ledgers at the floor; polls stretched by P / (B - F), the fastest the budget allows
    Raises ConfigError when the floor alone does not fit the budget.
    """
    polls = sum(demand.per_minute()[0] for demand in demands)
    ledger = sum(demand.per_minute()[1] for demand in demands)
    allowed = weight_limit * WEIGHT_SAFETY
    syncing = [d for d in demands if d.ledger_interval]
    asked_ledger = {d.label: d.ledger_interval or LEDGER_FLOOR_SECONDS for d in syncing}
    floor = (
        max(sum(d.ledger_weight * MINUTE_SECONDS / LEDGER_FLOOR_SECONDS for d in syncing),
            max(d.ledger_weight for d in syncing))
        if syncing else 0.0
    )

    def plan(intervals: dict[str, float], stretch: float, ledger_intervals: dict[str, float], planned_polls: float,
             ledger_stretch: float = 1.0) -> Plan:
        return Plan(intervals, polls + ledger, allowed, stretch, ledger_intervals, planned_polls, ledger_stretch,
                    polls, asked_ledger, floor)

    # The floor's one request a minute counts here too: a ledger asked once a day still needs that room.
    if polls + max(ledger, floor) <= allowed:
        return plan({d.label: d.interval for d in demands}, 1.0, dict(asked_ledger), polls)
    if floor >= allowed:
        raise ConfigError(
            f"this IP's weight budget ({allowed:g} a minute) cannot carry {len(syncing)} accounts' ledger syncs even "
            f"once a day ({floor:.0f} a minute); run them with --no-ledger or spread the accounts over more IPs"
        )
    if polls + floor <= allowed:
        factor = _ledger_stretch(syncing, allowed - polls)
        return plan(
            {d.label: d.interval for d in demands}, 1.0,
            {d.label: min(_round_up(asked_ledger[d.label] * factor), LEDGER_FLOOR_SECONDS) for d in syncing},
            polls, factor,
        )
    stretch = polls / (allowed - floor)
    return plan(
        {d.label: _round_up(d.interval * stretch) for d in demands}, stretch,
        {d.label: LEDGER_FLOOR_SECONDS for d in syncing}, polls / stretch,
        LEDGER_FLOOR_SECONDS / min(asked_ledger.values()) if syncing else 1.0,
    )


def _round_up(interval: float) -> float:
    # To the millisecond, up: a rounded-down interval would ask a little more than allowed.
    return math.ceil(interval * 1000) / 1000


def _ledger_stretch(syncing: Sequence[Demand], room: float) -> float:
    """The one factor that brings the ledger syncs' weight a minute down to `room`, an interval the
    factor would carry past the floor staying at the floor (and its weight counted there)."""
    asked = {d.label: (d.ledger_interval or LEDGER_FLOOR_SECONDS, d.ledger_weight * MINUTE_SECONDS) for d in syncing}
    at_floor: set[str] = set()
    while True:
        left = room - sum(weight / LEDGER_FLOOR_SECONDS for label, (_, weight) in asked.items() if label in at_floor)
        rest = sum(weight / interval for label, (interval, weight) in asked.items() if label not in at_floor)
        factor = rest / left
        # The shortest asked interval never reaches the floor (room >= the floor), so `rest` stays > 0.
        past = {label for label, (interval, _) in asked.items()
                if label not in at_floor and interval * factor > LEDGER_FLOOR_SECONDS}
        if not past:
            return factor
        at_floor |= past


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

    def reserve(self, weight: int, *, leave: float = 0.0) -> float:
        """Reserve `weight` now and return 0.0, or return the seconds to wait before asking again.

        `leave`: weight a minute this request must leave to others spread evenly over the minute
        (a ledger sync leaves the polls' share): what is left of the minute keeps its part of it
        free, so catching up months of ledger never delays a poll, yet the ledger may use at any
        moment of the minute whatever the polls will not.
        """
        with self._lock:
            now = self._wall_clock()
            if now < self._held_until:
                return self._held_until - now
            now_ms = self._now_ms()
            self._roll(now_ms)
            still_needed = leave * (60_000 - now_ms % 60_000) / 60_000
            if self._reported + self._unreported + weight <= self.ceiling - still_needed:
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

    A handover waits for the account's write under way (`holding`), then drops the account from
    `held` and only then its writer lock: the next holder cannot take the lock, so cannot write,
    before this process's last write for the account is over.
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
        # One per account: held by a job's write for it (`holding`) and by its handover.
        self._guards = {label: threading.Lock() for label in self.labels}

    @contextmanager
    def holding(self, label: str) -> Iterator[bool]:
        """Whether this process holds `label` now; while the block runs, a handover of it waits.

        Keep the block short (one transaction): the run loop's thread is the one that waits.
        """
        with self._guards[label]:
            yield label in self.held and self.valid()

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
        for label in sorted(lost):
            with self._guards[label]:
                # Out of `held` before its writer lock goes: a job asks before each write. Logged
                # here, so a job's last line for the account comes before this one, or (stopped) after.
                self.held = self.held - {label}
                log.info("account %s handed to another recorder", label)
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
        # A job past the shutdown grace stops at its next step (not waited for: the database may hang).
        self.held = set()
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
