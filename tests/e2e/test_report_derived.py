"""The HTML report with --include-derived, and the charts' y-axis tick labels, in headless Chromium.

The derived wallet balance (recorder backfill) is its own dashed series ending where the first
observation begins, never joined to the observed line; the header names the derived span; the
tables mark derived rows. Uses test_ledger_backfill's `recorded` account, on both backends.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from recorder.reports.html import build_report, render_report, write_report
from tests.browser import Browser, require_chromium
from tests.integration.test_ledger_backfill import recorded, run_backfill  # noqa: F401 (fixture)
from tests.integration.test_statement_derived import period

GENERATED = datetime(2030, 1, 1, tzinfo=timezone.utc)
DERIVED_LABEL = "wallet balance (derived from ledger)"


@pytest.fixture(scope="module")
def chromium() -> str:
    return require_chromium()


def html_of(sessions, since, until, include_derived):
    with sessions() as session:
        return build_report(session, since, until, ["main"], generated_at=GENERATED, include_derived=include_derived)


def test_without_the_option_the_report_has_no_derived_series(recorded, sessions):
    since, until = period(recorded)
    before = render_report(html_of(sessions, since, until, False))
    run_backfill(sessions, recorded["now"])
    report = html_of(sessions, since, until, False)
    assert render_report(report) == before
    assert [chart.derived for chart in report.charts] == [None] and "derived" not in before.split("<main>")[1].split("<script>")[0]


def test_header_and_tables_name_the_derived_data(recorded, sessions):
    run_backfill(sessions, recorded["now"])
    since, until = period(recorded)
    report = html_of(sessions, since, until, True)
    html = render_report(report)
    (span,) = [span for _, span in report.statement.derived_spans]
    assert ("wallet balances derived from the income ledger (recorder backfill), not observed</span>, before each "
            "asset's first observation:\nmain USDT from ") in html
    start = span.start.isoformat(timespec="seconds").replace("+00:00", "Z")
    assert f"main USDT from {start} to " in html
    assert "USDT (derived span)" in html and "residual is 0 by construction" in html
    (usdt,) = report.statement.accounts[0].assets
    assert html.count('<tr class="derived"><td>20') == sum(day.source != "observed" for day in usdt.days) > 1
    assert " (derived)</td>" in html


def test_derived_series_is_drawn_apart_and_tick_labels_never_repeat(recorded, sessions, chromium, tmp_path):
    run_backfill(sessions, recorded["now"])
    since, until = period(recorded)
    report = html_of(sessions, since, until, True)
    out = tmp_path / "report.html"
    write_report(report, out)
    anchor = report.statement.accounts[0].assets[0].derived.anchor_observed_at.timestamp()
    with Browser(chromium) as browser:
        page = browser.open(out)
        drawn = page.evaluate("document.body.getAttribute('data-charts-drawn')")
        chart = page.evaluate(
            "(function (u) { return {labels: u.series.map(function (s) { return s.label || null; }),"
            " dash: u.series[3].dash, xs: u.data[0], observed: u.data[1], derived: u.data[3],"
            " legend: document.querySelector('.u-legend').textContent}; })(window.recorderCharts[0])"
        )
        labels = page.evaluate(
            "({given: recorderTickLabels([0.8420, 0.8421, 0.8422, 0.8423], 0.0001),"
            " noisy: recorderTickLabels([0.84201 - 1e-17, 0.84202, 0.84203 + 1e-16], 0.00001),"
            " coarse: recorderTickLabels([0.8420001, 0.8420002, 0.8420003], 0.001),"
            " zero: recorderTickLabels([-0.0000000001, 0.0001], 0.0001)})"
        )
        # A nearly flat series (BNB's 0.842...), drawn by uPlot with the report's axis formatter
        # and with uPlot's default one, which prints '0.842' on every tick.
        flat = page.evaluate(
            "(function () { const data = [[0, 1, 2, 3], [0.84201, 0.84203, 0.84202, 0.84204]];"
            # uPlot draws in a microtask: each promise settles on the plot's own draw hook.
            " function plot(axis) { return new Promise(function (done) {"
            "  const el = document.createElement('div'); document.body.appendChild(el);"
            "  new uPlot({width: 600, height: 300, scales: {x: {time: false}}, axes: [{}, axis],"
            "   series: [{}, {stroke: 'black'}], hooks: {draw: [function (u) { done(u.axes[1]._values); }]}}, data, el); }); }"
            " return Promise.all([plot({values: recorderTickValues}), plot({})])"
            "  .then(function (v) { return {ours: v[0], theirs: v[1]}; }); })()"
        )
        page.drain()
    assert drawn == "1"
    assert chart["labels"] == ["Time", "wallet balance", "unrealized PnL", DERIVED_LABEL] and chart["dash"] == [6, 4]
    assert DERIVED_LABEL in chart["legend"]
    derived_xs = [x for x, v in zip(chart["xs"], chart["derived"]) if v is not None]
    observed_xs = [x for x, v in zip(chart["xs"], chart["observed"]) if v is not None]
    # The derived series covers the span up to the first observation and stops there; the
    # observed line starts there: they share at most the one pixel-wide bucket of the anchor.
    bucket = (until - since).total_seconds() / 700
    assert derived_xs[0] == since.timestamp() and derived_xs[-1] <= anchor + bucket
    assert observed_xs[0] >= anchor - bucket and observed_xs[0] > derived_xs[0]
    assert chart["derived"][0] == float(report.statement.accounts[0].assets[0].opening.balance)
    assert labels == {"given": ["0.8420", "0.8421", "0.8422", "0.8423"], "noisy": ["0.84201", "0.84202", "0.84203"],
                      "coarse": ["0.8420001", "0.8420002", "0.8420003"], "zero": ["0.0000", "0.0001"]}
    ours, theirs = flat["ours"], flat["theirs"]
    assert len(ours) >= 3 and all(a != b for a, b in zip(ours, ours[1:])), ours
    assert len(set(theirs)) < len(theirs), theirs  # the repetition this formatter exists for
    assert page.log.console_errors == [] and page.log.exceptions == [] and page.log.dialogs == []
    assert page.log.requests == [out.resolve().as_uri()]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_commands_take_include_derived(recorded, sessions, db_url, tmp_path):
    import csv
    import io
    import subprocess

    from tests.e2e.test_cli_queries import RECORDER

    run_backfill(sessions, recorded["now"])
    since, until = period(recorded)
    times = ["--since", since.isoformat(), "--until", until.isoformat(), "--database-url", db_url]
    plain = subprocess.run([RECORDER, "statement", *times, "--format", "csv"], capture_output=True, text=True, timeout=120)
    derived = subprocess.run([RECORDER, "statement", *times, "--format", "csv", "--include-derived"],
                             capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and derived.returncode == 0, plain.stderr + derived.stderr
    assert "source" not in plain.stdout.splitlines()[0] and "derived" not in plain.stdout
    rows = list(csv.DictReader(io.StringIO(derived.stdout)))
    assert rows[0]["opening_status"] == "derived" and rows[1]["row"] == "derived_span"
    out = tmp_path / "derived.html"
    report = subprocess.run([RECORDER, "report", *times, "--include-derived", "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    html = out.read_text(encoding="utf-8")
    assert "(derived span)" in html and "wallet balances derived from the income ledger" in html
