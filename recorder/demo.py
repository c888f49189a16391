"""`recorder demo`: the real recorder against the built-in exchange, over real HTTP."""

from __future__ import annotations

import secrets
import sys
import threading
from pathlib import Path

import click
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from recorder.config import load_settings
from recorder.db import make_engine, make_sessions
from recorder.exchange import RETRY_ATTEMPTS, BinanceFuturesClient
from recorder.models import POLL_FAILED, POLL_OK, Account, Balance, IncomeEntry, Poll
from recorder.schema import upgrade_to_head
from recorder.ledger.sync import LedgerSync
from recorder.service import PeriodicJob, Recorder, run
from recorder.simulator import ExchangeSimulator

DEMO_ACCOUNT = "demo"
DEMO_ALIAS = "SimDemo"


def run_demo(*, database_url: str, seconds: float, interval: float, withhold_income: int = 1) -> int:
    """Record a simulated account for `seconds`, with a short simulated outage, and sync its income
    ledger with `withhold_income` entries withheld by the exchange; print where the data is."""
    settings = load_settings({"database_url": database_url, "account": DEMO_ACCOUNT, "interval": interval})
    api_key, api_secret = secrets.token_hex(16), secrets.token_hex(32)
    simulator = ExchangeSimulator(auto_move=True, seed=secrets.randbits(32), history_limit=1000)
    simulator.add_account(api_key=api_key, api_secret=api_secret, account_alias=DEMO_ALIAS)
    engine = make_engine(settings.database_url)
    upgrade_to_head(engine)
    with simulator:
        click.echo(f"SIMULATED exchange at {simulator.base_url}: demo data, never a real Binance account")
        click.echo(f"recording account '{DEMO_ACCOUNT}' every {interval:g}s for {seconds:g}s into {_where(database_url)}")
        client = BinanceFuturesClient(
            base_url=simulator.base_url, api_key=api_key, api_secret=api_secret, timeout=2.0
        )
        # Half-way through, the exchange fails for two polls (each retried to exhaustion),
        # so the poll log and `recorder gaps` show what a gap looks like.
        outage = threading.Timer(
            seconds / 2, simulator.inject, args=("http-503",), kwargs={"times": 2 * RETRY_ATTEMPTS}
        )
        outage.daemon = True
        outage.start()
        # A third of the way in, the exchange books a few wallet moves without their income
        # entries: the balance moves, the ledger misses them, as reconciliation should notice.
        withhold = threading.Timer(seconds / 3, simulator.withhold_next_income, args=(api_key, withhold_income))
        withhold.daemon = True
        if withhold_income > 0:
            withhold.start()
            click.echo(f"the exchange will withhold {withhold_income} income entr{'y' if withhold_income == 1 else 'ies'} "
                       f"from its ledger at ~{seconds / 3:g}s (a discrepancy to find)")
        recorder = Recorder(client, make_sessions(engine, write=True), DEMO_ACCOUNT)
        # The ledger syncs a few times per demo instead of every 5 minutes.
        ledger = PeriodicJob("ledger", max(seconds / 4, 2.0), LedgerSync(client, recorder.sessions, DEMO_ACCOUNT).sync_once)
        try:
            result = run(recorder, interval, stop_after=seconds, extra_jobs=[ledger])
        finally:
            outage.cancel()
            withhold.cancel()
            client.close()
    _print_summary(engine, database_url)
    engine.dispose()
    return result.exit_code


def _where(database_url: str) -> str:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        return str(Path(url.database).resolve())
    return url.render_as_string(hide_password=True)


def _print_summary(engine, database_url: str) -> None:
    sessions = make_sessions(engine)
    with sessions() as session:
        account_id = session.scalar(select(Account.id).where(Account.label == DEMO_ACCOUNT))
        counts = dict(
            session.execute(
                select(Poll.outcome, func.count()).where(Poll.account_id == account_id).group_by(Poll.outcome)
            ).all()
        )
        states = session.scalar(select(func.count()).select_from(Balance).where(Balance.account_id == account_id))
        entries = session.scalar(select(func.count()).select_from(IncomeEntry).where(IncomeEntry.account_id == account_id))
    ok, failed = counts.get(POLL_OK, 0), counts.get(POLL_FAILED, 0)
    where = _where(database_url)
    url = f"sqlite:///{where}" if make_url(database_url).get_backend_name() == "sqlite" else database_url
    click.echo("")
    click.echo(f"{ok} successful polls, {failed} failed (the simulated outage), {states} distinct asset states stored, "
               f"{entries} income ledger entries archived")
    click.echo(f"data: {where} (account '{DEMO_ACCOUNT}', Binance alias {DEMO_ALIAS}: simulated)")
    # The user's shell may not have the venv on PATH: print a command that works when pasted.
    installed = Path(sys.executable).parent / "recorder"
    recorder = str(installed) if installed.exists() else "recorder"
    click.echo("try:")
    click.echo(f"  {recorder} balances --database-url {url} --account {DEMO_ACCOUNT}")
    click.echo(f"  {recorder} history --database-url {url} --account {DEMO_ACCOUNT} --asset USDT")
    click.echo(f"  {recorder} gaps --database-url {url} --account {DEMO_ACCOUNT}")
    click.echo(f"  {recorder} ledger --database-url {url} --account {DEMO_ACCOUNT} --asset USDT")
    if make_url(database_url).get_backend_name() == "sqlite":
        click.echo(
            f'  sqlite3 {where} "SELECT asset, balance, observed_at FROM latest_balances ORDER BY balance DESC"'
        )
        click.echo(
            f'  sqlite3 {where} "SELECT started_at, outcome, error_class, duration_ms, used_weight '
            f'FROM poll_log ORDER BY finished_at DESC LIMIT 5"'
        )
