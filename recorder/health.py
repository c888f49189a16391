"""Whether each account is being recorded: the rules shared by `recorder status` and /healthz.

An account is healthy while both hold:
- its last successful poll is within the gap tolerance of the schedule in force
  (recorder.coverage: 1.5 x the declared interval), so the next good poll is not overdue;
- its spool is empty. A poll replays the spool before it stores itself, so entries still
  waiting after a poll mean the database did not take the last write: the spool is growing.

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
from recorder.models import POLL_OK, Account, DatabaseIdentity, Poll
from recorder.spool import spool_dir_for


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
    database_id = connection.execute(select(DatabaseIdentity.database_id)).scalar_one_or_none()
    rows = connection.execute(select(Account.id, Account.label).order_by(Account.label)).all()
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
    polls = Poll.__table__.c
    last_ok_at = connection.execute(
        select(func.max(polls.finished_at)).where(polls.account_id == account_id, polls.outcome == POLL_OK)
    ).scalar_one_or_none()
    since = [polls.account_id == account_id]
    if last_ok_at is not None:
        since.append(polls.finished_at > last_ok_at)
    failures = connection.execute(select(func.count()).select_from(Poll.__table__).where(*since)).scalar_one()
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
    return AccountHealth(
        account=label,
        last_ok_at=last_ok_at,
        due_at=due_at,
        consecutive_failures=int(failures),
        used_weight=None if latest is None else latest.used_weight,
        spool_depth=depth,
        last_error=last_error,
        problems=judge(last_ok_at=last_ok_at, due_at=due_at, spool_depth=depth, now=now),
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
                "problems": list(health.problems),
            }
            for health in accounts
        ],
    }
