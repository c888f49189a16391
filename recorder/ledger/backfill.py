"""Backfill: the wallet balance before the first observation, derived from the income ledger.

Binance keeps the income ledger for three months, so the wallet balance of the months before the
recorder first polled can be rebuilt: walk an asset's entries backwards from its first observed
state (the anchor); the balance before an entry is the balance after it minus its income (Binance's
identity: wallet balance = transfers + realized PnL + funding - commission, every type included).

What comes out is *derived*, never observed: it goes to `derived_balances`, a table no observed
query reads, with the entry each row follows, the anchor and the method. Only the wallet `balance`
can be derived; the ledger says nothing of cross wallet, unrealized PnL or available balance.

The span is only as good as the ledger under it. The walk stops where the archive stops being
complete: at the start of the span the ledger is known to cover (the ledger sync's coverage, see
`LedgerCoverage`), and never earlier than the account's earliest entry when coverage is unknown;
the result says where it stopped and why. Re-running replaces the asset's derived rows in one
transaction and never touches an observed row.

The daily account snapshot (`GET /sapi/v1/accountSnapshot?type=FUTURES`, one walletBalance per
asset per UTC day, last ~30 days) is an independent check: `check_snapshots` compares each day's
figure with the derived balance at the snapshot's instant.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from recorder.models import Balance, DerivedBalance, IncomeEntry
from recorder.queries.states import _account_id

METHOD = "ledger-walk"
AGREE, DISAGREE, NOT_DERIVED = "agree", "disagree", "not-derived"


@dataclass(frozen=True)
class LedgerCoverage:
    """What the income archive is known to hold for an account.

    `complete_from`: from this instant on every entry is archived, but for the holes (None:
    unknown, so the account's earliest entry is taken as the start). `holes`: spans known to be
    missing, as (start, end), end None for "everything after start"; the walk never crosses one.
    `notes`: how the coverage was judged, for the output.
    """

    complete_from: datetime | None = None
    holes: tuple[tuple[datetime, datetime | None], ...] = ()
    notes: tuple[str, ...] = ()


def archive_coverage(session: Session, account: str) -> LedgerCoverage:
    """The account's coverage: the ledger sync's (view ledger_coverage) joined with the imported files'.

    Imports keep no record of a file's span, only each entry's source, so the entries of each
    imported kind are taken to cover the time from their first to their last entry; `notes` says so.
    """
    account_id = _account_id(session, account)
    stretches = [
        (_moment(start), _moment(end)) for start, end in session.execute(
            text("SELECT covered_from, covered_until FROM ledger_coverage WHERE account_id = :id"), {"id": account_id}
        )
    ]
    notes = []
    for source, first, last in session.execute(
        select(IncomeEntry.source, func.min(IncomeEntry.time), func.max(IncomeEntry.time))
        .where(IncomeEntry.account_id == account_id, IncomeEntry.source != "api")
        .group_by(IncomeEntry.source).order_by(IncomeEntry.source)
    ):
        first, last = _moment(first), _moment(last)
        stretches.append((first, last))
        notes.append(f"entries imported from {source} files are taken to cover {_iso(first)} to {_iso(last)}, "
                     "their first to last entry (an import records no file span)")
    if not stretches:
        return LedgerCoverage(notes=tuple(notes))
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(stretches):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    holes: list[tuple[datetime, datetime | None]] = [(a[1], b[0]) for a, b in zip(merged, merged[1:])]
    holes.append((merged[-1][1], None))
    return LedgerCoverage(complete_from=merged[0][0], holes=tuple(holes), notes=tuple(notes))


def _moment(value: datetime | str) -> datetime:
    """A time from the view: SQLite hands back its UTC text, PostgreSQL a datetime."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


@dataclass(frozen=True)
class AssetBackfill:
    """One asset's derived span: from `start` up to its first observation."""

    asset: str
    anchor_observed_at: datetime
    anchor_update_time: datetime
    anchor_balance: Decimal
    # The earliest instant with a derived balance; None when nothing could be derived.
    start: datetime | None
    # The wallet balance at `start` (before the span's first entry).
    opening: Decimal | None
    entries: int
    rows: int
    # Why the span starts later than asked; None when it reaches the asked start.
    stopped: str | None


@dataclass(frozen=True)
class BackfillResult:
    """What one `backfill` did, per asset."""

    account: str
    since: datetime
    assets: tuple[AssetBackfill, ...]


class DailyWalletBalance(Protocol):
    """One asset's walletBalance in a daily account snapshot (recorder.exchange.SnapshotBalance)."""

    asset: str
    at: datetime
    wallet_balance: Decimal


@dataclass(frozen=True)
class SnapshotComparison:
    """A day's snapshot figure beside the derived balance at the same instant."""

    asset: str
    day: date
    at: datetime
    snapshot: Decimal
    derived: Decimal | None
    difference: Decimal | None
    status: str


def backfill(
    session: Session,
    account: str,
    *,
    since: datetime,
    derived_at: datetime,
    assets: Sequence[str] | None = None,
    coverage: LedgerCoverage = LedgerCoverage(),
) -> BackfillResult:
    """Derive and store the wallet balance of each asset from `since` up to its first observation.

    The caller owns the transaction: commit it to keep the rows, roll it back to keep nothing.
    """
    account_id = _account_id(session, account)
    earliest_entry = session.scalar(select(func.min(IncomeEntry.time)).where(IncomeEntry.account_id == account_id))
    done = []
    for anchor in _anchors(session, account_id, assets):
        session.execute(
            delete(DerivedBalance).where(DerivedBalance.account_id == account_id, DerivedBalance.asset == anchor.asset)
        )
        start, stopped = _start(since, anchor.update_time, coverage, earliest_entry)
        if start is None:
            done.append(AssetBackfill(anchor.asset, anchor.observed_at, anchor.update_time, anchor.balance,
                                      None, None, 0, 0, stopped))
            continue
        entries = session.scalars(
            select(IncomeEntry)
            .where(
                IncomeEntry.account_id == account_id,
                IncomeEntry.asset == anchor.asset,
                IncomeEntry.time >= start,
                # Binance's per-asset updateTime is the time of the state it served: entries up
                # to it are in the anchor's balance, later ones are not.
                IncomeEntry.time <= anchor.update_time,
            )
            .order_by(IncomeEntry.time.desc(), IncomeEntry.id.desc())
        ).all()
        balance = anchor.balance
        rows = []
        for entry in entries:
            rows.append(_row(account_id, anchor, entry.time, balance, entry.id, derived_at))
            balance -= entry.income
        if not entries or start < entries[-1].time:
            # The opening balance holds from the start of the covered span up to the first entry.
            rows.append(_row(account_id, anchor, start, balance, None, derived_at))
        session.add_all(rows)
        done.append(AssetBackfill(anchor.asset, anchor.observed_at, anchor.update_time, anchor.balance,
                                  min(row.at for row in rows), balance, len(entries), len(rows), stopped))
    session.flush()
    return BackfillResult(account, since, tuple(done))


def _anchors(session: Session, account_id: int, assets: Sequence[str] | None) -> list[Balance]:
    """Each asset's first recorded state, when the asset was present in it."""
    first = (
        select(Balance.asset, func.min(Balance.observed_at).label("first_at"))
        .where(Balance.account_id == account_id)
        .group_by(Balance.asset)
        .subquery()
    )
    query = (
        select(Balance)
        .join(first, (Balance.asset == first.c.asset) & (Balance.observed_at == first.c.first_at))
        .where(Balance.account_id == account_id, Balance.present.is_(True))
        .order_by(Balance.asset)
    )
    if assets:
        query = query.where(Balance.asset.in_(list(assets)))
    return list(session.scalars(query))


def _start(
    since: datetime, anchor_time: datetime, coverage: LedgerCoverage, earliest_entry: datetime | None
) -> tuple[datetime | None, str | None]:
    """Where the walk may start for this anchor, and why it starts later than `since` if it does."""
    start, stopped = since, None
    if coverage.complete_from is not None:
        if coverage.complete_from > start:
            start = coverage.complete_from
            stopped = f"the ledger archive is complete only from {_iso(start)}"
    elif earliest_entry is None:
        return None, "no income entries are archived for this account (run the ledger sync or `recorder import`)"
    elif earliest_entry > start:
        start = earliest_entry
        stopped = f"the archived income entries start at {_iso(start)}"
    for hole_start, hole_end in coverage.holes:
        if hole_end is None and hole_start < anchor_time:
            return None, (f"the ledger archive covers nothing after {_iso(hole_start)}, before the first "
                          f"observation at {_iso(anchor_time)}: a balance derived across that would be invented")
        if hole_end is not None and hole_start < anchor_time and hole_end > start:
            start = hole_end
            stopped = f"the ledger archive has a gap from {_iso(hole_start)} to {_iso(hole_end)}"
    if start > anchor_time:
        return None, stopped or "nothing to derive before the first observation"
    return start, stopped


def _row(account_id: int, anchor: Balance, at: datetime, balance: Decimal, entry_id: int | None,
         derived_at: datetime) -> DerivedBalance:
    return DerivedBalance(account_id=account_id, asset=anchor.asset, at=at, balance=balance,
                          income_entry_id=entry_id, anchor_balance_id=anchor.id, method=METHOD,
                          derived_at=derived_at)


def derived_timeline(session: Session, account: str, asset: str) -> list[tuple[datetime, Decimal]]:
    """The stored derived balances of one asset as (from, balance), oldest first."""
    account_id = _account_id(session, account)
    rows = session.execute(
        select(DerivedBalance.at, DerivedBalance.balance)
        .where(DerivedBalance.account_id == account_id, DerivedBalance.asset == asset)
        .order_by(DerivedBalance.at, DerivedBalance.id.desc())
    ).all()
    return [(row.at, row.balance) for row in rows]


def check_snapshots(
    session: Session, account: str, snapshots: Iterable[DailyWalletBalance]
) -> list[SnapshotComparison]:
    """Each snapshot figure against the derived balance at its instant, by asset and day.

    A day outside the derived span (before its start, or at or after the first observation)
    is `not-derived`: nothing to compare it with here.
    """
    account_id = _account_id(session, account)
    comparisons = []
    for snapshot in sorted(snapshots, key=lambda s: (s.asset, s.at)):
        row = session.execute(
            select(DerivedBalance.balance, Balance.observed_at)
            .join(Balance, Balance.id == DerivedBalance.anchor_balance_id)
            .where(DerivedBalance.account_id == account_id, DerivedBalance.asset == snapshot.asset,
                   DerivedBalance.at <= snapshot.at)
            # Several rows can share a millisecond: the one inserted first follows the latest entry.
            .order_by(DerivedBalance.at.desc(), DerivedBalance.id.asc())
            .limit(1)
        ).first()
        if row is None or snapshot.at >= row.observed_at:
            comparisons.append(SnapshotComparison(snapshot.asset, snapshot.at.date(), snapshot.at,
                                                  snapshot.wallet_balance, None, None, NOT_DERIVED))
            continue
        difference = row.balance - snapshot.wallet_balance
        comparisons.append(SnapshotComparison(snapshot.asset, snapshot.at.date(), snapshot.at, snapshot.wallet_balance,
                                              row.balance, difference, AGREE if difference == 0 else DISAGREE))
    return comparisons


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class DerivedState:
    """A stored derived balance, for readers that ask for derived rows beside the observed ones."""

    asset: str
    at: datetime
    balance: Decimal
    income_entry_id: int | None
    anchor_balance_id: int


def iter_derived(
    session: Session,
    account: str,
    *,
    assets: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Iterator[DerivedState]:
    """The derived balances with `at` in [since, until), oldest first (by time, then asset)."""
    account_id = _account_id(session, account)
    query = select(DerivedBalance.asset, DerivedBalance.at, DerivedBalance.balance, DerivedBalance.income_entry_id,
                   DerivedBalance.anchor_balance_id).where(DerivedBalance.account_id == account_id)
    if assets:
        query = query.where(DerivedBalance.asset.in_(list(assets)))
    if since is not None:
        query = query.where(DerivedBalance.at >= since)
    if until is not None:
        query = query.where(DerivedBalance.at < until)
    # Within a millisecond the row stored last follows the earliest entry: it comes first.
    query = query.order_by(DerivedBalance.at, DerivedBalance.asset, DerivedBalance.id.desc())
    for row in session.execute(query):
        yield DerivedState(row.asset, row.at, row.balance, row.income_entry_id, row.anchor_balance_id)


OBSERVED, DERIVED = "observed", "derived"


def history_records(account: str, observed: Iterable[Any], derived: Iterable[DerivedState]) -> Iterator[dict[str, Any]]:
    """Observed states (AssetState) and derived balances as one history, by time then asset, each
    with `source` observed or derived. A derived row has only `balance`: the ledger cannot tell
    the other amounts, so they are None, never invented; its `observed_at` is the instant from
    which the derived balance held."""
    from recorder.reports.render import state_fields

    observed_records = ({"account": account, **state_fields(state), "source": OBSERVED} for state in observed)
    derived_records = (
        {"account": account, **state_fields(None), "asset": state.asset, "observed_at": state.at,
         "present": True, "balance": state.balance, "source": DERIVED}
        for state in derived
    )
    return heapq.merge(derived_records, observed_records, key=lambda record: (record["observed_at"], record["asset"]))
