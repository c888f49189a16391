"""`recorder reconcile` and `recorder diff --explain` as subprocesses on the scenario of tests/reconcile_scenario.py."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_cli_queries import RECORDER
from tests.reconcile_scenario import build


@pytest.fixture
def database(sessions, db_url):
    build(sessions)
    return db_url


def run(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RECORDER, *args, "--database-url", url],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )


USDT_TEXT = ("USDT 36.2 = TRANSFER 50 + REALIZED_PNL -10 + FUNDING_FEE -3.1 + COMMISSION -0.7 + NEW_TYPE_X 0.5; "
             "unexplained -0.5 (unknown type: NEW_TYPE_X)")
DIFF = ("diff", "--account", "main", "--from", "2026-01-01T00:00:30Z", "--to", "2026-01-01T00:06:30Z", "--explain")


def test_reconcile_json_lists_every_interval(database):
    result = run(database, "reconcile", "--account", "main", "--asset", "usdt", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["kind"], r["change"], r["residual"], r["flags"]) for r in rows] == [
        ("interval", "-12.3", "0.0", []),
        ("interval", "50.0", "0.0", []),
        ("interval", "-0.5", "0.0", []),
        ("interval", "-1.5", "-0.5", ["residual"]),
        ("interval", "0.5", "0.0", ["unknown-type"]),
        ("interval", "4.0", "0.0", []),
        ("pending", None, None, []),
    ]
    assert rows[0]["explained"] == {"COMMISSION": "-0.2", "FUNDING_FEE": "-2.1", "REALIZED_PNL": "-10"}
    assert (rows[0]["from"], rows[0]["to"]) == ("2025-12-31T23:59:30.000000Z", "2026-01-01T00:00:30.000000Z")
    assert rows[4]["unknown_types"] == ["NEW_TYPE_X"] and rows[6]["explained"] == {"FUNDING_FEE": "-0.3"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_reconcile_csv_table_and_filters(database):
    csv_out = run(database, "reconcile", "--flagged-only", "--format", "csv")
    assert csv_out.returncode == 0, csv_out.stderr
    rows = list(csv.DictReader(io.StringIO(csv_out.stdout)))
    assert [(r["account"], r["asset"], r["residual"], r["flags"]) for r in rows] == [
        ("main", "USDT", "-0.5", "residual"), ("main", "USDT", "0.0", "unknown-type"),
        ("multi", "USDT", "1", "residual"), ("multi", "USDT", "-1", "residual"),
    ]
    assert rows[0]["explained"] == "FUNDING_FEE=-1"
    tolerant = run(database, "reconcile", "--account", "multi", "--tolerance", "1", "--flagged-only", "--format", "csv")
    assert tolerant.stdout.splitlines()[1:] == []
    table = run(database, "reconcile", "--account", "main", "--since", "2026-01-01T00:08:00Z").stdout.splitlines()
    assert table[0].split() == ["account", "asset", "kind", "from", "to", "change", "explained", "residual", "flagged", "flags"]
    assert [line.split()[2] for line in table[2:]] == ["interval", "pending"]
    assert "FUNDING_FEE=-0.3" in table[-1]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_reconcile_usage_errors_and_read_only(database):
    path = Path(database.removeprefix("sqlite:///"))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    for args, message in (
        (("--tolerance", "-1"), "not a finite amount >= 0"),
        (("--tolerance", "nan"), "not a finite amount >= 0"),
        (("--tolerance", "abc"), "not a decimal amount"),
        (("--asset", "DOGE"), "no asset DOGE"),
        (("--account", "nope"), "no account 'nope'"),
    ):
        result = run(database, "reconcile", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert run(database, "reconcile").returncode == 0
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_diff_explain_in_every_format(database):
    table = run(database, *DIFF)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[-2:] == ["BNB -0.001 = COMMISSION -0.001; unexplained 0.000", USDT_TEXT]
    document = {row["asset"]: row for row in json.loads(run(database, *DIFF, "--format", "json").stdout)}
    assert document["USDT"]["explanation"] == {
        "explained": {"TRANSFER": "50", "REALIZED_PNL": "-10", "FUNDING_FEE": "-3.1", "COMMISSION": "-0.7", "NEW_TYPE_X": "0.5"},
        "unexplained": "-0.5", "unknown_types": ["NEW_TYPE_X"], "text": USDT_TEXT,
    }
    rows = {row["asset"]: row for row in csv.DictReader(io.StringIO(run(database, *DIFF, "--format", "csv").stdout))}
    assert (rows["BNB"]["explained"], rows["BNB"]["unexplained"], rows["BNB"]["unknown_types"]) == ("COMMISSION=-0.001", "0.000", "")
    assert rows["USDT"]["change_balance"] == "36.2" and rows["USDT"]["unexplained"] == "-0.5"
    plain = run(database, *DIFF[:-1], "--format", "csv").stdout
    assert "explained" not in plain.splitlines()[0]
