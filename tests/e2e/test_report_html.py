"""`recorder report`: the HTML file opened in headless Chromium with networking off, on both backends.

Checks what a reader sees: no console error, no request but the file itself, one uPlot
chart per asset drawn with non-blank pixels, the gap shaded, hostile text from the database
shown as text and never run, and the overwrite rules.
"""

from __future__ import annotations

import subprocess
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from recorder.db import make_engine, make_sessions
from recorder.errors import ExchangeUnavailable
from recorder.queries import periods
from recorder.schema import upgrade_to_head
from tests.browser import Browser, require_chromium
from tests.e2e.test_cli_queries import RECORDER
from tests.integration.test_queries import SCRIPT, asset, at, record

HOSTILE_LABEL = '<img src=x onerror=alert(1)>"</script>'
HOSTILE_MESSAGE = "</script><script>window.__pwned=1</script><b onmouseover=alert(2)>x</b>&amp;"
SINCE, UNTIL = at(0, 30), at(9, 30)


@pytest.fixture(scope="module")
def chromium() -> str:
    return require_chromium()


@pytest.fixture
def database(db_url: str) -> str:
    """The scripted account 'default' (a gap 00:02-00:07) and a hostile one with a hostile failure."""
    engine = make_engine(db_url)
    upgrade_to_head(engine)
    sessions = make_sessions(engine, write=True)
    for minute, outcome in SCRIPT:
        record(sessions, at(minute), outcome)
    record(sessions, at(0), (asset("USDT", "5.00000000"),), label=HOSTILE_LABEL)
    record(sessions, at(1), ExchangeUnavailable(HOSTILE_MESSAGE), label=HOSTILE_LABEL)
    record(sessions, at(5), (asset("USDT", "7.00000000"),), label=HOSTILE_LABEL)
    engine.dispose()
    return db_url


def report(url: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RECORDER, "report", "--database-url", url, "--since", SINCE.isoformat(), "--until", UNTIL.isoformat(),
         "--out", str(out), *extra],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"},
    )


# The share of a canvas's pixels that are drawn, and the share of one pixel column at a time
# inside the first gap that carries the gap's red shading (on the device-pixel canvas).
INSPECT = """
window.recorderCharts.map(function (u) {
  const canvas = u.ctx.canvas, ctx = u.ctx;
  const all = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let drawn = 0;
  for (let i = 3; i < all.length; i += 4) if (all[i] > 0) drawn++;
  const gap = u.series.length && CHART_GAPS[u.root.parentNode.id];
  let shaded = null;
  if (gap) {
    const x = Math.round(u.valToPos((gap[0] + gap[1]) / 2, "x", true));
    const column = ctx.getImageData(x, u.bbox.top, 1, u.bbox.height).data;
    let red = 0;
    for (let i = 0; i < column.length; i += 4) if (column[i] > column[i + 2] + 20 && column[i + 3] > 0) red++;
    shaded = red / (column.length / 4);
  }
  return {id: u.root.parentNode.id, title: u.root.querySelector(".u-title").textContent,
          drawn: drawn / (all.length / 4), shaded: shaded, points: u.data[0].length};
})
"""


def test_report_opens_offline_with_charts_and_shaded_gap(database, chromium, tmp_path):
    out = tmp_path / "report.html"
    result = report(database, out, "--account", "default")
    assert result.returncode == 0, result.stderr
    html = out.read_text(encoding="utf-8")
    assert "Content-Security-Policy" in html and "uPlot" in html
    with Browser(chromium) as browser:
        page = browser.open(out)
        assert page.evaluate("document.body.getAttribute('data-charts-drawn')") == "3"
        # The gap 00:02-00:07 of account 'default', shaded on every chart of that account.
        page.evaluate(f"window.CHART_GAPS = {{}}; document.querySelectorAll('.chart').forEach(function (el) {{ "
                      f"CHART_GAPS[el.id] = [{at(2).timestamp()}, {at(7).timestamp()}]; }}); true")
        charts = page.evaluate(INSPECT)
        page.drain()
    assert [chart["title"] for chart in charts] == ["BNB", "BTC", "USDT"]
    for chart in charts:
        assert chart["drawn"] > 0.05, chart  # axes, lines and the shading: far from blank
        assert chart["shaded"] > 0.5, chart  # most of the column inside the gap is shaded
    assert page.log.requests == [out.resolve().as_uri()]
    assert page.log.console_errors == [] and page.log.exceptions == [] and page.log.dialogs == []


def test_report_shows_hostile_text_as_text(database, chromium, tmp_path):
    out = tmp_path / "hostile.html"
    result = report(database, out, "--account", HOSTILE_LABEL)
    assert result.returncode == 0, result.stderr
    with Browser(chromium) as browser:
        page = browser.open(out)
        seen = page.evaluate(
            "({pwned: window.__pwned === undefined ? null : window.__pwned,"
            " images: document.querySelectorAll('img').length,"
            " scripts: document.querySelectorAll('script').length,"
            " bold: document.querySelectorAll('b').length,"
            " heading: document.querySelector('h2').textContent,"
            " message: document.querySelector('table.failures td:nth-child(3)').textContent,"
            " charts: window.recorderCharts.length})"
        )
        page.drain()
    assert seen == {"pwned": None, "images": 0, "scripts": 2, "bold": 0, "heading": f"Account {HOSTILE_LABEL}",
                    "message": HOSTILE_MESSAGE, "charts": 1}
    assert page.log.dialogs == [] and page.log.exceptions == [] and page.log.console_errors == []
    assert page.log.requests == [out.resolve().as_uri()]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_report_refuses_an_existing_file_without_force(database, tmp_path):
    out = tmp_path / "report.html"
    out.write_text("keep me", encoding="utf-8")
    refused = report(database, out)
    assert refused.returncode == 2 and "exists" in refused.stderr and "--force" in refused.stderr
    assert out.read_text(encoding="utf-8") == "keep me"
    replaced = report(database, out, "--force")
    assert replaced.returncode == 0, replaced.stderr
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["recorder.db", "report.html"]


def test_chart_buckets_keep_every_extreme_and_the_last_value(sessions):
    """Many changes inside one bucket: its low, high and last value all survive the downsampling."""
    for second, amount in enumerate(["5", "1", "9", "3"]):
        record(sessions, at(0, second * 10), (asset("USDT", amount),))
    record(sessions, at(59), (asset("USDT", "4"),))
    with sessions() as session:
        width, found = periods.buckets(session.connection(), 1, "USDT", "balance", at(0), at(60), 2)
    assert width == timedelta(minutes=30)
    assert [(b.index, b.low, b.high, b.last, b.last_at) for b in found] == [
        (0, Decimal("1"), Decimal("9"), Decimal("3"), at(0, 30)),
        (1, Decimal("4"), Decimal("4"), Decimal("4"), at(59)),
    ]
