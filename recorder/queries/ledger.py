"""The archived income ledger: entries with a running balance per asset, and the ledger's coverage.

Read-only. Entries stream in (time, id) order. The running balance of an asset starts at an
anchor, chosen per asset when its first listed entry is met:

    observed   the wallet `balance` of the newest observed state whose Binance `update_time` is
               before that entry, plus the archived entries between that state and the entry;
    derived    otherwise, the oldest observed state after it minus the archived entries from the
               entry up to that state (the balance the ledger implies just before the entry);
    zero       no observed state of that asset at all, or the listing is filtered by income type
               (the column is then a running total of what is listed, not a balance).

An entry belongs to a state when its `time` <= the state's `update_time` (ledger.md: the state's
own timestamp, not our poll time). Where the archive has a gap (see `coverage`), a balance
carried across it misses whatever the gap held.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from recorder.models import Balance, IncomeEntry, LedgerSync
from recorder.queries.states import _account_id

ANCHORS = ("observed", "derived", "zero")


@dataclass(frozen=True)
class LedgerLine:
    """One archived income entry with the asset's running balance after it."""

    time: datetime
    income_type: str
    asset: str
    income: Decimal
    running_balance: Decimal
    symbol: str
    tran_id: int
    trade_id: str
    info: str
    known_type: bool
    source: str


@dataclass(frozen=True)
class Anchor:
    """Where an asset's running balance starts: the value and how it was found (ANCHORS)."""

    asset: str
    kind: str
    value: Decimal
    # The observed state it comes from (its update_time), None for "zero".
    state_time: datetime | None


@dataclass(frozen=True)
class CoveredStretch:
    """A stretch [covered_from, covered_until] in which every entry Binance served is archived."""

    covered_from: datetime
    covered_until: datetime
    windows: int


@dataclass(frozen=True)
class Coverage:
    """The ledger's coverage for one account: stretches oldest first, gaps between, the last sync."""

    stretches: tuple[CoveredStretch, ...]
    last_sync_at: datetime | None
    last_sync_outcome: str | None
    last_error: str | None
    failed_windows: int

    @property
    def gaps(self) -> list[tuple[datetime, datetime]]:
        """(from, until) between consecutive stretches, both exclusive."""
        return [(a.covered_until, b.covered_from) for a, b in zip(self.stretches, self.stretches[1:])]


class LedgerListing:
    """Entries as they stream, and the anchor of each asset met so far."""

    def __init__(self, session: Session, label: str, *, since: datetime | None, until: datetime | None,
                 types: Sequence[str] = (), assets: Sequence[str] = ()) -> None:
        self._session = session
        self._account_id = _account_id(session, label)
        self._since, self._until = since, until
        self._types = [t.strip().upper() for t in types]
        self._assets = [a.strip().upper() for a in assets]
        self.anchors: dict[str, Anchor] = {}

    def _filtered(self, statement: Select) -> Select:
        entries = IncomeEntry.__table__.c
        statement = statement.where(entries.account_id == self._account_id)
        if self._since is not None:
            statement = statement.where(entries.time >= self._since)
        if self._until is not None:
            statement = statement.where(entries.time < self._until)
        if self._types:
            statement = statement.where(entries.income_type.in_(self._types))
        if self._assets:
            statement = statement.where(entries.asset.in_(self._assets))
        return statement

    def __iter__(self) -> Iterator[LedgerLine]:
        entries = IncomeEntry.__table__.c
        statement = self._filtered(select(
            entries.time, entries.income_type, entries.asset, entries.income, entries.symbol, entries.tran_id,
            entries.trade_id, entries.info, entries.known_type, entries.source,
        )).order_by(entries.time, entries.id)
        running: dict[str, Decimal] = {}
        result = self._session.execute(statement.execution_options(yield_per=1000))
        for row in result:
            if row.asset not in running:
                anchor = self._anchor(row.asset, row.time)
                self.anchors[row.asset] = anchor
                running[row.asset] = anchor.value
            running[row.asset] += row.income
            yield LedgerLine(row.time, row.income_type, row.asset, row.income, running[row.asset], row.symbol,
                             row.tran_id, row.trade_id, row.info, row.known_type, row.source)

    def _anchor(self, asset: str, first_time: datetime) -> Anchor:
        if self._types:
            return Anchor(asset, "zero", Decimal(0), None)
        balances = Balance.__table__.c
        entries = IncomeEntry.__table__.c
        state = select(balances.balance, balances.update_time).where(
            balances.account_id == self._account_id, balances.asset == asset, balances.present.is_(True),
        )
        income_sum = select(entries.income).where(entries.account_id == self._account_id, entries.asset == asset)
        before = self._session.execute(
            state.where(balances.update_time < first_time).order_by(balances.observed_at.desc()).limit(1)
        ).first()
        if before is not None:
            between = self._sum(income_sum.where(entries.time > before.update_time, entries.time < first_time))
            return Anchor(asset, "observed", before.balance + between, before.update_time)
        after = self._session.execute(
            state.where(balances.update_time >= first_time).order_by(balances.observed_at).limit(1)
        ).first()
        if after is not None:
            spanned = self._sum(income_sum.where(entries.time >= first_time, entries.time <= after.update_time))
            return Anchor(asset, "derived", after.balance - spanned, after.update_time)
        return Anchor(asset, "zero", Decimal(0), None)

    def _sum(self, statement: Select) -> Decimal:
        # Summed in Python: SQLite stores amounts as exact text, and its sum() would go through floats.
        return sum(self._session.execute(statement).scalars(), Decimal(0))


def coverage(session: Session, label: str) -> Coverage:
    """The ledger's covered stretches (view ledger_coverage's rule) and its last sync."""
    account_id = _account_id(session, label)
    syncs = LedgerSync.__table__.c
    stretches: list[CoveredStretch] = []
    rows = session.execute(
        select(syncs.window_start, syncs.window_end)
        .where(syncs.account_id == account_id, syncs.outcome == "ok")
        .order_by(syncs.window_start, syncs.window_end)
    )
    for start, end in rows:
        # The same rule as the view: a window starting after everything so far opens a new stretch.
        if stretches and start <= stretches[-1].covered_until:
            last = stretches[-1]
            stretches[-1] = CoveredStretch(last.covered_from, max(last.covered_until, end), last.windows + 1)
        else:
            stretches.append(CoveredStretch(start, end, 1))
    last = session.execute(
        select(syncs.finished_at, syncs.outcome, syncs.error_class, syncs.error_message)
        .where(syncs.account_id == account_id)
        .order_by(syncs.finished_at.desc(), syncs.id.desc())
        .limit(1)
    ).first()
    failed = session.execute(
        select(func.count()).where(syncs.account_id == account_id, syncs.outcome == "failed")
    ).scalar_one()
    return Coverage(
        stretches=tuple(stretches),
        last_sync_at=last.finished_at if last else None,
        last_sync_outcome=last.outcome if last else None,
        last_error=f"{last.error_class}: {last.error_message}" if last and last.error_class else None,
        failed_windows=failed,
    )
