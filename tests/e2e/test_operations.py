"""`recorder run` with /metrics and /healthz, `recorder status` as a check, and the read-only key check,
all as subprocesses against the simulator and real databases."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from recorder.db import make_engine, make_sessions
from recorder.identity import database_id
from recorder.models import Poll
from recorder.spool import spool_dir_for
from tests.conftest import SIM_KEY, recorder_env
from tests.inprocess import READ_COMMANDS, command_of, run_recorder
from tests.integration.test_metrics import get, metric

RECORDER = [sys.executable, "-m", "recorder"]
# How long a condition may take on a busy 2-core machine before the test gives up.
PATIENCE_SECONDS = 60.0


def recorder(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`recorder ARGS`: a subprocess, or in this process for a read command such as status (tests/inprocess.py)."""
    if command_of(args) in READ_COMMANDS:
        return run_recorder(*args, env=env)
    return subprocess.run([*RECORDER, *args], env=env, capture_output=True, text=True, timeout=120)


def start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([*RECORDER, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(process: subprocess.Popen[str]) -> str:
    """SIGTERM the service and return its stderr; kill it if it does not stop in 30 s."""
    try:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        return process.communicate(timeout=30)[1]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def wait_for(condition: Callable[[], object], process: subprocess.Popen[str] | None = None) -> object:
    """Poll `condition` until it returns something true; fail after PATIENCE_SECONDS or if the process died."""
    give_up = time.monotonic() + PATIENCE_SECONDS
    while time.monotonic() < give_up:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            pytest.fail(f"the service exited with {process.returncode}: {process.communicate()[1]}")
        time.sleep(0.05)
    pytest.fail("condition not met in time")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def polls(db_url: str) -> list[Poll]:
    engine = make_engine(db_url)
    try:
        with make_sessions(engine)() as session:
            return list(session.scalars(select(Poll).order_by(Poll.finished_at)))
    finally:
        engine.dispose()


def status(env: dict[str, str], *args: str) -> tuple[int, dict]:
    result = recorder("status", "--format", "json", *args, env=env)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


# -- metrics and health of a running service ---------------------------------------------------------------


def test_run_serves_metrics_then_a_failing_account_makes_healthz_503_and_status_exit_1(simulator, cli_env, db_url):
    port = free_port()
    process = start("run", "--interval", "0.5", "--metrics-addr", str(port), env=cli_env)
    base = f"http://127.0.0.1:{port}"
    try:
        def polled() -> bytes | None:
            try:
                status_code, body = get(base + "/metrics")
            except OSError:
                return None  # not listening yet
            ok = 'recorder_polls_total{account="default",outcome="ok"}'
            return body if status_code == 200 and ok in body.decode() else None

        body = wait_for(polled, process)
        assert metric(body, 'recorder_consecutive_failures{account="default"}') == 0
        assert metric(body, 'recorder_last_good_poll_timestamp_seconds{account="default"}') > 0
        code, healthz = get(base + "/healthz")
        assert code == 200 and json.loads(healthz)["status"] == "healthy"

        # From now on every balance request fails: the account stops being recorded.
        simulator.inject("http-500", times=100_000)
        def failing() -> dict | None:
            code, healthz = get(base + "/healthz")
            document = json.loads(healthz)
            # A failed poll (with its retries) may end after the tolerance: wait for both.
            return document if code == 503 and document["accounts"][0]["consecutive_failures"] >= 1 else None

        document = wait_for(failing, process)
        assert document["failing"] == ["default"]
        assert "no successful poll since" in document["accounts"][0]["problems"][0]
        _, body = get(base + "/metrics")
        assert metric(body, 'recorder_consecutive_failures{account="default"}') >= 1
        assert metric(body, 'recorder_healthy{account="default"}') == 0

        # `status` reads the same verdict from the database alone, while the service runs.
        exit_code, checked = status(cli_env)
        assert exit_code == 1 and checked["failing"] == ["default"]
        assert checked["accounts"][0]["consecutive_failures"] >= 1
        assert checked["accounts"][0]["last_error"].startswith("ExchangeUnavailable")
    finally:
        stderr = stop(process)
    assert process.returncode == 0, stderr
    assert "serving /metrics and /healthz at http://127.0.0.1:" in stderr


def test_metrics_port_in_use_exits_2_with_one_line(simulator, sqlite_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = recorder("run", "--metrics-addr", str(taken.getsockname()[1]), env=sqlite_env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ConfigError: cannot serve metrics on 127.0.0.1:")


# -- recorder status ----------------------------------------------------------------------------------------


def test_status_is_healthy_after_a_poll_then_unhealthy_past_the_tolerance(simulator, cli_env, db_url):
    assert recorder("poll", "--interval", "60", env=cli_env).returncode == 0
    exit_code, document = status(cli_env)
    assert exit_code == 0 and document["status"] == "healthy"
    account = document["accounts"][0]
    stored = polls(db_url)
    assert account["last_ok_at"] == stored[-1].finished_at.isoformat()
    assert account["consecutive_failures"] == 0 and account["spool_depth"] == 0
    assert account["used_weight"] == stored[-1].used_weight
    table = recorder("status", env=cli_env)
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split() == ["account", "health", "last_ok_at", "due_at", "failures",
                                                    "used_weight", "spool", "ledger_covered_until",
                                                    "ledger_failures", "problems"]
    assert table.stdout.splitlines()[2].split()[:2] == ["default", "ok"]
    assert recorder("status", "--account", "ghost", env=cli_env).stdout.splitlines()[2].split()[:2] == [
        "ghost", "UNHEALTHY"]

    # A schedule of 0.2 s makes the next poll due 0.3 s after this one.
    assert recorder("poll", "--interval", "0.2", env=cli_env).returncode == 0
    exit_code, document = wait_for(lambda: (lambda r: r if r[0] == 1 else None)(status(cli_env)))
    assert "no successful poll since" in document["accounts"][0]["problems"][0]


def test_status_counts_failures_names_the_error_and_judges_each_account(simulator, cli_env, db_url):
    failing = {**cli_env, "BINANCE_API_SECRET": "wrong-secret"}
    assert recorder("poll", env=failing).returncode == 1
    assert recorder("poll", env=failing).returncode == 1
    assert recorder("poll", "--interval", "60", "--account", "second", env=cli_env).returncode == 0
    exit_code, document = status(cli_env)
    assert exit_code == 1 and document["failing"] == ["default"]
    default, second = document["accounts"]
    assert default["consecutive_failures"] == 2
    assert default["last_ok_at"] is None and default["problems"] == ["no successful poll yet"]
    assert default["last_error"].startswith("AuthError")
    assert second["account"] == "second" and second["healthy"] and second["consecutive_failures"] == 0
    exit_code, document = status(cli_env, "--account", "second")
    assert exit_code == 0 and [a["account"] for a in document["accounts"]] == ["second"]
    exit_code, document = status(cli_env, "--account", "second", "--account", "ghost")
    assert exit_code == 1 and document["failing"] == ["ghost"]
    assert document["accounts"][1]["problems"] == ["never recorded in this database"]


def test_status_spool_entries_make_it_unhealthy(simulator, cli_env, db_url):
    assert recorder("poll", "--interval", "60", env=cli_env).returncode == 0
    engine = make_engine(db_url)
    try:
        folder = spool_dir_for(cli_env["RECORDER_SPOOL_DIR"], database_id(engine), "default")
    finally:
        engine.dispose()
    # Stands for polls the database did not take: status counts them, it never reads them.
    (folder / "00000000000000000001-a.json").write_text("{}")
    (folder / "00000000000000000002-b.json").write_text("{}")
    (folder / ".00000000000000000003-c.json.tmp").write_text("{}")
    exit_code, document = status(cli_env)
    assert exit_code == 1
    assert document["accounts"][0]["spool_depth"] == 2
    assert document["accounts"][0]["problems"] == ["2 poll(s) waiting in the spool: the database did not take them"]


def test_status_never_writes_nor_migrates(cli_env, db_url, tmp_path):
    """An empty database stays empty; the one-line error says what to do; exit 1."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        Path(url.database).touch()
    result = recorder("status", env=cli_env)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: StorageError: the database has no recorder schema (expected " + \
        result.stderr.split("(expected ", 1)[1].split(")")[0] + "): run `recorder migrate`"
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            assert not connection.dialect.get_table_names(connection)
    finally:
        engine.dispose()


def test_status_missing_database_exits_1_with_one_line(tmp_path, simulator):
    env = recorder_env(simulator, f"sqlite:///{tmp_path / 'absent.db'}", tmp_path / "spool")
    result = recorder("status", env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: StorageError: no database at {tmp_path / 'absent.db'}: " \
                                    "check --database-url / RECORDER_DATABASE_URL"
    assert not (tmp_path / "absent.db").exists()


def test_status_leaves_the_sqlite_file_byte_identical(simulator, tmp_path):
    env = recorder_env(simulator, f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "spool")
    assert recorder("poll", env=env).returncode == 0
    before = hashlib.sha256((tmp_path / "r.db").read_bytes()).hexdigest()
    assert recorder("status", env=env).returncode == 0
    assert hashlib.sha256((tmp_path / "r.db").read_bytes()).hexdigest() == before


# -- the read-only key check ----------------------------------------------------------------------------------


@pytest.fixture
def sqlite_env(simulator, tmp_path) -> dict[str, str]:
    return recorder_env(simulator, f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "spool")


def run_until_polled(env: dict[str, str], tmp_path: Path, *args: str, log_level: str = "INFO") -> str:
    """Start `recorder run`, wait for its first poll row, stop it; its stderr."""
    process = start("--log-level", log_level, "run", "--interval", "1", *args, env=env)

    def polled() -> list[Poll] | None:
        try:
            return polls(f"sqlite:///{tmp_path / 'r.db'}")
        except OperationalError:
            return None  # not created or not migrated yet

    try:
        wait_for(polled, process)
    finally:
        stderr = stop(process)
    assert process.returncode == 0, stderr
    return stderr


def test_read_only_key_passes_quietly(simulator, sqlite_env, tmp_path):
    stderr = run_until_polled(sqlite_env, tmp_path, "--require-read-only-key")
    assert "WARNING" not in stderr and "recorder.keycheck" not in stderr
    assert [r.path for r in simulator.requests_log].count("/sapi/v1/account/apiRestrictions") == 1


def test_trading_key_warns_in_one_line_and_records(simulator, sqlite_env, tmp_path):
    simulator.set_api_restrictions(SIM_KEY, enableSpotAndMarginTrading=True, enableFutures=True,
                                   enableInternalTransfer=True)
    stderr = run_until_polled(sqlite_env, tmp_path)
    warnings = [line for line in stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1
    assert warnings[0].endswith(
        "the API key is not a read-only key: it may do more than read: trading (enableSpotAndMarginTrading, "
        "enableFutures); internal/universal transfer (enableInternalTransfer); use a key with only enableReading"
    )


def test_withdrawal_key_with_the_refuse_setting_exits_2_before_recording(simulator, sqlite_env, tmp_path):
    simulator.set_api_restrictions(SIM_KEY, enableWithdrawals=True)
    result = recorder("run", env={**sqlite_env, "RECORDER_REQUIRE_READ_ONLY_KEY": "true"})
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "error: ConfigError: the API key is not a read-only key: it may do more than read: withdrawals "
        "(enableWithdrawals); use a key with only enableReading; refusing to start: unset "
        "RECORDER_REQUIRE_READ_ONLY_KEY (--require-read-only-key) to start anyway"
    )
    assert not any(r.path.endswith("/balance") for r in simulator.requests_log)
    # Refused before the database: nothing was created, migrated or locked.
    assert not (tmp_path / "r.db").exists()


def test_key_without_reading_is_named(simulator, sqlite_env, tmp_path):
    simulator.set_api_restrictions(SIM_KEY, enableReading=False)
    result = recorder("run", "--require-read-only-key", env=sqlite_env)
    assert result.returncode == 2
    assert "it lacks enableReading, so it cannot poll balances" in result.stderr.strip().splitlines()[-1]


def test_unreachable_check_warns_and_continues_without_leaking_the_query(simulator, sqlite_env, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    stderr = run_until_polled({**sqlite_env, "BINANCE_SPOT_BASE_URL": closed}, tmp_path, log_level="DEBUG")
    warnings = [line for line in stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1
    assert "could not check the API key's permissions: ExchangeUnavailable: /sapi/v1/account/apiRestrictions:" in warnings[0]
    assert warnings[0].endswith("; recording anyway")
    assert "signature" not in stderr and "timestamp=" not in stderr
    # The same failure with the refuse setting stops the start.
    result = recorder("run", "--require-read-only-key", env={**sqlite_env, "BINANCE_SPOT_BASE_URL": closed})
    assert result.returncode == 2 and "refusing to start" in result.stderr


def test_testnet_says_the_check_could_not_be_made(simulator, sqlite_env):
    """No request: the futures testnet has no /sapi; the refuse setting then refuses."""
    result = recorder("run", "--testnet", "--require-read-only-key", env={
        k: v for k, v in sqlite_env.items() if k != "BINANCE_BASE_URL"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: ConfigError: could not check the API key's permissions: https://demo-fapi.binance.com has no API-key "
        "permission endpoint (set BINANCE_SPOT_BASE_URL if it has one); refusing to start: unset "
        "RECORDER_REQUIRE_READ_ONLY_KEY (--require-read-only-key) to start anyway"
    )


def test_status_imports_nothing_of_the_write_side(simulator, sqlite_env, tmp_path):
    assert recorder("poll", env=sqlite_env).returncode == 0
    probe = (
        "import sys\n"
        "from recorder.cli import main\n"
        "sys.argv = ['recorder', 'status']\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    code = exit.code\n"
        "loaded = [m for m in ('requests', 'apscheduler', 'alembic', 'prometheus_client') if m in sys.modules]\n"
        "print('LOADED', loaded, code)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], env=sqlite_env, capture_output=True, text=True, timeout=120)
    assert result.stdout.splitlines()[-1] == "LOADED [] 0", result.stderr
