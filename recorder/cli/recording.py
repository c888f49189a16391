"""Write commands: migrate, poll, run, demo, simulate."""

from __future__ import annotations

import logging
import os
import secrets
import sys
import threading
from typing import TYPE_CHECKING, Any

import click

from recorder.cli import cli
from recorder.cli.options import database_options
from recorder.cli.params import Bounded
from recorder.config import ENVIRONMENT, TESTNET_BASE_URL, Settings, load_settings
from recorder.db import SERVICE_SQLITE_CACHE_KIB, make_engine, write_sessions
from recorder.schema import upgrade_to_head
from recorder.timespec import TIME_HELP, TimeSpec

TIME = TimeSpec()

if TYPE_CHECKING:
    # requests is imported inside the commands that poll, so `recorder
    # --help` and the read commands start without them.
    from recorder.service import Recorder

log = logging.getLogger(__name__)


def exchange_options(function: Any) -> Any:
    """Credentials, endpoint and timing options shared by poll and run."""
    for option in reversed(
        [
            click.option("--api-key", help="Binance API key [env BINANCE_API_KEY]; a read-only key is enough."),
            click.option(
                "--api-secret",
                help="Binance API secret [env BINANCE_API_SECRET]. Prefer the environment variable: "
                "a command line is visible to other users of this machine.",
            ),
            click.option(
                "--base-url",
                help="Exchange REST base URL [env BINANCE_BASE_URL; default https://fapi.binance.com].",
            ),
            click.option("--testnet", is_flag=True, help=f"Use Binance's demo/testnet exchange ({TESTNET_BASE_URL})."),
            click.option(
                "--endpoint",
                type=click.Choice(["v2", "v3"]),
                help="Balance endpoint: v2 (/fapi/v2/balance, weight 10) or v3 (/fapi/v3/balance, weight 5) "
                "[env RECORDER_BALANCE_ENDPOINT; default v2].",
            ),
            click.option(
                "--recv-window",
                type=int,
                help="recvWindow in ms, 1 to 60000 [env RECORDER_RECV_WINDOW; default 5000].",
            ),
            click.option(
                "--timeout",
                type=float,
                help="Deadline of each HTTP request, connect to last byte, in seconds, 0.1 to 600 "
                "[env RECORDER_TIMEOUT; default 10].",
            ),
            click.option(
                "--api-secret-file",
                help="Read the API secret from this file (mode 600) [env BINANCE_API_SECRET_FILE].",
            ),
            click.option(
                "--private-key-path",
                help="Ed25519 or RSA private key (PEM, mode 600) instead of an HMAC secret "
                "[env BINANCE_PRIVATE_KEY_PATH; passphrase: env BINANCE_PRIVATE_KEY_PASSPHRASE].",
            ),
            click.option(
                "--spool-dir",
                help="Where polls wait while the database is unavailable [env RECORDER_SPOOL_DIR; "
                "default .recorder-spool].",
            ),
            click.option(
                "--weight-limit",
                type=int,
                help="This IP's request-weight limit per minute, 20 to 1000000; recorder stays under 90% of it "
                "[env RECORDER_WEIGHT_LIMIT; default 2400].",
            ),
        ]
    ):
        function = option(function)
    return database_options(function)


def operations_options(function: Any) -> Any:
    """The metrics endpoint and the key check of `run`."""
    for option in reversed(
        [
            click.option(
                "--metrics-addr",
                help="Serve /metrics (Prometheus) and /healthz at PORT (on 127.0.0.1) or HOST:PORT "
                "[env RECORDER_METRICS_ADDR; default: off].",
            ),
            click.option(
                "--metrics-allow-remote",
                is_flag=True,
                default=None,
                help="Allow a --metrics-addr host other than loopback [env RECORDER_METRICS_ALLOW_REMOTE].",
            ),
            click.option(
                "--require-read-only-key",
                is_flag=True,
                default=None,
                help="Refuse to start (exit 2) unless the key is checked and can only read "
                "[env RECORDER_REQUIRE_READ_ONLY_KEY].",
            ),
            click.option(
                "--spot-base-url",
                help="Spot API host for the key's permission check [env BINANCE_SPOT_BASE_URL; default "
                "https://api.binance.com for the live futures host, the base URL on loopback].",
            ),
        ]
    ):
        function = option(function)
    return function


def _settings(values: dict[str, Any]) -> Settings:
    overrides = {name: value for name, value in values.items() if name != "testnet"}
    if values.get("testnet"):
        if overrides.get("base_url"):
            raise click.UsageError("--testnet and --base-url are mutually exclusive")
        overrides["base_url"] = TESTNET_BASE_URL
    return load_settings(overrides)


def _recorder(settings: Settings) -> Recorder:
    from recorder.exchange import BinanceFuturesClient
    from recorder.service import Recorder
    from recorder.identity import database_id
    from recorder.locks import WriterLock
    from recorder.spool import Spool, legacy_spool_dir_for, spool_dir_for

    client = BinanceFuturesClient.from_settings(settings)
    engine = make_engine(settings.database_url, sqlite_cache_kib=SERVICE_SQLITE_CACHE_KIB)
    upgrade_to_head(engine)
    # The lock first: the spool it guards is then this process's alone (its stale temporary
    # files are a crash's leftovers), and both follow the database, not the URL's spelling.
    lock = WriterLock(engine, settings.account)
    lock.acquire()
    try:
        identity = database_id(engine)
        spool = Spool(
            spool_dir_for(settings.spool_dir, identity, settings.account),
            database_id=identity,
            account=settings.account,
            exclusive=True,
        )
        spool.adopt(legacy_spool_dir_for(settings.spool_dir, settings.database_url, settings.account))
    except BaseException:
        lock.release()
        raise
    return Recorder(
        client=client, sessions=write_sessions(engine), account=settings.account, spool=spool, lock=lock
    )


@cli.command()
@database_options
def migrate(**values: Any) -> None:
    """Upgrade the database schema to the newest version (poll and run also do this)."""
    settings = load_settings(values)
    engine = make_engine(settings.database_url)
    try:
        changed = upgrade_to_head(engine)
    finally:
        engine.dispose()
    click.echo("database upgraded to the newest schema" if changed else "database schema is up to date")


@cli.command()
@exchange_options
@click.option(
    "--interval",
    type=float,
    envvar="RECORDER_INTERVAL",
    help="Seconds between the polls your scheduler (cron, a timer) runs [env RECORDER_INTERVAL], stored "
    "so readers judge gaps by it. Not given: the interval declared last stays in force (60 s if none ever was).",
)
def poll(**values: Any) -> None:
    """Poll the balances once now; exit 0 on success, 1 with a one-line error on failure."""
    from recorder.service import declare_schedule, utcnow

    settings = _settings(values)
    recorder = _recorder(settings)
    try:
        if values.get("interval") is not None:
            declare_schedule(recorder, settings.interval, source="poll", at=utcnow())
        recorder.poll_once()
    finally:
        recorder.close()
        recorder.client.close()
        if recorder.lock is not None:
            recorder.lock.release()


@cli.command("run")
@exchange_options
@click.option(
    "--interval",
    type=float,
    help="Seconds between polls, 0.2 to 86400 [env RECORDER_INTERVAL; default 60]. The first poll runs at start. "
    "Stored in the database as the account's schedule: a poll later than 1.5 intervals is a gap for every reader.",
)
@click.option(
    "--config",
    "config_file",
    help="Accounts file (TOML) listing the accounts to poll [env RECORDER_CONFIG]; see 'Many accounts' in the "
    "README. Its accounts carry their own credentials, endpoint and interval.",
)
@operations_options
@click.option("--no-ledger", is_flag=True,
              help="Do not sync the income ledger (GET /fapi/v1/income); with --config, of any account.")
@click.option(
    "--ledger-interval",
    type=float,
    help="Seconds between income-ledger syncs, 10 to 86400 [env RECORDER_LEDGER_INTERVAL; default 300]; with "
    "--config, of every account whose file entry sets no ledger_interval.",
)
@click.option("--ledger-since", type=TIME, help=f"Where the first ledger sync starts [default: 90 days ago]: {TIME_HELP}.")
def run_command(no_ledger: bool, ledger_since: Any, **values: Any) -> None:
    """Record continuously until SIGTERM or Ctrl-C; a failed poll is recorded and the next tick goes on.

    The income ledger is synced beside the polls every --ledger-interval (see `recorder ledger`),
    of every account with --config.
    """
    from recorder.cli.ledger_job import ledger_jobs
    from recorder.exchange import INCOME_PATH, REQUEST_WEIGHT
    from recorder.scheduling import Demand, WeightBudget, plan_intervals
    from recorder.service import JobPlan, run

    config_file = values.pop("config_file") or load_settings(ignore=ALL_BUT_CONFIG).config_file
    if config_file:
        from recorder.service import run_accounts_file

        _refuse_account_options(values)

        def jobs_for(recorder: Recorder, settings: Settings, plan: JobPlan) -> list[Any]:
            return ledger_jobs(recorder, settings, enabled=True, since=ledger_since, budget=plan.budget,
                               leave=plan.leave, interval=plan.interval, phase=plan.phase, hold=plan.hold)

        result = run_accounts_file(config_file, os.environ, values, jobs_for=None if no_ledger else jobs_for)
        _exit_after_run(result.exit_code, result.abandoned_poll)
    settings = _settings(values)
    # The fleet's rule for one account: polls first, the ledger sync takes what they leave.
    ledger_weight = REQUEST_WEIGHT[INCOME_PATH]
    plan = plan_intervals([Demand(settings.account, settings.interval, REQUEST_WEIGHT[settings.balance_path],
                                  None if no_ledger else settings.ledger_interval, ledger_weight)],
                          settings.weight_limit)
    if announcement := plan.announcement():
        log.warning("%s", announcement)
    _check_key(settings)
    recorder = _recorder(settings)
    server = _serve_metrics(settings, recorder, ledger=not no_ledger)
    # One budget for the polls and the ledger sync; the sync leaves the polls' minute share free.
    budget = WeightBudget(settings.weight_limit)
    leave = plan.polls_share(budget, ledger_weight)
    jobs = ledger_jobs(recorder, settings, enabled=not no_ledger, since=ledger_since, budget=budget, leave=leave,
                       interval=plan.ledger_intervals.get(settings.account))
    try:
        result = run(recorder, plan.intervals[settings.account], extra_jobs=jobs, budget=budget)
    finally:
        if server is not None:
            server.stop()
    _exit_after_run(result.exit_code, result.abandoned_poll)


# Only RECORDER_CONFIG decides between the two modes; the rest of the environment is read by the mode chosen.
ALL_BUT_CONFIG = frozenset(ENVIRONMENT) - {"RECORDER_CONFIG"}

# With an accounts file these are per account, in the file; the command line keeps the process-wide ones.
PER_ACCOUNT_OPTIONS = ("api_key", "api_secret", "base_url", "testnet", "endpoint", "recv_window", "timeout",
                       "api_secret_file", "private_key_path", "interval", "account")


def _refuse_account_options(values: dict[str, Any]) -> None:
    given = [name for name in PER_ACCOUNT_OPTIONS if values.get(name) not in (None, False)]
    if given:
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        raise click.UsageError(f"{options}: set per account in the accounts file, not on the command line with --config")


def _check_key(settings: Settings) -> None:
    """The read-only key check, before the database is touched: a refused key migrates and locks nothing."""
    from recorder.exchange import BinanceFuturesClient
    from recorder.keycheck import check_key

    client = BinanceFuturesClient.from_settings(settings)
    try:
        check_key(client, settings)
    finally:
        client.close()


def _serve_metrics(settings: Settings, recorder: Recorder, *, ledger: bool) -> Any:
    """Start /metrics and /healthz when asked for, reporting the recorder's polls (and ledger syncs
    with `ledger`); the server, or None."""
    if settings.metrics_addr is None:
        return None
    from recorder.metrics import PollMetrics, serve_metrics
    from recorder.service import watch_ledger

    metrics = PollMetrics()
    metrics.watch(recorder.account, settings.interval, recorder.spool.directory if recorder.spool else None)
    recorder.observer = metrics.observe
    try:
        if ledger:
            watch_ledger(metrics, recorder)
        return serve_metrics(metrics, settings.metrics_addr)
    except BaseException:
        recorder.client.close()
        if recorder.lock is not None:
            recorder.lock.release()
        raise


@cli.command()
@click.option(
    "--database-url",
    default="sqlite:///recorder-demo.db",
    show_default=True,
    help="Where the demo writes; kept apart from your real recorder.db.",
)
@click.option("--seconds", type=Bounded(float, 1, 86400, "s"), default=20.0, show_default=True,
              help="How long to record, 1 to 86400 s.")
@click.option("--interval", type=Bounded(float, 0.2, 3600, "s"), default=1.0, show_default=True,
              help="Seconds between polls, 0.2 to 3600.")
@click.option("--withhold-income", type=Bounded(int, 0, 1000), default=1, show_default=True,
              help="How many income entries the simulated exchange leaves out of its ledger (0 to 1000), "
              "so the ledger has a discrepancy to find.")
def demo(database_url: str, seconds: float, interval: float, withhold_income: int) -> None:
    """Record a simulated account and its income ledger over real HTTP into a demo database; no Binance keys needed."""
    from recorder.demo import run_demo

    sys.exit(run_demo(database_url=database_url, seconds=seconds, interval=interval, withhold_income=withhold_income))


@cli.command()
@click.option("--port", type=Bounded(int, 0, 65535), default=8765, show_default=True,
              help="Port on 127.0.0.1, 1 to 65535; 0 picks a free one (the URL is printed).")
@click.option("--api-key", default="demo-key", show_default=True, help="The API key the simulator accepts.")
@click.option(
    "--api-secret",
    default=None,
    help="The secret it verifies signatures with [default: a random one, printed at start].",
)
@click.option("--clock-offset-ms", type=Bounded(int, -86_400_000, 86_400_000, "ms"), default=0, show_default=True,
              help="Server clock minus local clock, within one day (±86400000 ms).")
def simulate(port: int, api_key: str, api_secret: str | None, clock_offset_ms: int) -> None:
    """Serve the built-in Binance-compatible exchange on 127.0.0.1 until Ctrl-C (for trying clients)."""
    from recorder.simulator import ExchangeSimulator

    generated = api_secret is None
    secret = api_secret or secrets.token_hex(32)
    simulator = ExchangeSimulator(port=port, clock_offset_ms=clock_offset_ms, auto_move=True, history_limit=1000)
    simulator.add_account(api_key=api_key, api_secret=secret, account_alias="SimDemo")
    stop = threading.Event()
    try:
        simulator.start()
    except OSError as exc:
        # A busy port or one this user may not bind: say which, not a socket traceback.
        raise click.UsageError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None
    click.echo(f"simulated exchange at {simulator.base_url} (SIMULATED DATA, not Binance)")
    # A generated secret is shown once so the user can point a client at the simulator;
    # it guards nothing but this throwaway local server.
    if generated:
        click.echo(f"BINANCE_API_KEY={api_key} BINANCE_API_SECRET={secret} BINANCE_BASE_URL={simulator.base_url}")
    try:
        simulator.serve_until(stop)
    except KeyboardInterrupt:
        pass
    finally:
        simulator.stop()


def _exit_after_run(exit_code: int, abandoned_poll: bool) -> None:
    if abandoned_poll:
        # A worker thread is still blocked in an HTTP read; the interpreter would join it at
        # exit and overrun the shutdown deadline. Its transaction never began, so nothing is lost.
        logging.shutdown()
        sys.stdout.flush()
        os._exit(exit_code)
    sys.exit(exit_code)
