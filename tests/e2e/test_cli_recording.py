"""The `recorder` CLI as a subprocess, against the strict simulator, into real databases."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from recorder.cli import COMMAND_MODULES
from recorder.db import make_engine, make_sessions
from recorder.exchange import RETRY_ATTEMPTS
from recorder.models import Balance, Poll
from tests.conftest import SIM_KEY
from tests.inprocess import READ_COMMANDS, command_of, run_recorder

RECORDER = [sys.executable, "-m", "recorder"]
SPOOL_ROOT = Path(tempfile.gettempdir()) / "recorder-test-spools"

EXACT_ROWS = [
    {
        "asset": "USDT",
        "balance": "98765432109.12345678",
        "crossWalletBalance": "98765432100.00000000",
        "crossUnPnl": "-12.50000000",
        "availableBalance": "0.00000001",
        "maxWithdrawAmount": "98765432000.00000000",
        "marginAvailable": True,
        "updateTime": 1764000000123,
    },
    {
        "asset": "BNB",
        "balance": "0.00000001",
        "crossWalletBalance": "0.00000001",
        "crossUnPnl": "0.00000000",
        "availableBalance": "0.00000001",
        "maxWithdrawAmount": "0.00000001",
        "marginAvailable": False,
        "updateTime": 0,
    },
]


def recorder(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`recorder ARGS`: a subprocess, or in this process for a read command (tests/inprocess.py)."""
    env = {"RECORDER_SPOOL_DIR": str(SPOOL_ROOT), **env}
    if command_of(args) in READ_COMMANDS:
        return run_recorder(*args, env=env)
    return subprocess.run([*RECORDER, *args], env=env, capture_output=True, text=True, timeout=timeout)


def stop(process: subprocess.Popen[str], signum: int = signal.SIGTERM) -> str:
    """Signal the service and return its stderr; kill and reap it if it does not exit in 10 s."""
    try:
        process.send_signal(signum)
        return process.communicate(timeout=10)[1]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def stored(db_url: str) -> tuple[list[Balance], list[Poll]]:
    engine = make_engine(db_url)
    try:
        with make_sessions(engine)() as session:
            balances = session.scalars(select(Balance).order_by(Balance.id)).all()
            polls = session.scalars(select(Poll).order_by(Poll.finished_at)).all()
            return list(balances), list(polls)
    finally:
        engine.dispose()


def stored_or_none(db_url: str) -> list[Poll]:
    """The polls so far; none while the service is still creating the schema."""
    try:
        return stored(db_url)[1]
    except Exception:  # noqa: BLE001 - no table yet, or SQLite busy for a moment
        return []


def test_poll_stores_exactly_what_was_served(simulator, cli_env, db_url):
    simulator.set_balances(SIM_KEY, EXACT_ROWS)
    result = recorder("poll", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "poll ok account=default assets=2 changed=2" in result.stderr
    balances, polls = stored(db_url)
    served = {row["asset"]: row for row in simulator.served[-1].rows}
    assert len(balances) == 2
    for balance in balances:
        wire = served[balance.asset]
        assert format(balance.balance, "f") == wire["balance"]
        assert format(balance.cross_wallet_balance, "f") == wire["crossWalletBalance"]
        assert format(balance.cross_un_pnl, "f") == wire["crossUnPnl"]
        assert format(balance.available_balance, "f") == wire["availableBalance"]
        assert format(balance.max_withdraw_amount, "f") == wire["maxWithdrawAmount"]
        assert balance.margin_available is wire["marginAvailable"]
        assert round(balance.update_time.timestamp() * 1000) == wire["updateTime"]
    (poll,) = polls
    assert (poll.outcome, poll.asset_count, poll.changed_count, poll.endpoint) == ("ok", 2, 2, "v2")
    assert poll.used_weight == 11  # /fapi/v1/time (1) + /fapi/v2/balance (10)


def test_poll_twice_unchanged_adds_only_a_poll_row(simulator, cli_env, db_url):
    simulator.set_balances(SIM_KEY, EXACT_ROWS)
    assert recorder("poll", env=cli_env).returncode == 0
    assert recorder("poll", env=cli_env).returncode == 0
    balances, polls = stored(db_url)
    assert (len(balances), len(polls)) == (2, 2)
    assert polls[1].changed_count == 0


def test_poll_v3_endpoint_is_a_setting(simulator, cli_env, db_url):
    simulator.set_balances(SIM_KEY, EXACT_ROWS)
    result = recorder("poll", "--endpoint", "v3", env=cli_env)
    assert result.returncode == 0, result.stderr
    paths = [record.path for record in simulator.requests_log]
    assert paths == ["/fapi/v1/time", "/fapi/v3/balance"]
    _, (poll,) = stored(db_url)
    assert poll.endpoint == "v3"


def test_poll_with_wrong_secret_fails_naming_authentication(simulator, cli_env, db_url):
    env = {**cli_env, "BINANCE_API_SECRET": "wrong-secret-canary-77"}
    result = recorder("poll", env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: AuthError: /fapi/v2/balance: HTTP 400 code -1022")
    assert "Traceback" not in result.stderr
    assert "wrong-secret-canary-77" not in result.stdout + result.stderr
    balances, polls = stored(db_url)
    assert balances == []
    assert [(p.outcome, p.error_class, p.error_code) for p in polls] == [("failed", "AuthError", -1022)]


@pytest.mark.parametrize("offset_ms", [3000, -3000])
def test_poll_works_with_server_clock_three_seconds_off(simulator, cli_env, db_url, offset_ms):
    simulator.clock_offset_ms = offset_ms
    simulator.set_balances(SIM_KEY, EXACT_ROWS)
    result = recorder("poll", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert len(stored(db_url)[0]) == 2


def test_poll_without_credentials_fails_before_any_request(simulator, cli_env, db_url):
    env = {k: v for k, v in cli_env.items() if k != "BINANCE_API_SECRET"}
    result = recorder("poll", env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: ConfigError: missing BINANCE_API_SECRET: set the environment variable or pass --api-secret"
    )
    assert simulator.requests_log == []


def test_run_records_every_second_and_stops_cleanly_on_sigterm(simulator, cli_env, db_url):
    process = subprocess.Popen(
        [*RECORDER, "run", "--interval", "1"], env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_until(lambda: len(stored_or_none(db_url)) >= 8, "eight polls")
    sent = time.monotonic()
    stderr = stop(process)
    took = time.monotonic() - sent
    assert process.returncode == 0, stderr
    assert took < 10  # only proves it did not hang: stop() kills after 10 s
    _, polls = stored(db_url)
    assert len(polls) >= 8
    assert all(poll.outcome == "ok" for poll in polls)
    assert "received SIGTERM" in stderr


def test_run_keeps_going_after_a_failed_poll(simulator, cli_env, db_url):
    simulator.set_balances(SIM_KEY, EXACT_ROWS)
    simulator.inject("http-502", times=2 * RETRY_ATTEMPTS)  # two polls, each retried to exhaustion
    process = subprocess.Popen(
        [*RECORDER, "run", "--interval", "0.5"], env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_until(lambda: "ok" in [p.outcome for p in stored_or_none(db_url)[2:]], "an ok poll after the failed ones")
    stop(process, signal.SIGINT)
    assert process.returncode == 0
    balances, polls = stored(db_url)
    outcomes = [poll.outcome for poll in polls]
    assert outcomes[:2] == ["failed", "failed"] and "ok" in outcomes[2:]
    assert polls[0].http_status == 502 and polls[0].error_class == "ExchangeUnavailable"
    assert len(balances) == 2


def test_migrate_then_alembic_agree_on_head(db_url, tmp_path):
    env = {**os.environ, "RECORDER_DATABASE_URL": db_url}
    root = Path(__file__).resolve().parents[2]
    result = recorder("migrate", env=env)
    assert result.returncode == 0 and "upgraded" in result.stdout
    assert recorder("migrate", env=env).stdout.strip() == "database schema is up to date"
    check = subprocess.run(
        [sys.executable, "-m", "alembic", "check"], cwd=root, env=env, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr


def test_every_command_is_in_the_lazy_table():
    from recorder.cli import COMMAND_MODULES, cli, load_all_commands

    load_all_commands()  # commands are registered lazily
    assert sorted(cli.commands) == sorted(COMMAND_MODULES)


# In this process (the installed `recorder --help` and `--version` are subprocesses in test_startup).
@pytest.mark.parametrize("name", sorted(COMMAND_MODULES))
def test_every_command_has_help(name):
    from recorder.cli import cli, load_all_commands

    load_all_commands()  # commands are registered lazily
    assert cli.commands[name].help, f"{name} has no help"
    result = run_recorder(name, "--help")
    assert result.returncode == 0 and "Usage: recorder " + name in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--base-url", "ftp://fapi.binance.com"), "BINANCE_BASE_URL (--base-url) must be an http(s) URL"),
        (("--base-url", "https://fapi.binance.com/fapi/v2"), "must be scheme and host only"),
        (("--recv-window", "70000"), "RECORDER_RECV_WINDOW (--recv-window) must be at most 60000 ms"),
        (("--endpoint", "v9"), "Invalid value for '--endpoint'"),
        (("--testnet", "--base-url", "https://x.example"), "--testnet and --base-url are mutually exclusive"),
    ],
)
def test_bad_settings_exit_2_with_one_line_before_any_request(simulator, cli_env, args, message):
    result = recorder("poll", *args, env=cli_env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert simulator.requests_log == []


def test_database_url_of_unknown_kind_exits_2(cli_env):
    result = recorder("poll", env={**cli_env, "RECORDER_DATABASE_URL": "mysql://x@y/z"})
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ConfigError: RECORDER_DATABASE_URL (--database-url) must be")


def test_unusable_spool_folder_is_a_one_line_config_error(cli_env, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = recorder("poll", env={**cli_env, "RECORDER_SPOOL_DIR": str(blocker / "spool")})
    assert result.returncode == 2
    assert "error: ConfigError: cannot create the spool folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_suggests_commands_that_work_when_pasted(tmp_path):
    database = tmp_path / "demo.db"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("BINANCE_", "RECORDER_"))}
    result = subprocess.run(
        [*RECORDER, "demo", "--seconds", "2", "--interval", "0.5", "--database-url", f"sqlite:///{database}"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    suggested = result.stdout.split("try:\n", 1)[1].splitlines()
    commands = [shlex.split(line) for line in suggested if line.startswith("  ")]
    assert len(commands) == 6
    for command in commands:
        if command[0] == "sqlite3" and shutil.which("sqlite3") is None:
            continue
        ran = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, f"{command}: {ran.stderr}"
        assert ran.stdout.strip(), f"{command} printed nothing"


def wait_until(condition, what: str, deadline_seconds: float = 60):
    """Poll `condition` until it returns something true; fail naming `what` after the deadline."""
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {deadline_seconds:g}s")


def test_run_stores_healthy_polls_at_once_after_an_error_with_a_nul(db_url, tmp_path):
    """The done-when of the poison issue: the NUL answer is a failed row, the next polls land at once."""
    from tests.integration.test_poison import HostileExchange

    hostile = HostileExchange()
    hostile.script.append((400, {}, b'{"code": -1100, "msg": "Illegal characters\\u0000 found"}'))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BINANCE_", "RECORDER_"))}
    env.update(
        BINANCE_API_KEY="k",
        BINANCE_API_SECRET="s",
        BINANCE_BASE_URL=hostile.base_url,
        RECORDER_DATABASE_URL=db_url,
        RECORDER_SPOOL_DIR=str(tmp_path / "spool"),
    )
    # --no-ledger: this exchange speaks only the balance endpoint, and its script is for the polls.
    process = subprocess.Popen(
        [*RECORDER, "run", "--interval", "1", "--no-ledger"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def two_ok_polls() -> list[Poll] | None:
            assert process.poll() is None, process.communicate()[1]
            try:
                polls = stored(db_url)[1]
            except Exception:  # noqa: BLE001 - the service may still be migrating the schema
                return None
            return polls if [p.outcome for p in polls].count("ok") >= 2 else None

        polls = wait_until(two_ok_polls, "two healthy polls after the NUL answer")
    finally:
        stderr = stop(process)
        hostile.close()
    assert process.returncode == 0, stderr
    assert polls[0].outcome == "failed" and polls[0].error_code == -1100
    assert "Illegal characters\\x00 found" in polls[0].error_message
    # Stored within their own interval (recorded_at is only kept when a row arrived late).
    assert all(p.recorded_at is None for p in polls)
    assert list((tmp_path / "spool").rglob("*.json")) == []


def test_poll_sets_a_corrupt_spool_file_aside_and_records(simulator, cli_env, db_url):
    from recorder.identity import database_id
    from recorder.spool import spool_dir_for

    assert recorder("migrate", env=cli_env).returncode == 0
    engine = make_engine(db_url)
    try:
        folder = spool_dir_for(cli_env["RECORDER_SPOOL_DIR"], database_id(engine), "default")
    finally:
        engine.dispose()
    folder.mkdir(parents=True)
    (folder / "00000000000000000001-truncated.json").write_bytes(b'{"uid": "trunc')
    result = recorder("poll", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert (folder / "corrupt" / "00000000000000000001-truncated.json").exists()
    assert "cannot be read back (not JSON" in result.stderr
    assert [p.outcome for p in stored(db_url)[1]] == ["ok"]
