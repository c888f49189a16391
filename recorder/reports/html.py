"""The HTML report: one self-contained file with the statement, a chart per asset and poll health.

The page loads nothing: uPlot (vendored under static/, see static/README.md), its CSS and the
data are inlined, and a Content-Security-Policy meta tag forbids every fetch, so it opens the
same offline, from a mail attachment or from a file share. Everything that came from the
database (account labels, assets, error messages) goes through Jinja2's autoescape in HTML
and through `tojson` (which escapes <, >, & and ') inside the script; the chart arrays are
built here from numbers only and checked to be so.

Charts are downsampled per pixel-wide bucket (on SQLite by the statement's own pass over the
period, recorder.queries.periods.period_activity; on PostgreSQL in SQL, periods.buckets): the
lowest and highest value and the value it ended on, so every extreme of the step series
survives and a year of minute polls never loads into memory.

With include_derived the balances `recorder backfill` derived from the income ledger are a
series of their own (dashed, "wallet balance (derived from ledger)"), bucketed the same way and
ending where the asset's first observation takes over: never joined to the observed line.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from decimal import Decimal
from importlib import resources
from pathlib import Path

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from recorder.errors import ConfigError
from recorder.queries import derived as derived_queries
from recorder.queries import periods
from recorder.reports.render import format_decimal, format_time
from recorder.reports.statement import DERIVED_ROLL_FORWARD_NOTE, Statement, build_statement

UTC = timezone.utc
# About the printable width of A4 in CSS pixels (190 mm at 96 dpi is 718 px): one bucket a pixel.
CHART_BUCKETS = 700
# Three plotted slots a bucket: low or high, the other one, the value it ended on.
SLOTS = 3
_NUMBER = re.compile(r"-?\d+(\.\d+)?\Z")


@dataclass(frozen=True)
class Chart:
    """One asset's chart data: slot s is at `start + s * step_seconds`; values are exact decimal text."""

    account: str
    asset: str
    start: float
    step_seconds: float
    slots: list[int]
    balance: list[str | None]
    unrealized_pnl: list[str | None]
    # The derived wallet balance on the same slots; None when no derived span reaches the period.
    derived: list[str | None] | None = None


@dataclass(frozen=True)
class Report:
    """The statement and the chart of every asset in it."""

    statement: Statement
    charts: tuple[Chart, ...]


def build_report(
    session: Session | Connection,
    since: datetime,
    until: datetime,
    accounts: Sequence[str],
    tz: tzinfo = UTC,
    *,
    buckets: int = CHART_BUCKETS,
    generated_at: datetime | None = None,
    include_derived: bool = False,
) -> Report:
    """The statement of [since, until) plus, per account and asset, its downsampled chart series."""
    activities: dict[str, Mapping[str, periods.Activity]] = {}
    statement = build_statement(
        session, since, until, accounts, tz, generated_at=generated_at, activity_sink=activities, chart_buckets=buckets,
        include_derived=include_derived,
    )
    connection = session.connection() if isinstance(session, Session) else session
    charts = []
    if statement.until > statement.since:
        for account in statement.accounts:
            account_id = periods.account_id(connection, account.account)
            activity = activities[account.account]
            # The most active assets first: a long list of idle ones should not push them off the page.
            for asset in sorted(account.assets, key=lambda row: (-row.changes, row.asset)):
                charts.append(_chart(connection, account_id, account.account, asset, statement, buckets,
                                     activity.get(asset.asset, periods.Activity(0))))
    return Report(statement, tuple(charts))


def _chart(
    connection: Connection, account_id: int, label: str, asset, statement: Statement, count: int, rows: periods.Activity
) -> Chart:
    since, until = statement.since, statement.until
    # A derived opening belongs to the derived series, never to the observed line.
    observed_opening = asset.opening.status != "derived"
    openings = {"balance": asset.opening.balance if observed_opening else None,
                "cross_un_pnl": asset.opening.unrealized_pnl}
    by_field = rows.buckets
    if by_field is None:  # not found by the statement's scan (PostgreSQL, or no rows)
        _, by_field = periods.buckets(
            connection, account_id, asset.asset, {"balance": rows.balance_units, "cross_un_pnl": rows.pnl_units},
            since, until, count,
        )
    per_field = {}
    for name, found in by_field.items():
        points: dict[int, Decimal | None] = {0: openings[name]}
        for bucket in found:
            base = bucket.index * SLOTS
            if bucket.low is None:  # only vanished markers in this bucket
                points[base + SLOTS] = None
                continue
            # End on the value the bucket ended on, so the empty buckets after it carry it on.
            first, second = (bucket.low, bucket.high) if bucket.last == bucket.high else (bucket.high, bucket.low)
            points[base + 1] = first
            points[base + 2] = second
            points[base + 3] = bucket.last
        per_field[name] = points
    if asset.derived is not None:
        per_field["derived"] = _derived_points(connection, account_id, asset.derived, since, until, count)
    step = (until - since).total_seconds() / (count * SLOTS)
    slots = set().union(*per_field.values()) | {count * SLOTS}
    # A stepped line is only drawn towards a value: before an asset vanishes, repeat the value it
    # held on the slot just before, or the stretch it was held would not show.
    slots |= {slot - 1 for points in per_field.values() for slot, value in points.items() if value is None and slot > 0}
    slots = sorted(slots)
    columns = {}
    for name, points in per_field.items():
        carried: Decimal | None = None
        values = []
        for slot in slots:
            if slot in points:
                carried = points[slot]
            values.append(None if carried is None else _number_text(carried))
        columns[name] = values
    return Chart(label, asset.asset, since.timestamp(), step, slots, columns["balance"], columns["cross_un_pnl"],
                 columns.get("derived"))


def _derived_points(
    connection: Connection, account_id: int, span: derived_queries.DerivedSpan, since: datetime, until: datetime, count: int
) -> dict[int, Decimal | None]:
    """The derived balance per slot, bucketed like the observed series (low, high, last per bucket).

    It ends (None) after the bucket of the first observation, where the observed line begins: the
    two series share at most that one pixel-wide bucket.
    """
    opening = derived_queries.as_of(connection, account_id, span, since)
    points: dict[int, Decimal | None] = {0: None if opening is None else opening.balance}
    width = (until - since).total_seconds() / count
    end = min(until, span.anchor_observed_at)

    def flush(index: int, low: Decimal, high: Decimal, last: Decimal) -> None:
        first, second = (low, high) if last == high else (high, low)
        base = index * SLOTS
        points[base + 1], points[base + 2], points[base + 3] = first, second, last

    current = None
    for point in derived_queries.points(connection, account_id, span.asset, since, end):
        index = min(count - 1, int((point.at - since).total_seconds() / width))
        if current is not None and current[0] != index:
            flush(*current)
            current = None
        if current is None:
            current = [index, point.balance, point.balance, point.balance]
        else:
            current[1], current[2], current[3] = min(current[1], point.balance), max(current[2], point.balance), point.balance
    if current is not None:
        flush(*current)
    if span.anchor_observed_at < until:
        anchor_bucket = min(count - 1, int((span.anchor_observed_at - since).total_seconds() / width))
        # On the next bucket's first slot: the anchor's bucket keeps its last derived value.
        if anchor_bucket < count - 1:
            points[(anchor_bucket + 1) * SLOTS + 1] = None
    return points


def _number_text(value: Decimal) -> str:
    # Exact decimal text, trailing zeros dropped to keep a year small; the browser parses it
    # for plotting only. Checked, because it is written into the page's script unquoted.
    text = format_decimal(value.normalize()) if value else "0"
    if not _NUMBER.match(text):
        raise ValueError(f"not a plain number: {text!r}")
    return text


def _static(name: str) -> str:
    return (resources.files("recorder.reports") / "static" / name).read_text(encoding="utf-8")


def render_report(report: Report) -> str:
    """The report as one HTML document (a str); no file, no network."""
    from jinja2 import Environment, StrictUndefined

    environment = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    template = environment.from_string(_static("report.html.j2"))
    statement = report.statement
    tz = statement.tz

    def when(value: datetime | None) -> str:
        # Compact, in the report's zone (named in its header): tables must fit an A4 page.
        return "" if value is None else value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")

    def iso(value: datetime) -> str:
        return format_time(value, tz, "seconds")

    def amount(value: Decimal | None) -> str:
        return "" if value is None else format_decimal(value)

    def seconds(value: float) -> str:
        whole = int(round(value))
        days, rest = divmod(whole, 86400)
        hours, rest = divmod(rest, 3600)
        minutes, secs = divmod(rest, 60)
        return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"

    def share(value: float | None) -> str:
        return "" if value is None else f"{value * 100:.2f}%"

    charts = [
        {
            "id": f"chart-{index}",
            "account": chart.account,
            "asset": chart.asset,
            "start": chart.start,
            "step": chart.step_seconds,
            "gaps": [
                [gap.start.timestamp(), gap.end.timestamp()]
                for account in statement.accounts
                if account.account == chart.account
                for gap in account.coverage.gaps
            ],
        }
        for index, chart in enumerate(report.charts)
    ]
    # Arrays of plain numbers (checked in _number_text), written as JSON literals: a year of
    # quoted strings would cost a third more bytes.
    arrays = [
        "[" + ",".join(map(str, chart.slots)) + "],["
        + ",".join(value if value is not None else "null" for value in chart.balance) + "],["
        + ",".join(value if value is not None else "null" for value in chart.unrealized_pnl) + "]"
        + ("" if chart.derived is None else
           ",[" + ",".join(value if value is not None else "null" for value in chart.derived) + "]")
        for chart in report.charts
    ]
    from markupsafe import Markup

    series = Markup("[" + ",".join(f"[{array}]" for array in arrays) + "]")
    return template.render(
        statement=statement,
        charts=charts,
        chart_series=series,
        uplot_js=Markup(_static("uPlot.iife.min.js")),
        uplot_css=Markup(_static("uPlot.min.css")),
        when=when,
        iso=iso,
        amount=amount,
        seconds=seconds,
        share=share,
        derived_roll_forward_note=DERIVED_ROLL_FORWARD_NOTE,
        tz_name=str(tz),
        zone=_zone(tz),
    )


def _zone(tz: tzinfo) -> dict[str, object]:
    """How the page's script shows times: an IANA name, or a fixed offset in seconds."""
    name = getattr(tz, "key", None)
    if name:
        return {"name": name, "offset": 0}
    offset = tz.utcoffset(None)
    return {"name": None, "offset": 0 if offset is None else offset.total_seconds()}


def write_report(report: Report, out: Path, *, force: bool = False) -> int:
    """Write the report to `out` through a temporary file and a rename; the size in bytes.

    An existing `out` is refused unless `force`: a report is evidence, never overwritten by accident.
    """
    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(f"{out} exists: choose another --out or add --force to replace it")
    if out.is_dir():
        raise ConfigError(f"{out} is a directory: --out takes a file name")
    html = render_report(report).encode("utf-8")
    folder = out.parent if str(out.parent) else Path(".")
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(html)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return len(html)
