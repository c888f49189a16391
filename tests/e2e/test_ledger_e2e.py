"""Issue #10's "done when", end to end: `recorder run`, `reconcile`, `diff --explain` and `backfill` as
subprocesses against the demanding simulator (recorder/simulator/strict.py), on SQLite and PostgreSQL.

Every expectation comes from the exchange's side: the ledger it booked (`income_entries`), what it
withheld (`withheld_income`) and its true wallet history (`wallet_history`), never from what recorder
stored. Waits are on conditions (a poll row, a sync row), never on durations.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from recorder.db import make_engine, make_sessions
from recorder.ledger.sync import to_ms
from recorder.models import Balance, DerivedBalance, IncomeEntry, LedgerSync, Poll
from recorder.simulator import ExchangeSimulator
from recorder.simulator.strict import UNKNOWN_INCOME_TYPE
from tests.conftest import SIM_KEY, SIM_SECRET, recorder_env
from tests.e2e.test_cli_recording import RECORDER, stop
from tests.inprocess import READ_COMMANDS, command_of, run_recorder

BIG = 2**53
BURST = 1_200  # more entries in one millisecond than a page (1000) holds


@pytest.fixture
def exchange() -> Iterator[ExchangeSimulator]:
    with ExchangeSimulator(demanding=True, seed=1010) as simulator:
        simulator.add_account(api_key=SIM_KEY, api_secret=SIM_SECRET, account_alias="SgsR")
        yield simulator


@pytest.fixture
def env(exchange, db_url, tmp_path) -> dict[str, str]:
    return recorder_env(exchange, db_url, tmp_path / "spool")


def ms(moment: datetime | str) -> int:
    """Epoch ms of a time from the CLI's JSON (ISO text) or the database (naive UTC on SQLite)."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    return to_ms(moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc))


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # noqa: BLE001 - the schema may not exist yet, or SQLite is busy for a moment
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def query(db_url: str, statement) -> list:
    engine = make_engine(db_url)
    try:
        with make_sessions(engine)() as session:
            return list(session.execute(statement).all())
    finally:
        engine.dispose()


def ok_polls(db_url: str) -> list:
    return query(db_url, select(Poll.finished_at).where(Poll.outcome == "ok").order_by(Poll.finished_at))


def synced_after(db_url: str, moment_ms: int) -> bool:
    rows = query(db_url, select(LedgerSync.window_end).where(LedgerSync.outcome == "ok"))
    return any(ms(end) >= moment_ms for (end,) in rows)


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`recorder ARGS`: a subprocess, or in this process for a read command (tests/inprocess.py)."""
    if command_of(args) in READ_COMMANDS:
        return run_recorder(*args, env=env)
    return subprocess.run([*RECORDER, *args], env=env, capture_output=True, text=True, timeout=timeout)


def start_run(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    # The first sync starts a little before the month of trading_in_the_past: five 7-day windows, not 13.
    # 0.4 s polls of /fapi/v2/balance (weight 10) and a sync every 10 s fit the IP budget unstretched.
    return subprocess.Popen([*RECORDER, "run", "--interval", "0.4", "--ledger-interval", "10",
                             "--ledger-since", "31d", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def booked(exchange: ExchangeSimulator) -> list[dict[str, Any]]:
    return exchange.income_entries(SIM_KEY)


def total(entries: list[dict[str, Any]], asset: str, start_ms: int, end_ms: int) -> Decimal:
    return sum((Decimal(e["income"]) for e in entries if e["asset"] == asset and start_ms < e["time"] <= end_ms),
               Decimal(0))


def by_type(entries: list[dict[str, Any]], asset: str, start_ms: int, end_ms: int) -> dict[str, Decimal]:
    sums: dict[str, Decimal] = {}
    for e in entries:
        if e["asset"] == asset and start_ms < e["time"] <= end_ms:
            sums[e["incomeType"]] = sums.get(e["incomeType"], Decimal(0)) + Decimal(e["income"])
    return sums


class Trader:
    """Steps the exchange every few milliseconds beside the recorder's polls, until stopped."""

    def __init__(self, exchange: ExchangeSimulator) -> None:
        self.exchange, self.stopped = exchange, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopped.wait(0.015):
            self.exchange.step(SIM_KEY)

    def __enter__(self) -> Trader:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()


def record_a_demanding_market(exchange: ExchangeSimulator, env: dict[str, str], db_url: str) -> None:
    """`recorder run` over a market with every quirk, one entry withheld, until the ledger covers it all."""
    exchange.auto_move = True
    service = start_run(env)
    try:
        with Trader(exchange):
            wait_for(lambda: len(ok_polls(db_url)) >= 5, "five polls")
            exchange.book_burst(SIM_KEY, BURST)
            exchange.withhold_next_income(SIM_KEY)
            polled = len(ok_polls(db_url))
            wait_for(lambda: len(ok_polls(db_url)) >= polled + 12, "twelve more polls")
        # The market stops; one more poll observes its last state, one more sync reads its last entries.
        exchange.auto_move = False
        frozen_ms = exchange.server_time_ms()
        polled = len(ok_polls(db_url))
        wait_for(lambda: len(ok_polls(db_url)) >= polled + 2, "a poll of the final state")
        wait_for(lambda: synced_after(db_url, frozen_ms), "a ledger sync past the last move")
    finally:
        stderr = stop(service)
    assert service.returncode == 0, stderr


def test_every_observed_change_is_explained_and_a_withheld_entry_is_its_exact_residual(exchange, env, db_url):
    record_a_demanding_market(exchange, env, db_url)
    entries, (withheld,) = booked(exchange), exchange.withheld_income(SIM_KEY)
    # The market really was demanding: every quirk is in what the exchange booked.
    types = {(e["incomeType"], e["asset"]) for e in entries}
    assert {("REALIZED_PNL", "USDT"), ("COMMISSION", "USDT"), ("COMMISSION", "BNB"), ("FUNDING_FEE", "USDT"),
            ("TRANSFER", "USDT"), ("AUTO_EXCHANGE", "USDT"), ("AUTO_EXCHANGE", "BNB"), ("INSURANCE_CLEAR", "USDT"),
            (UNKNOWN_INCOME_TYPE, "USDT")} <= types
    assert any(e["incomeType"] == "FUNDING_FEE" and e["tranId"] > BIG for e in entries)
    assert {Decimal(e["income"]) > 0 for e in entries if e["incomeType"] == "TRANSFER"} == {True, False}
    per_ms: dict[int, int] = {}
    for e in entries:
        per_ms[e["time"]] = per_ms.get(e["time"], 0) + 1
    assert max(per_ms.values()) >= BURST

    result = cli(env, "reconcile", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    intervals = [row for row in rows if row["kind"] == "interval"]
    assert {row["asset"] for row in intervals} >= {"USDT", "BNB"} and len(intervals) > 20
    residuals = []
    history = exchange.wallet_history(SIM_KEY)
    for row in intervals:
        asset, start, end = row["asset"], ms(row["from"]), ms(row["to"])
        served, missing = total(entries, asset, start, end), total([withheld], asset, start, end)
        where = f"{asset} ({row['from']}, {row['to']}]"
        # The change observed is the exchange's own: its true wallet at either bound.
        true_change = Decimal(balance_at(history, asset, end)) - Decimal(balance_at(history, asset, start))
        assert Decimal(row["change"]) == true_change == served + missing, where
        assert {t: Decimal(v) for t, v in row["explained"].items()} == by_type(entries, asset, start, end), where
        assert Decimal(row["residual"]) == missing, where
        unknown = any(e["incomeType"] == UNKNOWN_INCOME_TYPE and e["asset"] == asset and start < e["time"] <= end
                      for e in entries)
        assert set(row["flags"]) == ({"residual"} if missing else set()) | ({"unknown-type"} if unknown else set()), where
        assert row["flagged"] == bool(row["flags"])
        if missing:
            residuals.append(row)
    # Exactly one interval holds the withheld entry; its residual is that entry's amount, flagged.
    (caught,) = residuals
    assert Decimal(caught["residual"]) == Decimal(withheld["income"]) and caught["asset"] == withheld["asset"]
    assert ms(caught["from"]) < withheld["time"] <= ms(caught["to"])

    # The quirks a poll-time match would have turned into false residuals did happen, and were placed right.
    states = query(db_url, select(Balance.asset, Balance.update_time, Balance.observed_at)
                   .where(Balance.present.is_(True), Balance.asset.in_(("USDT", "BNB"))))
    assert any(ms(u) < e["time"] <= ms(seen) for asset, u, seen in states for e in entries if e["asset"] == asset)
    bounds = {(row["asset"], ms(row["to"])) for row in intervals}
    assert any((e["asset"], e["time"]) in bounds for e in entries if e["incomeType"] == "FUNDING_FEE")
    assert any(e["time"] < end and (e["asset"], end) in bounds and e["incomeType"] == "REALIZED_PNL"
               for e in entries for end in {b for _, b in bounds if 0 < b - e["time"] <= 40})
    # Every income request was one Binance accepts.
    assert {r.status for r in exchange.requests_log if r.path == "/fapi/v1/income"} == {200}

    # diff --explain over the whole run agrees with the exchange's ledger.
    (first,), *_, (last,) = ok_polls(db_url)
    diff = cli(env, "diff", "--from", iso(first), "--to", iso(last), "--explain", "--format", "json")
    assert diff.returncode == 0, diff.stderr
    explained = {row["asset"]: row["explanation"] for row in json.loads(diff.stdout)}
    first_rows = [row for row in intervals if row["asset"] == "USDT"]
    start, end = ms(first_rows[0]["from"]), ms(first_rows[-1]["to"])
    usdt = explained["USDT"]
    assert {t: Decimal(v) for t, v in usdt["explained"].items()} == by_type(entries, "USDT", start, end)
    assert Decimal(usdt["unexplained"]) == total([withheld], "USDT", start, end)
    assert usdt["unknown_types"] == [UNKNOWN_INCOME_TYPE]


def balance_at(history: list[tuple[int, str, str]], asset: str, time_ms: int) -> str:
    states = [balance for when, name, balance in history if name == asset and when <= time_ms]
    assert states, f"no true {asset} state at {time_ms}"
    return states[-1]


def iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.isoformat()


# --- the archive holds every served entry exactly once after restarts and faults ---------------------

DAY_MS = 86_400_000


def trade_in_the_past(exchange: ExchangeSimulator, days: int = 30, steps: int = 400) -> int:
    """A month of trading before the recorder starts, then a burst now; the burst's millisecond."""
    now = exchange.server_time_ms()
    exchange.run_past(SIM_KEY, now - days * DAY_MS, steps, days * DAY_MS // steps)
    return exchange.book_burst(SIM_KEY, BURST)


def served_ledger(exchange: ExchangeSimulator) -> list[tuple]:
    return sorted((e["incomeType"], e["tranId"], e["asset"], Decimal(e["income"]), e["time"], e["symbol"], e["info"],
                   e["tradeId"]) for e in exchange.income_entries(SIM_KEY))


def archived(db_url: str) -> list[tuple]:
    rows = query(db_url, select(IncomeEntry.income_type, IncomeEntry.tran_id, IncomeEntry.asset, IncomeEntry.income,
                                IncomeEntry.time, IncomeEntry.symbol, IncomeEntry.info, IncomeEntry.trade_id))
    return sorted((t, tran, a, Decimal(amount), ms(when), s, i, trade) for t, tran, a, amount, when, s, i, trade in rows)


def syncs(db_url: str) -> list:
    return query(db_url, select(LedgerSync.outcome, LedgerSync.window_start, LedgerSync.window_end,
                                LedgerSync.error_class).order_by(LedgerSync.id))


def coverage_stretches(env: dict[str, str]) -> list[dict[str, Any]]:
    result = cli(env, "ledger", "--coverage", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_run_killed_mid_sync_then_restarted_archives_every_entry_once(exchange, env, db_url):
    trade_in_the_past(exchange)
    # A first sync walks the month in 7-day windows of one page each; the third request (the
    # third window) is held until the service is killed.
    exchange.inject("stall", seconds=120, endpoint="income", after=2)
    exchange.auto_move = True
    service = start_run(env)
    try:
        wait_for(lambda: exchange.stalls_begun, "the income page held")
    finally:
        service.send_signal(signal.SIGKILL)
        service.communicate(timeout=30)
    windows = syncs(db_url)
    assert [outcome for outcome, *_ in windows] == ["ok"] * 2
    covered_until = max(ms(end) for _, _, end, _ in windows)
    # Nothing of the window in flight was stored: the archive is exactly what the exchange served up to it.
    assert archived(db_url) == [row for row in served_ledger(exchange) if row[4] <= covered_until]
    assert any(row[4] <= covered_until for row in archived(db_url))

    exchange.auto_move = False
    frozen_ms = exchange.server_time_ms()
    restarted = start_run(env)
    try:
        wait_for(lambda: synced_after(db_url, frozen_ms), "the restarted service's sync to now")
    finally:
        stderr = stop(restarted)
    assert restarted.returncode == 0, stderr
    assert archived(db_url) == served_ledger(exchange)
    assert len(archived(db_url)) == len(set(archived(db_url))) > BURST
    (stretch,) = coverage_stretches(env)  # one covered stretch, no gap
    assert stretch["kind"] == "covered" and ms(stretch["until"]) >= frozen_ms


def test_faults_on_the_income_endpoint_leave_the_archive_exact(exchange, env, db_url):
    burst_ms = trade_in_the_past(exchange)
    # Each fault ends one sync attempt (a `failed` window, exit 1); the next resumes where the last stopped.
    faults = [
        ("http-503", {"after": 2}, {}),  # a 5xx on the third window
        ("http-503-html", {"after": 1}, {}),  # nginx's HTML error page
        ("rate-429", {"retry_after": 1}, {}),
        ("malformed-json", {"after": 1}, {}),
        ("stall", {"seconds": 60}, {"RECORDER_TIMEOUT": "2"}),  # a page that never completes
        ("truncated-json", {"after": 2}, {}),  # on a page of the burst's millisecond
    ]
    errors = []
    for fault, options, extra in faults:
        exchange.inject(fault, endpoint="income", **options)
        result = cli({**env, **extra}, "sync-ledger", "--ledger-since", "31d")
        assert result.returncode == 1, (fault, result.stdout, result.stderr)
        (line,) = result.stderr.strip().splitlines()[-1:]
        assert line.startswith("error: ") and "Traceback" not in result.stderr, (fault, result.stderr)
        errors.append(line)
    assert [outcome for outcome, *_ in syncs(db_url)].count("failed") == len(faults)
    assert "HTTP 503" in errors[0] and "HTML" in errors[1] and "429" in errors[2] and "timeout" in errors[4]
    # A -1021 is answered by a clock resync and one retry inside the same request.
    exchange.inject("clock-1021", endpoint="income", after=1)
    healed = cli(env, "sync-ledger", "--ledger-since", "31d")
    assert healed.returncode == 0, healed.stderr
    assert archived(db_url) == served_ledger(exchange)
    assert sum(1 for row in archived(db_url) if row[4] == burst_ms) == BURST
    (stretch,) = coverage_stretches(env)  # the failed windows left no gap once synced again
    assert stretch["kind"] == "covered" and ms(stretch["until"]) >= burst_ms
    assert {r.status for r in exchange.requests_log if r.path == "/fapi/v1/income"} <= {200, 400, 429, 503}


# --- a backfilled timeline agrees with the balances the server had, and is marked derived ---------------

def observe_then_backfill(exchange: ExchangeSimulator, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The first poll, a ledger sync, then `recorder backfill` over what came before the poll.

    The exchange moves right after serving the first poll, with a fill stamped before the moment
    served: the walk back must start from the state's updateTime, not from our poll time.
    """
    exchange.auto_move = True
    first_poll = cli(env, "poll")
    assert first_poll.returncode == 0, first_poll.stderr
    synced = cli(env, "sync-ledger", "--ledger-since", "31d")
    assert synced.returncode == 0, synced.stderr
    return cli(env, "backfill", "--days", "31")


def derived_rows(db_url: str) -> list:
    return query(db_url, select(DerivedBalance.asset, DerivedBalance.at, DerivedBalance.balance, DerivedBalance.id)
                 .order_by(DerivedBalance.asset, DerivedBalance.at, DerivedBalance.id.desc()))


def test_a_backfilled_timeline_equals_the_exchanges_true_balances_and_is_marked_derived(exchange, env, db_url):
    now = exchange.server_time_ms()
    start_ms = now - 20 * DAY_MS
    exchange.run_past(SIM_KEY, start_ms, 300, 20 * DAY_MS // 300)
    result = observe_then_backfill(exchange, env)
    assert result.returncode == 0, result.stdout + result.stderr
    agreed = result.stdout.splitlines()[-1]
    assert agreed.startswith("snapshot check: ") and " 0 disagree" in agreed
    assert int(agreed.split()[2]) >= 2 * 19  # USDT and BNB on every finished day of the span
    ((first_poll,),) = ok_polls(db_url)
    history = exchange.wallet_history(SIM_KEY)
    rows = derived_rows(db_url)
    # The entries stamped between the state served and our poll were left out of the walk.
    last_derived = max(ms(at) for _, at, _, _ in rows)
    assert any(last_derived < e["time"] < ms(first_poll) for e in exchange.income_entries(SIM_KEY))
    # The ledger's coverage starts before the trading: an asset that never moved (USDC) is derived
    # too, constant from the coverage's start, which is what the server had.
    derived_assets = {asset for asset, *_ in rows}
    assert derived_assets >= {"USDT", "BNB"}
    for asset in derived_assets - {"USDT", "BNB"}:
        assert not any(e["asset"] == asset for e in exchange.income_entries(SIM_KEY))
        assert len({balance for name, _, balance, _ in rows if name == asset}) == 1
    for asset in ("USDT", "BNB"):
        # Within one millisecond the row stored first follows the last entry of it: that is the balance then.
        derived = {}
        for name, at, balance, _ in rows:
            if name == asset:
                derived[ms(at)] = Decimal(balance)
        times = sorted(derived)
        states = [(when, Decimal(balance)) for when, name, balance in history if name == asset]
        assert times and states
        derived_at = lambda t: derived[max(x for x in times if x <= t)]  # noqa: E731
        # Every state the server had in the derived span is the derived balance at that instant.
        for when, balance in states:
            if times[0] <= when <= times[-1]:
                assert derived_at(when) == balance, (asset, when)
        # The derived timeline moves only at entry times: a fill stamped up to 40 ms before the account
        # update that books it shows there first (the ledger carries no updateTime), so between a fill
        # and its update the derived balance is ahead; at every state the server had it is exact.
        opening = next(line for line in result.stdout.splitlines() if line.startswith(f"{asset}: "))
        assert Decimal(opening.split("(opening ", 1)[1].split(",", 1)[0]) == states[0][1]

    # Marked derived everywhere, never mixed into the observed answers.
    both = cli(env, "history", "--include-derived", "--format", "csv")
    assert both.returncode == 0, both.stderr
    lines = both.stdout.splitlines()
    assert lines[0].endswith(",source")
    sources = [line.rsplit(",", 1)[1] for line in lines[1:]]
    assert sources.count("derived") == len(rows) and set(sources) == {"derived", "observed"}
    observed = cli(env, "history", "--format", "csv").stdout.splitlines()
    assert len(observed) - 1 == sources.count("observed") and "source" not in observed[0]
    exported = cli(env, "export", "--what", "history", "--include-derived", "--format", "csv")
    assert exported.returncode == 0, exported.stderr
    assert [line.rsplit(",", 1)[1] for line in exported.stdout.splitlines()[1:]].count("derived") == len(rows)
    before = cli(env, "balances", "--at", iso(datetime.fromtimestamp((now - 10 * DAY_MS) / 1000, timezone.utc)))
    # Before the first poll nothing was observed, whatever was derived for then.
    assert before.returncode == 0, before.stderr
    assert {line.split()[1] for line in before.stdout.splitlines()[2:]} == {"before_first_poll"}
    assert "before the first successful poll: nothing was recorded yet" in before.stderr


def test_a_withheld_entry_in_the_backfilled_span_is_a_snapshot_disagreement_naming_day_and_amount(exchange, env, db_url):
    now = exchange.server_time_ms()
    start_ms = now - 20 * DAY_MS
    exchange.run_past(SIM_KEY, start_ms, 300, 20 * DAY_MS // 300, withhold_at_step=150)
    (withheld,) = exchange.withheld_income(SIM_KEY)
    result = observe_then_backfill(exchange, env)
    assert result.returncode == 3, result.stdout + result.stderr
    amount = Decimal(withheld["income"])
    stamps = [day * DAY_MS - 1 for day in range(start_ms // DAY_MS + 1, now // DAY_MS + 1)]
    wrong_days = [datetime.fromtimestamp(stamp / 1000, timezone.utc).date().isoformat()
                  for stamp in stamps if start_ms <= stamp < withheld["time"]]
    lines = [line for line in result.stdout.splitlines() if line.startswith("snapshot disagrees: ")]
    assert [line.split()[3] for line in lines] == wrong_days and wrong_days
    for line in lines:
        assert line.split()[2] == withheld["asset"]
        # Walking back past the missing entry leaves the derived balance off by exactly its amount.
        assert Decimal(line.rsplit("difference ", 1)[1]) == amount
    assert f" {len(wrong_days)} disagree" in result.stdout.splitlines()[-1]


def test_a_server_that_ignores_page_fails_the_window_instead_of_dropping_the_rest_of_a_crowded_millisecond(
        exchange, env, db_url):
    burst_ms = trade_in_the_past(exchange, days=3, steps=30)
    exchange.income_pages = False
    ignored = cli(env, "sync-ledger", "--ledger-since", "4d")
    assert ignored.returncode == 1
    assert "repeats entries already read (the server ignores 'page'); not stored" in ignored.stderr
    assert all(row[4] < burst_ms for row in archived(db_url))
    assert [outcome for outcome, *_ in syncs(db_url)][-1] == "failed"
    exchange.income_pages = True
    healed = cli(env, "sync-ledger", "--ledger-since", "4d")
    assert healed.returncode == 0, healed.stderr
    assert archived(db_url) == served_ledger(exchange)
