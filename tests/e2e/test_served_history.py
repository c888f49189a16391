"""Polls of known balances through the real client, then diff and balances --at give exactly what was served."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

from tests.conftest import SIM_KEY
from tests.e2e.test_cli_recording import recorder, stored


def wire(asset: str, balance: str, pnl: str = "0.00000000", update_time: int = 1764000000000) -> dict:
    return {
        "asset": asset,
        "balance": balance,
        "crossWalletBalance": balance,
        "crossUnPnl": pnl,
        "availableBalance": balance,
        "maxWithdrawAmount": balance,
        "marginAvailable": True,
        "updateTime": update_time,
    }


STEPS = [
    [wire("USDT", "1000.00000000"), wire("BNB", "0.50000000")],
    [wire("USDT", "998.12345678", "-1.50000000", 1764000060000), wire("BNB", "0.50000000")],
    [wire("USDT", "998.12345678", "-1.50000000", 1764000060000), wire("BNB", "0.49990000", update_time=1764000120000),
     wire("BTC", "0.00000001", update_time=1764000120000)],
    [wire("USDT", "1500.00000001", "12.25000000", 1764000180000), wire("BTC", "0.00000001", update_time=1764000120000)],
]


def iso(moment) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_diff_and_balances_at_give_exactly_what_was_served(simulator, cli_env, db_url):
    for rows in STEPS:
        simulator.set_balances(SIM_KEY, rows)
        result = recorder("poll", env=cli_env)
        assert result.returncode == 0, result.stderr
    _, polls = stored(db_url)
    times = [poll.finished_at for poll in polls]

    at_second = recorder("balances", "--at", iso(times[1]), "--format", "json", env=cli_env)
    assert at_second.returncode == 0, at_second.stderr
    balances = {row["asset"]: row for row in json.loads(at_second.stdout)}
    assert balances["USDT"]["balance"] == "998.12345678"
    assert balances["USDT"]["cross_un_pnl"] == "-1.50000000"
    assert balances["USDT"]["observed_at"] == iso(times[1])
    assert balances["BNB"]["balance"] == "0.50000000"
    assert balances["BNB"]["observed_at"] == iso(times[0])  # unchanged since the first poll
    assert float(balances["USDT"]["stale_seconds"]) == 0

    diff = recorder("diff", "--from", iso(times[0]), "--to", iso(times[3] + timedelta(milliseconds=1)),
                    "--format", "json", env=cli_env)
    assert diff.returncode == 0, diff.stderr
    by_asset = {row["asset"]: row for row in json.loads(diff.stdout)}
    usdt = by_asset["USDT"]
    assert usdt["from"]["balance"] == "1000.00000000" and usdt["to"]["balance"] == "1500.00000001"
    assert usdt["change"]["balance"] == "500.00000001"
    assert usdt["change"]["cross_un_pnl"] == "12.25000000"
    assert Decimal(usdt["to"]["balance"]) - Decimal(usdt["from"]["balance"]) == Decimal(usdt["change"]["balance"])
    assert by_asset["BTC"]["from"] is None and by_asset["BTC"]["to"]["balance"] == "0.00000001"
    assert by_asset["BNB"]["to"] is None or by_asset["BNB"]["to"]["present"] is False
    assert by_asset["BNB"]["from"]["balance"] == "0.50000000"


def test_failed_stretch_is_a_gap_and_balances_inside_it_are_stale(simulator, cli_env, db_url):
    import time

    simulator.set_balances(SIM_KEY, STEPS[0])
    assert recorder("poll", env=cli_env).returncode == 0
    # Enough faults for any number of in-poll retries, cleared before the healthy poll: on a
    # loaded machine the retry budget can end a failing poll after fewer attempts, and a
    # fixed count would then leak a fault into the next poll.
    simulator.inject("http-503", times=100)
    for _ in range(2):
        time.sleep(0.6)
        assert recorder("poll", env=cli_env).returncode == 1
    simulator.clear_faults()
    time.sleep(0.6)
    assert recorder("poll", env=cli_env).returncode == 0
    _, polls = stored(db_url)
    assert [poll.outcome for poll in polls] == ["ok", "failed", "failed", "ok"]

    # Up to the last poll, not "now": the gaps command itself may start more than the 1 s
    # tolerance after that poll on a loaded machine, which is an ongoing gap of its own.
    until = iso(polls[3].finished_at + timedelta(milliseconds=1))
    gaps = recorder("gaps", "--tolerance", "1", "--until", until, "--format", "json", env=cli_env)
    assert gaps.returncode == 0, gaps.stderr
    (gap,) = json.loads(gaps.stdout)
    assert gap["start"] == iso(polls[0].finished_at) and gap["end"] == iso(polls[3].finished_at)
    assert gap["failures"] == {"ExchangeUnavailable": 2}

    inside = polls[2].finished_at
    balances = recorder("balances", "--at", iso(inside), "--tolerance", "1", "--format", "json", env=cli_env)
    assert balances.returncode == 0, balances.stderr
    usdt = next(row for row in json.loads(balances.stdout) if row["asset"] == "USDT")
    assert usdt["status"] == "stale"
    assert float(usdt["stale_seconds"]) == (inside - polls[0].finished_at).total_seconds()
    assert usdt["balance"] == "1000.00000000"
    assert "inside a gap" in balances.stderr
