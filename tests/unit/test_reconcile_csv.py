"""The reconcile CSV writer's fast paths give the bytes of the plain csv module, whatever the text.

The writer reuses the previous row's texts, formats UTC times without a zone conversion and
joins rows by hand when nothing needs quoting; the reference here is the straightforward
rendering (csv.writer over format_time and format(.., 'f')), on intervals chained the way
reconcile() chains them and on text that must be quoted.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from recorder.ledger.reconcile import COLUMNS, INTERVAL, PENDING, Interval, explained_text, write_intervals
from recorder.reports.render import format_time

UTC = timezone.utc


def chained(account: str, asset: str, explained_types: list[dict], flags: list[tuple]) -> list[Interval]:
    """Intervals whose opening is the previous closing (the same objects), then a pending one."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    observed = start + timedelta(seconds=30)
    balance = Decimal("100.00000000")
    intervals = []
    for n, (explained, flag) in enumerate(zip(explained_types, flags)):
        # Microseconds 0 on some times: isoformat() would drop them, the CSV must not.
        end = start + timedelta(minutes=1, microseconds=0 if n % 2 else 1000)
        seen = observed + timedelta(minutes=1, microseconds=0 if n % 3 else 5)
        closing = balance + sum(explained.values(), Decimal(0)) + (Decimal("0.1") if flag else 0)
        intervals.append(Interval(account, asset, INTERVAL, start, end, observed, seen, balance, closing, explained,
                                  (), flag))
        start, observed, balance = end, seen, closing
    intervals.append(Interval(account, asset, PENDING, start, None, observed, None, balance, None,
                              {"FUNDING_FEE": Decimal("-0.5")}))
    return intervals


def reference(intervals: list[Interval], tz) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    amount = lambda v: "" if v is None else format(v, "f")  # noqa: E731
    when = lambda v: "" if v is None else format_time(v, tz)  # noqa: E731
    for i in intervals:
        writer.writerow([i.account, i.asset, i.kind, when(i.start), when(i.end), when(i.opened_at), when(i.observed_at),
                         amount(i.opening), amount(i.closing), amount(i.change), explained_text(i.explained),
                         amount(i.residual), "true" if i.flags else "false", ",".join(i.flags)])
    return out.getvalue()


@pytest.mark.parametrize("account, asset", [("main", "USDT"), ('a,"b"', "US\nDT"), ("x\ry", "BNB")])
@pytest.mark.parametrize("tz", [UTC, ZoneInfo("Europe/Berlin"), timezone(timedelta(hours=-3))])
def test_fast_csv_is_byte_identical_to_the_csv_module(account, asset, tz):
    explained = [{"REALIZED_PNL": Decimal("1.5")}, {"COMMISSION": Decimal("-0.01"), "FUNDING_FEE": Decimal("0.2")},
                 {}, {'ODD,"TYPE"': Decimal("3")}, {"TRANSFER": Decimal("1E-8")}]
    flags = [(), ("residual",), (), ("residual", "unknown-type"), ("ledger-gap",)]
    intervals = chained(account, asset, explained, flags)
    out = io.StringIO()
    assert write_intervals(intervals, "csv", out, tz) == len(intervals)
    assert out.getvalue() == reference(intervals, tz)
    assert '"' in out.getvalue() or account == "main"
