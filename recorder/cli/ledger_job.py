"""The ledger sync as a job of `recorder run`, apart from the ledger commands.

`run` imports this module, not recorder.cli.ledgering: that one's read command pulls in the
ORM, the queries and the report renderer, which a service would keep in memory for nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING

from recorder.config import Settings

if TYPE_CHECKING:
    from recorder.ledger.sync import Hold, LedgerSync
    from recorder.locks import LedgerLock
    from recorder.scheduling import WeightBudget
    from recorder.service import PeriodicJob, Recorder

log = logging.getLogger(__name__)


def ledger_sync_for(recorder: Recorder, since: datetime | None, *, may_pause: bool = True,
                    budget: WeightBudget | None = None, leave: float = 0.0, hold: Hold | None = None) -> LedgerSync:
    """The ledger sync of the recorder's account, sharing its client, database and writer lock.

    Without `may_pause` a full weight budget ends the sync instead of waiting for the next minute:
    in `run` the sync holds the account's client, and a poll may still fit where a page does not.
    With `budget` (run's, shared with the polls) each page reserves its weight there, leaving
    `leave` a minute to the polls, and settles it from the answer's weight header. With `hold`
    (run --config's lease on the account) the sync stops at its next step once the account is handed over.
    """
    from recorder.ledger.sync import MAX_PAUSE_SECONDS, LedgerSync

    sync = LedgerSync(
        client=recorder.client,
        sessions=recorder.sessions,
        account=recorder.account,
        clock=recorder.clock,
        since=since,
        before_write=recorder.lock.ensure if recorder.lock is not None else None,
        max_pause=MAX_PAUSE_SECONDS if may_pause else 0.0,
        hold=hold,
    )
    if budget is not None:
        sync.weight_budget = lambda cost: budget.reserve(cost, leave=leave)
        sync.settle_weight = budget.settle
    return sync


def ledger_jobs(recorder: Recorder, settings: Settings, *, enabled: bool, since: datetime | None,
                budget: WeightBudget | None = None, leave: float = 0.0, interval: float | None = None,
                phase: float | None = None, hold: Hold | None = None) -> list[PeriodicJob]:
    """The run loop's ledger job (none with --no-ledger): every `interval` (default the account's
    --ledger-interval), at `phase` + k * interval when given, under the account's ledger lock, and
    while `hold` says this process holds the account."""
    from recorder.locks import LedgerLock
    from recorder.service import PeriodicJob

    if not enabled:
        return []
    sync = ledger_sync_for(recorder, since, may_pause=False, budget=budget, leave=leave, hold=hold)
    lock = LedgerLock(recorder.sessions.kw["bind"], recorder.account)
    return [PeriodicJob("ledger", interval or settings.ledger_interval,
                        partial(_locked_sync, sync, lock, recorder), phase)]


def _locked_sync(sync: LedgerSync, lock: LedgerLock, recorder: Recorder) -> object:
    """One sync holding the account's ledger lock, told to the recorder's ledger observer; skipped
    while a `sync-ledger` holds it."""
    from recorder.locks import LockHeld

    try:
        lock.acquire()
    except LockHeld as held:
        log.info("ledger sync account=%s skipped this time: %s", sync.account, held)
        return None
    try:
        result = sync.sync_once()
    except BaseException as error:
        _tell(recorder, None, error)
        raise
    finally:
        lock.release()
    # A sync stopped at a handover is the account's new holder's to count, as a handed-over poll is.
    if not result.stopped:
        _tell(recorder, result, None)
    return result


def _tell(recorder: Recorder, result: object, error: BaseException | None) -> None:
    if recorder.ledger_observer is None:
        return
    try:
        recorder.ledger_observer(recorder.account, result, error)
    except Exception:  # noqa: BLE001 - figures are a side show: the sync's result stands
        log.exception("the ledger sync observer failed")
