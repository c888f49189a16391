"""A period statement: per account and asset, what the wallet balance was, did and how well we saw it.

`build_statement` reads the database (through recorder.queries) once into a `Statement`, a
tree of frozen dataclasses; `write_statement` renders it as a table, CSV or JSON, and the
HTML report (recorder.reports.html) renders the same tree. Nothing here writes.

The period is [since, until). "The balance as of t" is the last state observed strictly
before t, so a change observed exactly at `since` is inside the period and the closing of
one period is the opening of the next. For every other instant that is what `recorder
balances --at t` shows. When t falls inside a gap (the last successful poll before it is
older than the schedule allowed), the value is the last one seen and its status says
'stale', as `balances --at` does; before the first successful poll it is unknown
('before_first_poll'). An asset that is absent at an edge (vanished, or not there yet while
polls were) counts as 0 in the net change; its opening or closing balance stays empty.

`roll_forward` is the income ledger's breakdown of the wallet balance over the period
(recorder.ledger.reconcile.roll_forward: opening -> transfers -> realized PnL -> fees -> rebates
-> funding -> other -> expected closing -> closing -> residual, each unknown income type named
and flagged); None when no wallet state bounds the period.

With `include_derived` (`--include-derived`, the same opt-in as `history`), the balances that
`recorder backfill` derived from the income ledger fill in what is unknown before an asset's
first observation, always labelled as such and never blended: an edge or day edge that would be
'before_first_poll' takes the derived balance with status 'derived'; each day says its `source`
('observed', 'derived', or 'derived-opening' when it opens derived and closes observed); the
asset names its derived span; and the stretch of the period inside that span gets its own
roll-forward, `derived_roll_forward`, whose residual is 0 by construction (the balances were
walked back through these very entries), so it is shown as derived, never as a verified
reconciliation. Without the option, or with no derived rows, nothing of this appears.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any, TextIO

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from recorder.ledger.reconcile import ROLL_FORWARD_ORDER, RollForward, roll_forward
from recorder.ledger.types import ROLL_FORWARD_GROUPS
from recorder.queries import Gap, find_account, gaps
from recorder.queries import derived as derived_queries
from recorder.queries import periods
from recorder.queries.derived import DerivedSpan
from recorder.queries.diffs import EXACT
from recorder.queries.periods import BalanceMove, Extreme, PollCounts
from recorder.queries.states import AssetState
from recorder.reports.render import FORMATS, format_time, write_csv, write_json, write_table

UTC = timezone.utc
LARGEST_MOVES = 10
OBSERVED, DERIVED = "observed", "derived"
# A day that opens on a derived balance and closes on an observed one (the first observation's day).
DERIVED_OPENING = "derived-opening"
DERIVED_NOTE = "derived from the income ledger (recorder backfill), not observed"
DERIVED_ROLL_FORWARD_NOTE = ("derived span: the balances were walked back from the first observation through these "
                             "entries, so the residual is 0 by construction; not a verified reconciliation")


@dataclass(frozen=True)
class Mark:
    """An asset at one edge of the period: the state in force there and the evidence for it.

    status: 'ok', 'stale' (inside a gap), 'vanished', 'unobserved' (polls, but the asset not
    seen yet), 'before_first_poll', or 'derived' (only with include_derived: before the first
    poll, a balance derived from the income ledger; `observed_at` is then the instant the
    derived balance holds from, and the amounts the ledger cannot tell are None).
    """

    at: datetime
    status: str
    observed_at: datetime | None
    last_poll_at: datetime | None
    balance: Decimal | None
    unrealized_pnl: Decimal | None
    available_balance: Decimal | None

    @property
    def margin_balance(self) -> Decimal | None:
        """Wallet balance + unrealized PnL (Binance's marginBalance)."""
        if self.balance is None or self.unrealized_pnl is None:
            return None
        return self.balance + self.unrealized_pnl

    @property
    def counted(self) -> Decimal | None:
        """The balance as the net change counts it: absent is 0, unknown (before any poll) None."""
        if self.status == "before_first_poll":
            return None
        return self.balance if self.balance is not None else Decimal(0)


@dataclass(frozen=True)
class Day:
    """One day of the period in the statement's zone (the first and last may be cut short)."""

    day: date
    start: datetime
    end: datetime
    open: Decimal | None
    close: Decimal | None
    blind_seconds: float
    # 'observed', 'derived', or 'derived-opening' (opens derived, closes observed).
    source: str = OBSERVED

    @property
    def change(self) -> Decimal | None:
        """close - open, exact; None when either is unknown."""
        return None if self.open is None or self.close is None else self.close - self.open


@dataclass(frozen=True)
class AssetStatement:
    """One asset of one account over the period."""

    asset: str
    opening: Mark
    closing: Mark
    high: Extreme | None
    low: Extreme | None
    changes: int
    days: tuple[Day, ...]
    # The income ledger's breakdown of the wallet balance (recorder.ledger.reconcile.RollForward).
    roll_forward: RollForward | None = None
    # With include_derived: the asset's derived span when it reaches into the period, and the
    # roll-forward over the part of the period inside it (residual 0 by construction).
    derived: DerivedSpan | None = None
    derived_roll_forward: RollForward | None = None

    @property
    def net_change(self) -> Decimal | None:
        """Closing - opening wallet balance (absent counts as 0); None when the opening is unknown."""
        opening, closing = self.opening.counted, self.closing.counted
        return None if opening is None or closing is None else closing - opening


@dataclass(frozen=True)
class Coverage:
    """How much of the period the poll log proves: observed versus blind time, the gaps, the polls."""

    observed_seconds: float
    blind_seconds: float
    gaps: tuple[Gap, ...]
    polls: PollCounts

    @property
    def observed_share(self) -> float | None:
        """Observed time / period length (0..1); None for an empty period."""
        total = self.observed_seconds + self.blind_seconds
        return None if total <= 0 else self.observed_seconds / total


@dataclass(frozen=True)
class AccountStatement:
    """One account over the period: coverage (shared by its assets, one poll reads them all) and assets."""

    account: str
    coverage: Coverage
    assets: tuple[AssetStatement, ...]
    largest_moves: tuple[BalanceMove, ...] = field(default=())


@dataclass(frozen=True)
class Statement:
    """The whole statement: the period, the zone its days are cut in, and every account."""

    since: datetime
    until: datetime
    tz: tzinfo
    generated_at: datetime
    version: str
    accounts: tuple[AccountStatement, ...]
    include_derived: bool = False

    @property
    def derived_spans(self) -> list[tuple[str, DerivedSpan]]:
        """(account, span) of every derived span shown, for a report's list of sources."""
        return [(account.account, asset.derived) for account in self.accounts for asset in account.assets
                if asset.derived is not None]


def build_statement(
    session: Session | Connection,
    since: datetime,
    until: datetime,
    accounts: Sequence[str],
    tz: tzinfo = UTC,
    *,
    generated_at: datetime | None = None,
    activity_sink: dict[str, Mapping[str, periods.Activity]] | None = None,
    chart_buckets: int | None = None,
    include_derived: bool = False,
) -> Statement:
    """The statement of [since, until) for each account (in the order given), days cut in `tz`.

    Costs one index seek per asset and edge (opening, closing, every midnight), one pass over
    the period's rows per asset (SQLite) or an aggregate, two top-1 sorts and a window
    (PostgreSQL), and the stored gaps: in
    proportion to the period, never to the whole history, and in memory bounded by the
    number of assets and days. `activity_sink`, when given, receives per account label the
    period's per-asset activity (recorder.queries.periods), so the HTML report's charts do not
    scan the period again for it; with `chart_buckets` (SQLite) the same scan fills in their buckets.
    `include_derived` adds the backfilled balances, labelled (see the module docstring).
    """
    from recorder import package_version

    for value in (since, until):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("build_statement takes aware datetimes: attach a time zone (UTC)")
    if until < since:
        raise ValueError("the period ends before it starts")
    since, until = since.astimezone(UTC), until.astimezone(UTC)
    built = tuple(
        _account_statement(session, label, since, until, tz, activity_sink, chart_buckets, include_derived)
        for label in accounts
    )
    return Statement(since, until, tz, generated_at or datetime.now(UTC), package_version(), built, include_derived)


def _account_statement(
    session: Session | Connection,
    label: str,
    since: datetime,
    until: datetime,
    tz: tzinfo,
    activity_sink: dict[str, Mapping[str, periods.Activity]] | None,
    chart_buckets: int | None = None,
    include_derived: bool = False,
) -> AccountStatement:
    connection = session.connection() if isinstance(session, Session) else session
    account = periods.account_id(connection, label)
    if account is None:
        if isinstance(session, Session):
            find_account(session, label)  # raises ConfigError naming the known accounts
        from recorder.errors import ConfigError

        raise ConfigError(f"no account {label!r} in the database")
    gap_list = _gaps(session, connection, label, since, until)
    blind = sum(_overlap(gap.start, gap.end, since, until) for gap in gap_list)
    coverage = Coverage(
        observed_seconds=(until - since).total_seconds() - blind,
        blind_seconds=blind,
        gaps=tuple(gap_list),
        polls=periods.poll_counts(connection, account, since, until),
    )
    edges = _day_edges(since, until, tz)
    at_edges = periods.balances_at_edges(connection, account, edges)
    opening_poll = periods.last_ok_poll_before(connection, account, since)
    closing_poll = periods.last_ok_poll_before(connection, account, until)
    opening_stale = _stale(connection, account, opening_poll, since)
    closing_stale = _stale(connection, account, closing_poll, until)
    activity = periods.period_activity(connection, account, since, until, chart_buckets)
    if activity_sink is not None:
        activity_sink[label] = activity
    first_poll = periods.first_ok_poll(connection, account)
    spans = derived_queries.spans(connection, account) if include_derived else {}
    # The same for every asset: computed once, not per asset and day.
    day_blind = [sum(_overlap(gap.start, gap.end, start, end) for gap in gap_list) for start, end in zip(edges, edges[1:])]
    assets = []
    for asset, states in at_edges.items():
        opening = _mark(states[0], since, opening_poll, opening_stale)
        closing = _mark(states[-1], until, closing_poll, closing_stale)
        span = spans.get(asset)
        if span is not None and (span.start >= until or span.anchor_observed_at < since):
            span = None  # the derived span does not reach into the period
        if span is not None:
            opening = _derived_mark(connection, account, span, opening)
            closing = _derived_mark(connection, account, span, closing)
        rows = activity.get(asset, periods.Activity(0))
        changes = rows.changes
        if opening.balance is None and closing.balance is None and changes == 0:
            continue  # not held at any time in the period
        high, low = rows.extremes or periods.range_extremes(
            connection, account, asset, since, until, units=rows.balance_units, bounds=(rows.high_units, rows.low_units)
        )
        if opening.balance is not None and opening.status != DERIVED:
            # The balance in force at the start counts too, held from `since` (high and low are
            # of observed balances only).
            if high is None or opening.balance > high.value:
                high = Extreme(opening.balance, since)
            if low is None or opening.balance < low.value:
                low = Extreme(opening.balance, since)
        counted = [_counted(state, edge, first_poll) for state, edge in zip(states, edges)]
        sources = [OBSERVED] * len(edges)
        if span is not None:
            for index, edge in enumerate(edges):
                if counted[index] is None and (point := derived_queries.as_of(connection, account, span, edge)):
                    counted[index], sources[index] = point.balance, DERIVED
        days = tuple(
            Day(
                start.astimezone(tz).date(),
                start,
                end,
                counted[index],
                counted[index + 1],
                day_blind[index],
                _source(counted[index], sources[index], counted[index + 1], sources[index + 1]),
            )
            for index, (start, end) in enumerate(zip(edges, edges[1:]))
        )
        rolled = roll_forward(connection, label, asset, since, until) if until > since else None
        derived_rolled = _derived_roll_forward(connection, account, span, since, until) if span is not None else None
        assets.append(AssetStatement(asset, opening, closing, high, low, changes, days, rolled, span, derived_rolled))
    moves = tuple(periods.largest_moves(connection, account, since, until, activity, LARGEST_MOVES)) if until > since else ()
    return AccountStatement(label, coverage, tuple(assets), moves)


def _gaps(session: Session | Connection, connection: Connection, label: str, since: datetime, until: datetime) -> list[Gap]:
    if until <= since:
        return []
    if isinstance(session, Session):
        return gaps(session, label, since=since, until=until)
    with Session(bind=connection) as bound:
        return gaps(bound, label, since=since, until=until)


def _overlap(start: datetime, end: datetime, low: datetime, high: datetime) -> float:
    return max(0.0, (min(end, high) - max(start, low)).total_seconds())


def _stale(connection: Connection, account: int, last_poll: datetime | None, at: datetime) -> bool:
    return last_poll is not None and at > periods.due_after(connection, account, last_poll, at)


def _mark(state: AssetState | None, at: datetime, last_poll: datetime | None, stale: bool) -> Mark:
    if last_poll is None:
        status = "before_first_poll"
    elif state is None:
        status = "unobserved"
    elif not state.present:
        status = "vanished"
    else:
        status = "stale" if stale else "ok"
    present = state is not None and state.present
    return Mark(
        at,
        status,
        None if state is None else state.observed_at,
        last_poll,
        state.balance if present else None,
        state.cross_un_pnl if present else None,
        state.available_balance if present else None,
    )


def _derived_mark(connection: Connection, account: int, span: DerivedSpan, mark: Mark) -> Mark:
    """The mark, or, when it is unknown (before the first poll), the derived balance in force there."""
    if mark.status != "before_first_poll":
        return mark
    point = derived_queries.as_of(connection, account, span, mark.at)
    if point is None:
        return mark
    return Mark(mark.at, DERIVED, point.at, None, point.balance, None, None)


def _source(open_value: Decimal | None, open_source: str, close_value: Decimal | None, close_source: str) -> str:
    """A day's (or the period's) source from its two edges' values: unknown values say nothing."""
    known = {source for value, source in ((open_value, open_source), (close_value, close_source)) if value is not None}
    if known == {DERIVED}:
        return DERIVED
    return DERIVED_OPENING if DERIVED in known else OBSERVED


def _derived_roll_forward(
    connection: Connection, account: int, span: DerivedSpan, since: datetime, until: datetime
) -> RollForward | None:
    """The roll-forward over the part of [since, until) inside the derived span, from stored derived rows.

    Opening: the derived balance in force at `since` (or at the span's start, if later).
    Closing: the derived balance in force at `until`, or the anchor (the first observation) when
    the span ends inside the period. The entries counted are the ones the walk went through.
    """
    start = max(since, span.start)
    opening = derived_queries.as_of(connection, account, span, start)
    if opening is None or start >= until:
        return None
    if span.anchor_observed_at < until:
        closing_balance, closing_at, end = span.anchor_balance, span.anchor_observed_at, span.anchor_update_time
    else:
        closing = derived_queries.as_of(connection, account, span, until)
        if closing is None:
            return None
        closing_balance, closing_at, end = closing.balance, closing.at, until
    by_type: dict[str, Decimal] = {}
    unknown = []
    groups = dict.fromkeys(ROLL_FORWARD_ORDER, Decimal(0))
    sums = derived_queries.sums_by_type(connection, account, span.asset, start, until, span.anchor_update_time)
    for income_type, (known, amount) in sums.items():
        by_type[income_type] = amount
        if not known:
            unknown.append(income_type)
        group = ROLL_FORWARD_GROUPS.get(income_type, "other")
        groups[group] = EXACT.add(groups[group], amount)
    return RollForward(span.asset, opening.balance, opening.at, start, closing_balance, closing_at, end, groups,
                       by_type, tuple(unknown), Decimal(0))


def _counted(state: AssetState | None, at: datetime, first_poll: datetime | None) -> Decimal | None:
    # The same rule as Mark.counted: unknown before the first successful poll, else absent is 0.
    if first_poll is None or at <= first_poll:
        return None if state is None else (state.balance if state.present else Decimal(0))
    if state is None or not state.present:
        return Decimal(0)
    return state.balance


def _day_edges(since: datetime, until: datetime, tz: tzinfo) -> list[datetime]:
    """`since`, every local midnight in (since, until), `until`."""
    if until <= since:
        return [since, until]
    edges = [since]
    day = since.astimezone(tz).date() + timedelta(days=1)
    while True:
        midnight = datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)
        if midnight >= until:
            break
        if midnight > edges[-1]:
            edges.append(midnight)
        day += timedelta(days=1)
    edges.append(until)
    return edges


# --- renderings ------------------------------------------------------------------------------


def statement_document(statement: Statement) -> dict[str, Any]:
    """The statement as plain JSON-ready data: decimals and datetimes left for the JSON writer."""
    return {
        "since": statement.since,
        "until": statement.until,
        "tz": str(statement.tz),
        "generated_at": statement.generated_at,
        "version": statement.version,
        "accounts": [
            {
                "account": account.account,
                "coverage": _coverage_document(account.coverage),
                "assets": [_asset_document(asset, statement.include_derived) for asset in account.assets],
                "largest_changes": [
                    {"asset": m.asset, "observed_at": m.observed_at, "before": m.before, "after": m.after, "change": m.delta}
                    for m in account.largest_moves
                ],
            }
            for account in statement.accounts
        ],
    }


def _coverage_document(coverage: Coverage) -> dict[str, Any]:
    return {
        "observed_seconds": coverage.observed_seconds,
        "blind_seconds": coverage.blind_seconds,
        "observed_share": coverage.observed_share,
        "gaps": [
            {"start": gap.start, "end": gap.end, "seconds": gap.seconds, "ongoing": gap.open_end, "failures": dict(gap.failures)}
            for gap in coverage.gaps
        ],
        "polls": {
            "ok": coverage.polls.ok,
            "failed": coverage.polls.failed,
            "success_rate": coverage.polls.success_rate,
            "failures": dict(coverage.polls.failures),
        },
    }


def _mark_document(mark: Mark, include_derived: bool = False) -> dict[str, Any]:
    document = {
        "at": mark.at,
        "status": mark.status,
        "balance": mark.balance,
        "unrealized_pnl": mark.unrealized_pnl,
        "margin_balance": mark.margin_balance,
        "available_balance": mark.available_balance,
        "observed_at": mark.observed_at,
        "last_poll_at": mark.last_poll_at,
    }
    if include_derived:
        document["source"] = DERIVED if mark.status == DERIVED else OBSERVED
    return document


def _extreme_document(extreme: Extreme | None) -> dict[str, Any] | None:
    return None if extreme is None else {"balance": extreme.value, "at": extreme.at}


def _asset_document(asset: AssetStatement, include_derived: bool = False) -> dict[str, Any]:
    document = {
        "asset": asset.asset,
        "opening": _mark_document(asset.opening, include_derived),
        "closing": _mark_document(asset.closing, include_derived),
        "net_change": asset.net_change,
        "high": _extreme_document(asset.high),
        "low": _extreme_document(asset.low),
        "changes": asset.changes,
        "roll_forward": roll_forward_document(asset.roll_forward),
        "days": [
            {"day": day.day.isoformat(), "start": day.start, "end": day.end, "open": day.open, "close": day.close,
             "change": day.change, "blind_seconds": day.blind_seconds,
             **({"source": day.source} if include_derived else {})}
            for day in asset.days
        ],
    }
    if include_derived:
        document["derived"] = _derived_document(asset)
    return document


def _derived_document(asset: AssetStatement) -> dict[str, Any] | None:
    span = asset.derived
    if span is None:
        return None
    rolled = roll_forward_document(asset.derived_roll_forward)
    if rolled is not None:
        rolled = {**rolled, "verified": False, "note": DERIVED_ROLL_FORWARD_NOTE}
    return {"from": span.start, "until": span.anchor_observed_at, "rows": span.rows, "note": DERIVED_NOTE,
            "roll_forward": rolled}


def roll_forward_document(rolled: RollForward | None) -> dict[str, Any] | None:
    """The roll-forward as JSON-ready data: each line in order, every income type by name."""
    if rolled is None:
        return None
    return {
        "opening": rolled.opening, "opening_observed_at": rolled.opening_observed_at,
        **{group: rolled.groups[group] for group in ROLL_FORWARD_ORDER},
        "expected_closing": rolled.expected_closing,
        "closing": rolled.closing, "closing_observed_at": rolled.closing_observed_at,
        "residual": rolled.residual,
        "by_type": dict(rolled.by_type),
        "unknown_types": list(rolled.unknown_types),
        "pending": rolled.pending,
        "flags": list(rolled.flags),
        "from": rolled.start, "to": rolled.end,
    }


CSV_COLUMNS = (
    "account", "asset", "row", "start", "end", "open", "close", "change", "high", "high_at", "low", "low_at",
    "changes", "opening_status", "opening_observed_at", "closing_status", "closing_observed_at",
    "opening_unrealized_pnl", "closing_unrealized_pnl", "opening_margin_balance", "closing_margin_balance",
    "blind_seconds",
    # The roll-forward, on 'period' rows (last, so readers addressing the older columns by position keep working).
    *(f"rf_{group}" for group in ROLL_FORWARD_ORDER), "rf_opening", "rf_expected_closing", "rf_closing",
    "rf_residual", "rf_pending", "rf_unknown_types", "rf_flags",
)


# With include_derived: which data each row rests on, and the derived span's own rows.
CSV_DERIVED_COLUMNS = (*CSV_COLUMNS, "source")


def statement_records(statement: Statement) -> list[dict[str, Any]]:
    """Flat rows: per account and asset one 'period' row, then one 'day' row per day.

    With include_derived every row has a `source`, and an asset whose derived span reaches into
    the period gets a 'derived_span' row after its period row: the span's part of the period,
    its derived opening and closing and its roll-forward (residual 0 by construction).
    """
    records = []
    derived = statement.include_derived
    for account in statement.accounts:
        for asset in account.assets:
            period_source = _source(asset.opening.balance, asset.opening.status if asset.opening.status == DERIVED
                                    else OBSERVED, asset.closing.balance,
                                    asset.closing.status if asset.closing.status == DERIVED else OBSERVED)
            records.append({
                "account": account.account, "asset": asset.asset, "row": "period",
                "start": statement.since, "end": statement.until,
                "open": asset.opening.balance, "close": asset.closing.balance, "change": asset.net_change,
                "high": asset.high.value if asset.high else None, "high_at": asset.high.at if asset.high else None,
                "low": asset.low.value if asset.low else None, "low_at": asset.low.at if asset.low else None,
                "changes": asset.changes,
                "opening_status": asset.opening.status, "opening_observed_at": asset.opening.observed_at,
                "closing_status": asset.closing.status, "closing_observed_at": asset.closing.observed_at,
                "opening_unrealized_pnl": asset.opening.unrealized_pnl,
                "closing_unrealized_pnl": asset.closing.unrealized_pnl,
                "opening_margin_balance": asset.opening.margin_balance,
                "closing_margin_balance": asset.closing.margin_balance,
                "blind_seconds": account.coverage.blind_seconds,
                **_roll_forward_record(asset.roll_forward),
                **({"source": period_source} if derived else {}),
            })
            if derived and (rolled := asset.derived_roll_forward) is not None:
                records.append({
                    "account": account.account, "asset": asset.asset, "row": "derived_span",
                    "start": rolled.start, "end": rolled.closing_observed_at, "open": rolled.opening,
                    "close": rolled.closing, "change": EXACT.subtract(rolled.closing, rolled.opening),
                    "opening_status": DERIVED, "opening_observed_at": rolled.opening_observed_at,
                    "closing_status": "ok" if rolled.closing_observed_at == asset.derived.anchor_observed_at else DERIVED,
                    "closing_observed_at": rolled.closing_observed_at,
                    **_roll_forward_record(rolled), "source": DERIVED,
                })
            for day in asset.days:
                records.append({
                    "account": account.account, "asset": asset.asset, "row": "day",
                    "start": day.start, "end": day.end, "open": day.open, "close": day.close,
                    "change": day.change, "blind_seconds": day.blind_seconds,
                    **({"source": day.source} if derived else {}),
                })
    return records


def _roll_forward_record(rolled: RollForward | None) -> dict[str, Any]:
    if rolled is None:
        return {}
    return {
        **{f"rf_{group}": rolled.groups[group] for group in ROLL_FORWARD_ORDER},
        "rf_opening": rolled.opening, "rf_expected_closing": rolled.expected_closing, "rf_closing": rolled.closing,
        "rf_residual": rolled.residual, "rf_pending": rolled.pending,
        "rf_unknown_types": ",".join(rolled.unknown_types), "rf_flags": ",".join(rolled.flags),
    }


def write_statement(statement: Statement, fmt: str, stream: TextIO, tz: tzinfo = UTC) -> None:
    """Render the statement: an aligned text report, CSV (one uniform row schema) or JSON."""
    if fmt == "json":
        write_json(statement_document(statement), stream)
    elif fmt == "csv":
        columns = CSV_DERIVED_COLUMNS if statement.include_derived else CSV_COLUMNS
        write_csv(columns, statement_records(statement), stream, tz)
    elif fmt == "table":
        _write_text(statement, stream, tz)
    else:
        raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")


def _write_text(statement: Statement, stream: TextIO, tz: tzinfo) -> None:
    stream.write(
        f"Statement {format_time(statement.since, tz)} to {format_time(statement.until, tz)} (until excluded), "
        f"days in {statement.tz}; generated {format_time(statement.generated_at, tz)} by recorder {statement.version}\n"
    )
    for account in statement.accounts:
        coverage = account.coverage
        share = coverage.observed_share
        stream.write(f"\nAccount {account.account}\n")
        stream.write(
            f"coverage: observed {coverage.observed_seconds:.0f} s, blind {coverage.blind_seconds:.0f} s"
            + (f" ({share * 100:.2f}% observed)" if share is not None else "")
            + f"; polls ok {coverage.polls.ok}, failed {coverage.polls.failed}"
            + (" (" + ", ".join(f"{name} {count}" for name, count in coverage.polls.failures.items()) + ")" if coverage.polls.failures else "")
            + "\n\n"
        )
        summary = [
            {
                "asset": asset.asset,
                "opening": asset.opening.balance, "opening_status": asset.opening.status,
                "closing": asset.closing.balance, "closing_status": asset.closing.status,
                "change": asset.net_change,
                "high": asset.high.value if asset.high else None, "high_at": asset.high.at if asset.high else None,
                "low": asset.low.value if asset.low else None, "low_at": asset.low.at if asset.low else None,
                "changes": asset.changes,
            }
            for asset in account.assets
        ]
        if summary:
            write_table(tuple(summary[0]), summary, stream, tz)
            marks = [
                {"asset": asset.asset, "edge": edge, "at": mark.at, "observed_at": mark.observed_at,
                 "unrealized_pnl": mark.unrealized_pnl, "margin_balance": mark.margin_balance,
                 "available_balance": mark.available_balance}
                for asset in account.assets for edge, mark in (("opening", asset.opening), ("closing", asset.closing))
            ]
            stream.write("\n")
            write_table(tuple(marks[0]), marks, stream, tz)
            for asset in account.assets:
                if (span := asset.derived) is not None:
                    stream.write(
                        f"{asset.asset}: balances before {format_time(span.anchor_observed_at, tz)} (its first observation)"
                        f" are {DERIVED_NOTE}: {span.rows} derived from {format_time(span.start, tz)}"
                        + "".join(f"; {edge} derived, holding from {format_time(mark.observed_at, tz)}"
                                  for edge, mark in (("opening", asset.opening), ("closing", asset.closing))
                                  if mark.status == DERIVED)
                        + "\n"
                    )
        else:
            stream.write("no asset held in the period\n")
        rolled = [
            {"asset": asset.asset, "opening": r.opening, **{group: r.groups[group] for group in ROLL_FORWARD_ORDER},
             "expected_closing": r.expected_closing, "closing": r.closing, "residual": r.residual,
             "pending": r.pending, "flags": ",".join(r.flags)}
            for asset in account.assets if (r := asset.roll_forward) is not None
        ]
        if rolled:
            stream.write("\nroll-forward (wallet balance; the income ledger's entries by group):\n")
            write_table(tuple(rolled[0]), rolled, stream, tz)
            for asset in account.assets:
                if asset.roll_forward is not None and asset.roll_forward.unknown_types:
                    names = ", ".join(f"{name} {format(asset.roll_forward.by_type[name], 'f')}"
                                      for name in asset.roll_forward.unknown_types)
                    stream.write(f"{asset.asset}: unknown income type (counted under other, flagged): {names}\n")
        derived_rolled = [
            {"asset": asset.asset, "from": r.start, "to": r.closing_observed_at, "opening": r.opening,
             **{group: r.groups[group] for group in ROLL_FORWARD_ORDER}, "expected_closing": r.expected_closing,
             "closing": r.closing, "residual": r.residual, "source": DERIVED}
            for asset in account.assets if (r := asset.derived_roll_forward) is not None
        ]
        if derived_rolled:
            stream.write(f"\nroll-forward over the derived span ({DERIVED_ROLL_FORWARD_NOTE}):\n")
            write_table(tuple(derived_rolled[0]), derived_rolled, stream, tz)
        if coverage.gaps:
            stream.write("\ngaps:\n")
            rows = [{"start": g.start, "end": g.end, "seconds": g.seconds, "ongoing": g.open_end,
                     "failed_polls": sum(g.failures.values()), "failures": dict(g.failures)} for g in coverage.gaps]
            write_table(tuple(rows[0]), rows, stream, tz)
        for asset in account.assets:
            stream.write(f"\n{asset.asset} by day:\n")
            rows = [{"day": day.day.isoformat(), "open": day.open, "close": day.close, "change": day.change,
                     "blind_seconds": day.blind_seconds, "source": day.source} for day in asset.days]
            columns = ("day", "open", "close", "change", "blind_seconds")
            write_table((*columns, "source") if statement.include_derived else columns, rows, stream, tz)
