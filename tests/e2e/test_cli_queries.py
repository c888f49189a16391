"""The read commands run as the installed `recorder` console script against real databases."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from recorder.db import make_engine, make_sessions
from recorder.errors import ExchangeUnavailable
from recorder.records import AssetBalance, FetchedBalances
from recorder.schema import upgrade_to_head
from recorder.store import ensure_account, record_failure, record_poll
from tests.inprocess import run_recorder

RECORDER = str(Path(sys.executable).with_name("recorder"))
LOCAL = "http://127.0.0.1:9"
T0 = datetime(2026, 1, 1, 23, 58, tzinfo=timezone.utc)
UPDATE = datetime(2026, 1, 1, 23, 0, 0, 123000, tzinfo=timezone.utc)


def asset(name: str, amount: str) -> AssetBalance:
    value = Decimal(amount)
    return AssetBalance(name, value, value, Decimal("0.00000000"), value, value, True, UPDATE)


def minute(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


# 23:58 USDT 10 / 23:59 unchanged / 00:00 USDT 12.5 + BTC appears / 00:01-00:04 failed /
# 00:05 USDT 0.00000001, BTC gone.
SCRIPT = [
    (0, (asset("USDT", "10.00000000"),)),
    (1, (asset("USDT", "10.00000000"),)),
    (2, (asset("USDT", "12.50000000"), asset("BTC", "0.00100000"))),
    (3, ExchangeUnavailable("HTTP 503", http_status=503)),
    (4, ExchangeUnavailable("HTTP 503", http_status=503)),
    (5, ExchangeUnavailable("timeout")),
    (6, ExchangeUnavailable("HTTP 502", http_status=502)),
    (7, (asset("USDT", "0.00000001"),)),
]


@pytest.fixture
def database(db_url: str) -> str:
    """A database holding SCRIPT for account 'main'."""
    engine = make_engine(db_url)
    upgrade_to_head(engine)
    sessions = make_sessions(engine, write=True)
    for n, outcome in SCRIPT:
        when = minute(n)
        with sessions.begin() as session:
            account = ensure_account(session, "main", LOCAL, when)
            if isinstance(outcome, Exception):
                record_failure(session, account, outcome, endpoint="/fapi/v2/balance", started_at=when, finished_at=when)
            else:
                fetched = FetchedBalances("SgsR", outcome, "/fapi/v2/balance", 5)
                record_poll(session, account, fetched, started_at=when, finished_at=when)
    engine.dispose()
    return db_url


def run(database: str, *args: str, check: bool = True, quiet: bool = True) -> subprocess.CompletedProcess:
    """A read command in this process (tests/inprocess.py); the one-line-error test also starts the installed one."""
    result = run_recorder(*args, "--database-url", database, "--account", "main",
                          env={"PATH": "/usr/bin:/bin", "RECORDER_INTERVAL": "60"})
    if check:
        assert result.returncode == 0, result.stderr
        if quiet:
            assert result.stderr == ""
    return result


def test_history_json_is_exact_and_utc(database):
    documents = json.loads(run(database, "history", "--format", "json").stdout)
    assert [(d["observed_at"], d["asset"], d["present"], d["balance"]) for d in documents] == [
        ("2026-01-01T23:58:00.000000Z", "USDT", True, "10.00000000"),
        ("2026-01-02T00:00:00.000000Z", "BTC", True, "0.00100000"),
        ("2026-01-02T00:00:00.000000Z", "USDT", True, "12.50000000"),
        ("2026-01-02T00:05:00.000000Z", "BTC", False, None),
        ("2026-01-02T00:05:00.000000Z", "USDT", True, "0.00000001"),
    ]
    assert documents[0]["update_time"] == "2026-01-01T23:00:00.123Z"
    assert documents[0]["account"] == "main"
    assert documents[0]["margin_available"] is True


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_history_filters_and_tz_csv(database):
    out = run(database, "history", "--asset", "usdt", "--since", "2026-01-02", "--until", "2026-01-02T00:05:00.000001",
              "--format", "csv", "--tz", "Asia/Tokyo").stdout
    assert out.splitlines()[1:] == [
        "main,USDT,2026-01-02T09:00:00.000000+09:00,true,12.50000000,12.50000000,0.00000000,12.50000000,12.50000000,true,"
        "2026-01-02T08:00:00.123+09:00",
        "main,USDT,2026-01-02T09:05:00.000000+09:00,true,0.00000001,0.00000001,0.00000000,0.00000001,0.00000001,true,"
        "2026-01-02T08:00:00.123+09:00",
    ]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_unknown_asset_account_time_and_database_fail_in_one_line(database, tmp_path):
    asset_error = run(database, "history", "--asset", "DOGE", check=False)
    assert asset_error.returncode == 2
    assert "no asset DOGE in account 'main'; recorded assets: BTC, USDT" in asset_error.stderr
    account_error = subprocess.run([RECORDER, "history", "--database-url", database, "--account", "nope"],
                                   capture_output=True, text=True, timeout=60)
    # ConfigError: exit 1, or 2 where the CLI treats configuration problems as usage errors.
    assert account_error.returncode in (1, 2)
    assert account_error.stderr.strip() == "error: ConfigError: no account 'nope' in the database; recorded accounts: main"
    time_error = run(database, "history", "--since", "last tuesday", check=False)
    assert time_error.returncode == 2
    assert "'last tuesday' is not a time" in time_error.stderr
    missing = subprocess.run([RECORDER, "history", "--database-url", f"sqlite:///{tmp_path / 'none.db'}"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert "no database at" in missing.stderr
    for result in (asset_error, account_error, time_error, missing):
        assert "Traceback" not in result.stderr


def test_diff_gives_exactly_the_served_values_and_changes(database):
    across = json.loads(run(database, "diff", "--from", "2026-01-01T23:59:00Z", "--to", "2026-01-02T01:05:00+01:00",
                            "--format", "json").stdout)
    assert [(d["asset"], d["status"], d["from"]["balance"], d["to"]["balance"]) for d in across] == [
        ("USDT", "changed", "10.00000000", "0.00000001")]
    assert across[0]["change"] == {name: "-9.99999999" if name != "cross_un_pnl" else "0.00000000" for name in
                                   ("balance", "cross_wallet_balance", "cross_un_pnl", "available_balance", "max_withdraw_amount")}
    assert across[0]["to"]["observed_at"] == "2026-01-02T00:05:00.000000Z"
    appeared = json.loads(run(database, "diff", "--from", "2026-01-01 23:59", "--to", "2026-01-02T00:00:00",
                              "--format", "json").stdout)
    btc, usdt = appeared
    assert (btc["asset"], btc["status"], btc["from"], btc["to"]["balance"], btc["change"]) == (
        "BTC", "appeared", None, "0.00100000", None)
    assert (usdt["asset"], usdt["from"]["balance"], usdt["to"]["balance"], usdt["change"]["balance"]) == (
        "USDT", "10.00000000", "12.50000000", "2.50000000")


def test_balances_at_reports_staleness_inside_a_gap(database):
    fresh = json.loads(run(database, "balances", "--at", "2026-01-02T00:00:00", "--format", "json").stdout)
    assert [(d["asset"], d["status"], d["balance"], d["observed_at"], d["stale_seconds"]) for d in fresh] == [
        ("BTC", "ok", "0.00100000", "2026-01-02T00:00:00.000000Z", 0.0),
        ("USDT", "ok", "12.50000000", "2026-01-02T00:00:00.000000Z", 0.0),
    ]
    stale = run(database, "balances", "--at", "2026-01-02T00:03:00Z", "--asset", "USDT", "--format", "json", quiet=False)
    (usdt,) = json.loads(stale.stdout)
    assert (usdt["status"], usdt["balance"], usdt["stale_seconds"], usdt["last_poll_at"]) == (
        "stale", "12.50000000", 180.0, "2026-01-02T00:00:00.000000Z")
    assert stale.stderr.strip() == (
        "note: --at 2026-01-02T00:03:00.000000Z is inside a gap: the last successful poll was "
        "2026-01-02T00:00:00.000000Z, 180 s earlier, so values may be stale"
    )


def test_gaps_show_the_failed_stretch_with_its_failures(database):
    found = json.loads(run(database, "gaps", "--since", "2026-01-01T23:58", "--until", "2026-01-02T00:05:30",
                           "--format", "json").stdout)
    assert found == [{"start": "2026-01-02T00:00:00.000000Z", "end": "2026-01-02T00:05:00.000000Z", "seconds": 300.0,
                      "failures": {"ExchangeUnavailable": 4}, "ongoing": False}]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_changes_csv_and_table_formats(database):
    rows = run(database, "changes", "--since", "2026-01-02", "--asset", "USDT", "--format", "csv", "--tz", "-05:00").stdout.splitlines()
    assert rows[0].startswith("account,asset,observed_at,kind,balance,previous_balance,delta_balance,")
    assert rows[1].startswith("main,USDT,2026-01-01T19:00:00.000000-05:00,changed,12.50000000,10.00000000,2.50000000,")
    assert rows[2].startswith("main,USDT,2026-01-01T19:05:00.000000-05:00,changed,0.00000001,12.50000000,-12.49999999,")
    table = run(database, "changes", "--since", "2026-01-02", "--asset", "USDT").stdout.splitlines()
    assert table[0].split()[:5] == ["observed_at", "asset", "kind", "balance", "delta_balance"]
    assert table[2].split()[:5] == ["2026-01-02T00:00:00.000000Z", "USDT", "changed", "12.50000000", "2.50000000"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_series_json_by_minute(database):
    points = json.loads(run(database, "series", "--asset", "USDT", "--every", "minute", "--since", "2026-01-01T23:59",
                            "--until", "2026-01-02T00:06", "--format", "json").stdout)
    assert [(p["end"][11:16], p["status"], p["value"]) for p in points] == [
        ("00:00", "ok", "10.00000000"),
        ("00:01", "ok", "12.50000000"),
        ("00:02", "gap", None),  # 120 s after the 00:00 poll: past the 90 s tolerance
        ("00:03", "gap", None),
        ("00:04", "gap", None),
        ("00:05", "gap", None),
        ("00:06", "ok", "0.00000001"),
    ]


def test_every_read_command_has_help():
    from click.testing import CliRunner

    from recorder.cli import cli

    for name in ("history", "balances", "diff", "changes", "gaps", "series"):
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0, name
        assert "UTC" in result.output, name


# --- exact arithmetic ------------------------------------------------------------------------

HUGE = "123456789012345678901.12345678"
LATER_UPDATE = UPDATE + timedelta(seconds=7)


def exact_asset(name: str, amount: str, update_time: datetime = UPDATE) -> AssetBalance:
    value = Decimal(amount)
    return AssetBalance(name, value, value, Decimal("-0.00000001"), value, value, True, update_time)


# 00:00 USDT 0.00000001, BTC HUGE / 00:01 USDT HUGE + 0.00000001, BTC HUGE + 0.00000001 /
# 00:02 USDT the same amounts, only Binance's update_time moved.
EXACT_SCRIPT = [
    (0, (exact_asset("USDT", "0.00000001"), exact_asset("BTC", HUGE))),
    (1, (exact_asset("USDT", "123456789012345678901.12345679"), exact_asset("BTC", "123456789012345678901.12345679"))),
    (2, (exact_asset("USDT", "123456789012345678901.12345679", LATER_UPDATE),
         exact_asset("BTC", "123456789012345678901.12345679"))),
]


@pytest.fixture
def exact_database(db_url: str) -> str:
    """A database holding EXACT_SCRIPT for account 'main', from 2026-01-02T00:00Z."""
    engine = make_engine(db_url)
    upgrade_to_head(engine)
    sessions = make_sessions(engine, write=True)
    for n, outcome in EXACT_SCRIPT:
        when = datetime(2026, 1, 2, tzinfo=timezone.utc) + timedelta(minutes=n)
        with sessions.begin() as session:
            account = ensure_account(session, "main", LOCAL, when)
            record_poll(session, account, FetchedBalances("SgsR", outcome, "/fapi/v2/balance", 5),
                        started_at=when, finished_at=when)
    engine.dispose()
    return db_url


def test_diff_is_exact_for_huge_and_tiny_changes_in_every_format(exact_database):
    """The default decimal context (28 digits) would print 123456789012345678901.1234568."""
    window = ("diff", "--from", "2026-01-02T00:00", "--to", "2026-01-02T00:01")
    documents = json.loads(run(exact_database, *window, "--format", "json").stdout)
    assert {d["asset"]: d["change"]["balance"] for d in documents} == {"BTC": "0.00000001", "USDT": HUGE}
    assert {d["asset"]: d["change"]["cross_un_pnl"] for d in documents} == {"BTC": "0.00000000", "USDT": "0.00000000"}
    rows = run(exact_database, *window, "--format", "csv").stdout.splitlines()
    header = rows[0].split(",")
    csv_changes = {row.split(",")[1]: row.split(",")[header.index("change_balance")] for row in rows[1:]}
    assert csv_changes == {"BTC": "0.00000001", "USDT": HUGE}
    table = run(exact_database, *window).stdout.splitlines()
    usdt = next(line.split() for line in table if line.startswith("USDT"))
    assert usdt[2:5] == ["0.00000001", "123456789012345678901.12345679", HUGE]


def test_changes_are_exact_and_name_the_fields_that_moved_in_every_format(exact_database):
    """A row where only update_time moved says so, instead of looking like an all-zero change."""
    since = ("changes", "--since", "2026-01-02T00:01")
    documents = json.loads(run(exact_database, *since, "--format", "json").stdout)
    assert [(d["asset"], d["observed_at"][11:16], d["delta"]["balance"], d["changed"]) for d in documents] == [
        ("BTC", "00:01", "0.00000001", ["balance", "cross_wallet_balance", "available_balance", "max_withdraw_amount"]),
        ("USDT", "00:01", HUGE, ["balance", "cross_wallet_balance", "available_balance", "max_withdraw_amount"]),
        ("USDT", "00:02", "0.00000000", ["update_time"]),
    ]
    assert documents[2]["previous"]["update_time"] == "2026-01-01T23:00:00.123Z"
    assert documents[2]["current"]["update_time"] == "2026-01-01T23:00:07.123Z"
    rows = list(csv.DictReader(io.StringIO(run(exact_database, *since, "--format", "csv").stdout)))
    assert [(r["asset"], r["delta_balance"], r["changed"]) for r in rows] == [
        ("BTC", "0.00000001", "balance,cross_wallet_balance,available_balance,max_withdraw_amount"),
        ("USDT", HUGE, "balance,cross_wallet_balance,available_balance,max_withdraw_amount"),
        ("USDT", "0.00000000", "update_time"),
    ]
    table = run(exact_database, *since).stdout.splitlines()
    assert table[0].split()[-1] == "changed"
    assert [line.split()[-1] for line in table[2:]] == [
        "balance,cross_wallet_balance,available_balance,max_withdraw_amount",
        "balance,cross_wallet_balance,available_balance,max_withdraw_amount",
        "update_time",
    ]
    assert table[3].split()[4] == HUGE


def test_changes_mark_appearing_and_vanishing_assets_with_present(database):
    documents = json.loads(run(database, "changes", "--asset", "BTC", "--format", "json").stdout)
    assert [(d["kind"], d["changed"][0]) for d in documents] == [("appeared", "present"), ("vanished", "present")]
    assert "balance" in documents[0]["changed"] and "update_time" in documents[1]["changed"]


def test_balances_before_the_first_poll_name_every_asset_in_every_format(database):
    before = ("balances", "--at", "2020-01-01")
    documents = json.loads(run(database, *before, "--format", "json", quiet=False).stdout)
    assert [(d["asset"], d["status"], d["balance"], d["observed_at"]) for d in documents] == [
        ("BTC", "before_first_poll", None, None),
        ("USDT", "before_first_poll", None, None),
    ]
    rows = list(csv.DictReader(io.StringIO(run(database, *before, "--format", "csv", quiet=False).stdout)))
    assert [(r["asset"], r["status"], r["balance"]) for r in rows] == [
        ("BTC", "before_first_poll", ""), ("USDT", "before_first_poll", "")]
    result = run(database, *before, quiet=False)
    assert [line.split()[:3] for line in result.stdout.splitlines()[2:]] == [
        ["BTC", "before_first_poll", "-"], ["USDT", "before_first_poll", "-"]]
    assert result.stderr.strip().endswith("is before the first successful poll: nothing was recorded yet")
