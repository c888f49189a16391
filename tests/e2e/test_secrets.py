"""A canary secret appears in no output, log or database row, whatever the command does."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from sqlalchemy import MetaData, select

from recorder.db import make_engine
from tests.conftest import SIM_KEY
from tests.e2e.test_cli_recording import RECORDER, recorder, stored_or_none, wait_until

CANARY = "CANARY-secret-7f3a9c1e5b"


def database_text(db_url: str) -> str:
    engine = make_engine(db_url)
    try:
        metadata = MetaData()
        metadata.reflect(engine)
        with engine.connect() as connection:
            return "\n".join(
                repr(row) for table in metadata.sorted_tables for row in connection.execute(select(table))
            )
    finally:
        engine.dispose()


def test_canary_secret_never_printed_logged_or_stored(simulator, cli_env, db_url, tmp_path):
    # The simulator knows the canary as this key's secret, so good polls succeed with it.
    simulator.add_account(api_key=SIM_KEY, api_secret=CANARY, account_alias="SgsR")
    env = {**cli_env, "BINANCE_API_SECRET": CANARY}
    outputs = []
    runs = [
        ("--log-level", "DEBUG", "poll"),
        ("--log-level", "DEBUG", "poll", "--endpoint", "v3"),
        ("--log-level", "DEBUG", "poll", "--recv-window", "70000"),
        ("--log-level", "DEBUG", "poll", "--base-url", "ftp://nowhere"),
        ("--log-level", "DEBUG", "history", "--format", "json"),
        ("--log-level", "DEBUG", "balances", "--format", "json"),
        ("--log-level", "DEBUG", "diff", "--from", "1d", "--format", "json"),
        ("--log-level", "DEBUG", "changes", "--format", "csv"),
        ("--log-level", "DEBUG", "gaps", "--format", "json"),
        ("--log-level", "DEBUG", "series", "--asset", "USDT"),
        ("--log-level", "DEBUG", "balances", "--at", "not-a-time"),
        ("--log-level", "DEBUG", "history", "--asset", "NOPE"),
        ("--log-level", "DEBUG", "migrate"),
        ("poll", "--help"),
        ("run", "--help"),
        ("--help",),
    ]
    for args in runs:
        result = recorder(*args, env=env)
        outputs.append(result.stdout + result.stderr)
    simulator.inject("auth-1022")
    auth = recorder("--log-level", "DEBUG", "poll", env=env)
    outputs.append(auth.stdout + auth.stderr)
    simulator.inject("malformed-json", times=3)
    failing = recorder("--log-level", "DEBUG", "poll", env=env)
    outputs.append(failing.stdout + failing.stderr)
    assert failing.returncode == 1
    before = len(stored_or_none(db_url))
    process = subprocess.Popen(
        [*RECORDER, "--log-level", "DEBUG", "run", "--interval", "0.5"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # Until the service has polled twice (was a fixed 2 s, which a busy machine could spend starting up).
        wait_until(lambda: len(stored_or_none(db_url)) >= before + 2, "two polls by the running service")
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    outputs.append(stdout + stderr)
    demo = recorder("demo", "--seconds", "2", "--database-url", f"sqlite:///{tmp_path / 'demo.db'}", env=env)
    outputs.append(demo.stdout + demo.stderr)
    assert demo.returncode == 0, demo.stderr
    # A wrong secret given on the command line must not be echoed either.
    wrong = recorder("poll", "--api-secret", CANARY + "-wrong", env={**env, "BINANCE_API_SECRET": ""})
    outputs.append(wrong.stdout + wrong.stderr)
    assert wrong.returncode == 1 and "AuthError" in wrong.stderr
    everything = "\n".join(outputs)
    assert "poll ok" in everything  # the runs really polled
    assert CANARY not in everything
    assert "signature=" not in everything
    assert CANARY not in database_text(db_url)
    spool_files = [path for path in Path(cli_env["RECORDER_SPOOL_DIR"]).rglob("*") if path.is_file()]
    assert spool_files  # the writer lock file at least
    assert all(CANARY.encode() not in path.read_bytes() for path in spool_files)
