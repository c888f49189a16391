#!/usr/bin/env python3
"""Make docs/report-demo.png: the HTML report of a short `recorder demo` run, as Chromium shows it.

Records the built-in simulated exchange for --seconds (with the demo's outage half-way, so a
gap is shaded), writes `recorder report` for the whole run, opens it in Debian's headless
Chromium (networking off) and captures the top of the page. Run from a checkout:

    .venv/bin/python scripts/report_screenshot.py            # writes docs/report-demo.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser import Browser, require_chromium  # noqa: E402  (the DevTools-pipe client the tests use)

RECORDER = str(Path(sys.executable).with_name("recorder"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report-demo.png")
    parser.add_argument("--seconds", type=float, default=90.0, help="How long the demo records.")
    parser.add_argument("--height", type=int, default=1500, help="Pixels of the page's top to capture.")
    args = parser.parse_args()
    chromium = require_chromium()
    with tempfile.TemporaryDirectory(prefix="report-screenshot-") as folder:
        url = f"sqlite:///{folder}/demo.db"
        subprocess.run([RECORDER, "demo", "--database-url", url, "--seconds", str(args.seconds), "--interval", "1"],
                       check=True, stdout=subprocess.DEVNULL)
        # Up to just after the last poll: a later end would (rightly) call the closing stale.
        balances = subprocess.run([RECORDER, "balances", "--database-url", url, "--account", "demo", "--format", "json"],
                                  check=True, capture_output=True, text=True).stdout
        last_poll = datetime.fromisoformat(json.loads(balances)[0]["last_poll_at"].replace("Z", "+00:00"))
        until = last_poll + timedelta(milliseconds=500)
        # From a few polls in: the opening is then an observed balance, not "before the first poll".
        history = subprocess.run([RECORDER, "history", "--database-url", url, "--account", "demo", "--format", "json"],
                                 check=True, capture_output=True, text=True).stdout
        first = min(datetime.fromisoformat(row["observed_at"].replace("Z", "+00:00")) for row in json.loads(history))
        started = first + timedelta(seconds=3)
        page_file = Path(folder) / "report.html"
        subprocess.run([RECORDER, "report", "--database-url", url, "--since", started.isoformat(),
                        "--until", until.isoformat(), "--out", str(page_file)], check=True)
        with Browser(chromium) as browser:
            page = browser.open(page_file, width=1100, height=args.height)
            drawn = page.evaluate("document.body.getAttribute('data-charts-drawn')")
            page.drain()
            problems = page.log.console_errors + page.log.exceptions + [r for r in page.log.requests if not r.startswith("file:")]
            if problems or not drawn or drawn == "0":
                print(f"the report did not render cleanly: charts={drawn} problems={problems}", file=sys.stderr)
                return 1
            result = browser.call("Page.captureScreenshot", {
                "format": "png", "clip": {"x": 0, "y": 0, "width": 1100, "height": args.height, "scale": 1},
            }, session=page.session)
    import base64

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(base64.b64decode(result["data"]))
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
