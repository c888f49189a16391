"""The ledger sync as a job of `recorder run`, apart from the ledger commands.

`run` imports this module, not recorder.cli.ledgering: that one's read command pulls in the
ORM, the queries and the report renderer, which a service would keep in memory for nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from recorder.config import Settings

if TYPE_CHECKING:
    from recorder.ledger.sync import LedgerSync
    from recorder.service import PeriodicJob, Recorder


def ledger_sync_for(recorder: Recorder, since: datetime | None, *, may_pause: bool = True) -> LedgerSync:
    """The ledger sync of the recorder's account, sharing its client, database and writer lock.

    Without `may_pause` a full weight budget ends the sync instead of waiting for the next minute:
    in `run` the sync holds the polls' in-flight lock, and a poll may still fit where a page does not.
    """
    from recorder.ledger.sync import MAX_PAUSE_SECONDS, LedgerSync

    return LedgerSync(
        client=recorder.client,
        sessions=recorder.sessions,
        account=recorder.account,
        clock=recorder.clock,
        since=since,
        before_write=recorder.lock.ensure if recorder.lock is not None else None,
        max_pause=MAX_PAUSE_SECONDS if may_pause else 0.0,
    )


def ledger_jobs(recorder: Recorder, settings: Settings, *, enabled: bool, since: datetime | None) -> list[PeriodicJob]:
    """The run loop's ledger job (none with --no-ledger)."""
    from recorder.service import PeriodicJob

    if not enabled:
        return []
    return [PeriodicJob("ledger", settings.ledger_interval, ledger_sync_for(recorder, since, may_pause=False).sync_once)]
