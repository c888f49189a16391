"""`recorder statement` (run in this process, tests/inprocess.py) agrees with `recorder balances --at` and `recorder gaps`, on both backends."""

from __future__ import annotations

import csv
import io
import json
import subprocess

import pytest

from tests.e2e.test_cli_queries import database  # noqa: F401  (the fixture: SCRIPT for account 'main')
from tests.inprocess import run_recorder

SINCE, UNTIL = "2026-01-01T23:58:30Z", "2026-01-02T00:07:30Z"


def run(url: str, *args: str, account: bool = True) -> subprocess.CompletedProcess:
    extra = ["--account", "main"] if account else []
    return run_recorder(*args, "--database-url", url, *extra, env={"PATH": "/usr/bin:/bin", "RECORDER_INTERVAL": "60"})


def test_statement_json_matches_balances_at_and_gaps(database):  # noqa: F811
    result = run(database, "statement", "--since", SINCE, "--until", UNTIL, "--format", "json")
    assert result.returncode == 0, result.stderr
    (account,) = json.loads(result.stdout)["accounts"]
    opening = {row["asset"]: row for row in json.loads(run(database, "balances", "--at", SINCE, "--format", "json").stdout)}
    closing = {row["asset"]: row for row in json.loads(run(database, "balances", "--at", UNTIL, "--format", "json").stdout)}
    found_gaps = json.loads(run(database, "gaps", "--since", SINCE, "--until", UNTIL, "--format", "json").stdout)
    assets = {row["asset"]: row for row in account["assets"]}
    assert sorted(assets) == ["BTC", "USDT"]
    for name, row in assets.items():
        for side, expected in (("opening", opening[name]), ("closing", closing[name])):
            assert (row[side]["status"], row[side]["balance"], row[side]["observed_at"]) == (
                expected["status"], expected["balance"], expected["observed_at"])
    usdt = assets["USDT"]
    assert (usdt["opening"]["balance"], usdt["closing"]["balance"], usdt["net_change"]) == ("10.00000000", "0.00000001", "-9.99999999")
    assert (usdt["high"], usdt["low"]) == (
        {"balance": "12.50000000", "at": "2026-01-02T00:00:00.000000Z"},
        {"balance": "0.00000001", "at": "2026-01-02T00:05:00.000000Z"},
    )
    assert assets["BTC"]["closing"]["status"] == "vanished" and assets["BTC"]["net_change"] == "0"
    assert [(g["start"], g["end"], g["failures"]) for g in account["coverage"]["gaps"]] == [
        (g["start"], g["end"], g["failures"]) for g in found_gaps]
    # The gap 00:00-00:05 and the silence after the last poll, up to --until.
    assert account["coverage"]["blind_seconds"] == 300.0 + 150.0
    assert [d["day"] for d in usdt["days"]] == ["2026-01-01", "2026-01-02"]
    # No income entry in this database: the whole net change is the residual.
    assert usdt["roll_forward"]["residual"] == usdt["net_change"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_statement_csv_table_and_usage_errors(database):  # noqa: F811
    out = run(database, "statement", "--since", SINCE, "--until", UNTIL, "--format", "csv", "--tz", "Asia/Tokyo").stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    usdt = [row for row in rows if row["asset"] == "USDT"]
    assert [(r["row"], r["start"], r["open"], r["close"], r["change"]) for r in usdt] == [
        ("period", "2026-01-02T08:58:30.000000+09:00", "10.00000000", "0.00000001", "-9.99999999"),
        ("day", "2026-01-02T08:58:30.000000+09:00", "10.00000000", "0.00000001", "-9.99999999"),
    ]
    table = run(database, "statement", "--since", SINCE, "--until", UNTIL, account=False)
    assert table.returncode == 0 and "Account main" in table.stdout and "USDT by day:" in table.stdout
    reversed_range = run(database, "statement", "--since", UNTIL, "--until", SINCE)
    assert reversed_range.returncode == 2 and "--since" in reversed_range.stderr
    unknown = run(database, "statement", "--since", SINCE, "--account", "nope", account=False)
    assert unknown.returncode == 2 and "no account 'nope'" in unknown.stderr


@pytest.mark.parametrize("command", ["statement", "report"])
def test_statement_and_report_import_no_write_side_library(tmp_path, command):
    from tests.e2e.test_read_only import recorded
    from tests.e2e.test_startup import imported_write_side

    url = recorded(f"sqlite:///{tmp_path / 'recorder.db'}")
    extra = ["--out", str(tmp_path / "report.html")] if command == "report" else []
    assert imported_write_side(command, "--since", "2000-01-01", "--database-url", url, *extra) == []
