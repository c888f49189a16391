"""Whether each account is being recorded: the rules shared by `recorder status` and /healthz.

An account is healthy while all of these hold:
- its last successful poll is within the gap tolerance of the schedule in force
  (recorder.coverage: 1.5 x the declared interval), so the next good poll is not overdue;
- its spool is empty. A poll replays the spool before it stores itself, so entries still
  waiting after a poll mean the database did not take the last write: the spool is growing;
- when its income ledger is synced (it has `ledger_syncs` rows; an account run with
  --no-ledger has none and is not judged on it), the ledger's newest covered time (the latest
  `window_end` of an `ok` window; before any, its first attempt's start) is within
  LEDGER_STALE = 3 days, or an ok window finished within LEDGER_STALE: a ledger catching up
  (a first sync of 90 days, or one back after an outage, paused between attempts for the
  shared weight budget) is moving and not stale, while one that stops moving is flagged 3 days
  after its last window. Binance keeps income history 90 days, so an entry not archived by
  then is lost for good. A sync that fails on every attempt (an entry whose key comes back with
  other content than the archive holds fails its window until someone looks) must be seen long
  before that; 3 days stays quiet through a weekend outage of the exchange or the database and
  through --ledger-interval stretched to once a day for a large fleet (a day and a failed retry),
  and still leaves ~87 days to fix the cause before entries drop out of Binance's reach.

`status` reads these facts from the database and the spool folder (no running service
needed); the service's /healthz judges the figures it keeps in memory by the same rules.
Read side only: nothing here imports requests, APScheduler or Alembic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, select

from recorder import coverage
from recorder.db_types import aware_utc
from recorder.spool import spool_dir_for
from recorder.storable import clean_text
# Core tables, not recorder.models: /healthz lives in the service, which never loads the ORM.
from recorder.tables import POLL_OK, accounts as _accounts, database_identity, ledger_syncs, polls as _polls

# How long the ledger may go uncovered before the account is unhealthy (see the module docstring).
LEDGER_STALE = timedelta(days=3)
# The last error's first line, cut: a phrase in a table cell and a /healthz document.
LEDGER_ERROR_CHARS = 200


@dataclass(frozen=True)
class LedgerFigures:
    """One account's ledger sync as the rule judges it; only accounts whose ledger is synced have one."""

    # The newest covered time: the latest window_end of an ok window; None before the first.
    covered_until: datetime | None
    # When the first attempt started: the reference while nothing is covered yet.
    first_attempt_at: datetime
    # Attempts that failed after `covered_until` (all of them while it is None).
    failures: int
    # "ErrorClass: first line of the message" of the newest failure, None when none failed since.
    last_error: str | None
    # When the newest ok window was stored (the ledger last moved); None before the first.
    progressed_at: datetime | None = None


@dataclass(frozen=True)
class AccountHealth:
    """One account's figures and the verdict on them."""

    account: str
    last_ok_at: datetime | None
    # The next successful poll is due by then; later, the account is in a gap.
    due_at: datetime | None
    consecutive_failures: int
    used_weight: int | None
    spool_depth: int
    last_error: str | None
    problems: tuple[str, ...]
    # None: the account's ledger is not synced (--no-ledger, or no attempt yet), so not judged.
    ledger: LedgerFigures | None = None

    @property
    def healthy(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems


def judge(*, last_ok_at: datetime | None, due_at: datetime | None, spool_depth: int, now: datetime) -> tuple[str, ...]:
    """The problems of one account by the rules above, as short phrases; empty when healthy."""
    problems = []
    if last_ok_at is None:
        if due_at is None or now > due_at:
            problems.append("no successful poll yet")
    elif due_at is not None and now > due_at:
        problems.append(f"no successful poll since {last_ok_at.isoformat()} (was due by {due_at.isoformat()})")
    if spool_depth > 0:
        problems.append(f"{spool_depth} poll(s) waiting in the spool: the database did not take them")
    return tuple(problems)


def judge_ledger(ledger: LedgerFigures | None, *, now: datetime) -> tuple[str, ...]:
    """The ledger rule's problem for one account, as a phrase; empty when covered recently or not synced."""
    if ledger is None:
        return ()
    since = ledger.covered_until or ledger.first_attempt_at
    if now - since <= LEDGER_STALE:
        return ()
    if ledger.progressed_at is not None and now - ledger.progressed_at <= LEDGER_STALE:
        return ()  # catching up: behind, but a window was stored lately
    covered = (f"ledger not covered since {ledger.covered_until.isoformat()}" if ledger.covered_until is not None
               else f"ledger never covered since its first sync attempt at {ledger.first_attempt_at.isoformat()}")
    if ledger.failures == 0:
        return (f"{covered}: no attempt failed since (is the ledger sync running?)",)
    last = f", last: {ledger.last_error}" if ledger.last_error else ""
    attempts = "1 attempt" if ledger.failures == 1 else f"{ledger.failures} attempts"
    return (f"{covered}: {attempts} failed since{last}",)


def error_line(error_class: str | None, message: str | None) -> str:
    """A failure as one short line: the class and the first line of its message."""
    first = clean_text(message.splitlines()[0]) if message and message.strip() else ""
    line = f"{error_class}: {first}" if first else str(error_class)
    return line if len(line) <= LEDGER_ERROR_CHARS else line[: LEDGER_ERROR_CHARS - 3] + "..."


def read_ledger(connection: Connection, account_id: int) -> LedgerFigures | None:
    """One account's ledger figures from `ledger_syncs`; None when its ledger was never synced."""
    syncs = ledger_syncs.c
    mine = syncs.account_id == account_id
    covered_until, first_attempt_at, progressed_at = connection.execute(
        select(
            func.max(syncs.window_end).filter(syncs.outcome == "ok"),
            func.min(syncs.started_at),
            func.max(syncs.finished_at).filter(syncs.outcome == "ok"),
        ).where(mine)
    ).one()
    if first_attempt_at is None:
        return None
    covered_until = aware_utc(covered_until)
    failed = [mine, syncs.outcome == "failed"]
    if covered_until is not None:
        failed.append(syncs.finished_at > covered_until)
    failures = connection.execute(select(func.count(func.distinct(syncs.attempt_id))).where(*failed)).scalar_one()
    last_error = None
    if failures:
        latest = connection.execute(
            select(syncs.error_class, syncs.error_message).where(*failed).order_by(syncs.finished_at.desc()).limit(1)
        ).one()
        last_error = error_line(latest.error_class, latest.error_message)
    return LedgerFigures(covered_until, aware_utc(first_attempt_at), int(failures), last_error, aware_utc(progressed_at))


def read_ledger_of(connection: Connection, label: str) -> LedgerFigures | None:
    """read_ledger() by account label; None for an account not in the database."""
    account_id = connection.execute(select(_accounts.c.id).where(_accounts.c.label == label)).scalar_one_or_none()
    return None if account_id is None else read_ledger(connection, account_id)


def spool_depth(directory: Path) -> int:
    """Polls waiting in one spool folder (the entries, not the set-aside ones); 0 when it does not exist."""
    try:
        # An entry's final name ends in .json; temporaries start with a dot.
        return sum(1 for entry in directory.iterdir() if entry.name.endswith(".json") and not entry.name.startswith("."))
    except FileNotFoundError:
        return 0


def read_health(
    connection: Connection, *, now: datetime, spool_base: str, accounts: tuple[str, ...] = ()
) -> list[AccountHealth]:
    """Every recorded account's health (or only `accounts`; a label never recorded is unhealthy)."""
    database_id = connection.execute(select(database_identity.c.database_id)).scalar_one_or_none()
    rows = connection.execute(select(_accounts.c.id, _accounts.c.label).order_by(_accounts.c.label)).all()
    known = {row.label: row.id for row in rows}
    labels = list(accounts) if accounts else list(known)
    found = []
    for label in labels:
        depth = spool_depth(spool_dir_for(spool_base, database_id, label)) if database_id else 0
        account_id = known.get(label)
        if account_id is None:
            found.append(AccountHealth(label, None, None, 0, None, depth, None, ("never recorded in this database",)))
            continue
        found.append(_account_health(connection, account_id, label, now, depth))
    return found


def _account_health(connection: Connection, account_id: int, label: str, now: datetime, depth: int) -> AccountHealth:
    polls = _polls.c
    last_ok_at = connection.execute(
        select(func.max(polls.finished_at)).where(polls.account_id == account_id, polls.outcome == POLL_OK)
    ).scalar_one_or_none()
    since = [polls.account_id == account_id]
    if last_ok_at is not None:
        since.append(polls.finished_at > last_ok_at)
    failures = connection.execute(select(func.count()).select_from(_polls).where(*since)).scalar_one()
    latest = connection.execute(
        select(polls.used_weight, polls.error_class, polls.error_message, polls.outcome)
        .where(polls.account_id == account_id)
        .order_by(polls.finished_at.desc())
        .limit(1)
    ).first()
    if last_ok_at is None:
        due_at = None
    else:
        due_at = coverage.due_at(last_ok_at, coverage.schedules_over(connection, account_id, last_ok_at, max(now, last_ok_at)))
    last_error = None
    if latest is not None and latest.outcome != POLL_OK:
        last_error = f"{latest.error_class}: {latest.error_message}" if latest.error_message else latest.error_class
    ledger = read_ledger(connection, account_id)
    return AccountHealth(
        account=label,
        last_ok_at=last_ok_at,
        due_at=due_at,
        consecutive_failures=int(failures),
        used_weight=None if latest is None else latest.used_weight,
        spool_depth=depth,
        last_error=last_error,
        problems=judge(last_ok_at=last_ok_at, due_at=due_at, spool_depth=depth, now=now)
        + judge_ledger(ledger, now=now),
        ledger=ledger,
    )


def tolerance_for(interval_seconds: float) -> timedelta:
    """The gap tolerance of a recorder polling every `interval_seconds` (coverage's rule)."""
    return timedelta(milliseconds=coverage.tolerance_ms_for(round(interval_seconds * 1000)))


def health_document(accounts: list[AccountHealth]) -> dict[str, Any]:
    """The JSON body of /healthz and `recorder status --format json`."""
    failing = [health.account for health in accounts if not health.healthy]
    return {
        # No account at all is nothing being recorded: a check must not pass on an empty database.
        "status": "unhealthy" if failing or not accounts else "healthy",
        "failing": failing,
        "accounts": [
            {
                "account": health.account,
                "healthy": health.healthy,
                "last_ok_at": health.last_ok_at.isoformat() if health.last_ok_at else None,
                "due_at": health.due_at.isoformat() if health.due_at else None,
                "consecutive_failures": health.consecutive_failures,
                "used_weight": health.used_weight,
                "spool_depth": health.spool_depth,
                "last_error": health.last_error,
                "ledger_covered_until": _iso(health.ledger.covered_until) if health.ledger else None,
                "ledger_failures": health.ledger.failures if health.ledger else None,
                "ledger_last_error": health.ledger.last_error if health.ledger else None,
                "problems": list(health.problems),
            }
            for health in accounts
        ],
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
