"""`recorder run --config FILE` and `recorder accounts`: many accounts from one file, against the simulator."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from recorder.db import make_engine, make_sessions
from recorder.models import Account, Poll, PollSchedule
from tests.conftest import recorder_env
from tests.e2e.test_cli_recording import RECORDER, recorder, stop, wait_until

ACCOUNTS = [("alpha", "KEY_ALPHA", "SimAlpha"), ("beta", "KEY_BETA", "SimBeta"), ("gamma", "KEY_GAMMA", "SimGamma")]


def secret_of(label: str) -> str:
    return f"secret-of-{label}-must-not-leak"


def fleet(simulator, db_url: str, tmp_path: Path, *, interval: float = 1, extra: str = "") -> tuple[str, dict[str, str]]:
    """An accounts file for ACCOUNTS on the simulator, and an environment holding their credentials only."""
    lines = [extra, "[defaults]", 'endpoint = "v3"', f"interval = {interval}", f'base_url = "{simulator.base_url}"']
    env = recorder_env(simulator, db_url, tmp_path / "spool")
    for name in ("BINANCE_API_KEY", "BINANCE_API_SECRET", "BINANCE_BASE_URL"):
        env.pop(name)
    for label, key, alias in ACCOUNTS:
        simulator.add_account(api_key=f"api-key-{label}", api_secret=secret_of(label), account_alias=alias)
        env[key] = f"api-key-{label}"
        env[f"SECRET_{label.upper()}"] = secret_of(label)
        lines += ["[[accounts]]", f'label = "{label}"', f'api_key_env = "{key}"', f'api_secret_env = "SECRET_{label.upper()}"']
    path = tmp_path / "accounts.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path), env


def polls_by_label(db_url: str) -> dict[str, list[Poll]]:
    try:
        engine = make_engine(db_url)
    except Exception:  # noqa: BLE001 - SQLite file not there yet
        return {}
    try:
        with make_sessions(engine)() as session:
            rows = session.execute(select(Account.label, Poll).join(Poll, Poll.account_id == Account.id)
                                   .order_by(Poll.finished_at)).all()
    except Exception:  # noqa: BLE001 - no schema yet, or SQLite busy for a moment
        return {}
    finally:
        engine.dispose()
    result: dict[str, list[Poll]] = {}
    for label, poll in rows:
        result.setdefault(label, []).append(poll)
    return result


def test_run_config_polls_every_account_and_accounts_lists_them(simulator, db_url, tmp_path):
    path, env = fleet(simulator, db_url, tmp_path)
    process = subprocess.Popen([*RECORDER, "run", "--config", path], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: all(len(polls_by_label(db_url).get(label, [])) >= 3 for label, _, _ in ACCOUNTS),
               "three polls of every account")
    stderr = stop(process)
    assert process.returncode == 0, stderr
    assert "recording 3 accounts from" in stderr and "received SIGTERM" in stderr
    polls = polls_by_label(db_url)
    assert all(poll.outcome == "ok" and poll.endpoint == "v3" for label in polls for poll in polls[label])
    engine = make_engine(db_url)
    try:
        with make_sessions(engine)() as session:
            aliases = dict(session.execute(select(Account.label, Account.account_alias)).all())
            schedules = session.execute(select(Account.label, PollSchedule.interval_ms)
                                        .join(PollSchedule, PollSchedule.account_id == Account.id)).all()
    finally:
        engine.dispose()
    assert aliases == {label: alias for label, _, alias in ACCOUNTS}
    assert sorted(schedules) == [("alpha", 1000), ("beta", 1000), ("gamma", 1000)]

    listed = recorder("accounts", "--config", path, "--format", "json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {row["label"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {"alpha", "beta", "gamma"}
    for label, key, _ in ACCOUNTS:
        assert rows[label]["failures_since_ok"] == 0
        assert rows[label]["last_ok_at"] == polls[label][-1].finished_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert rows[label]["credentials"] == f"env {key} + env SECRET_{label.upper()}"
    table = recorder("accounts", "--config", path, env=env)
    for output in (listed.stdout + listed.stderr, table.stdout + table.stderr, stderr):
        assert not any(secret_of(label) in output for label, _, _ in ACCOUNTS)


def test_run_config_stretches_intervals_past_the_budget_and_says_so(simulator, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    # 3 accounts x weight 5 every 1 s ask 900 a minute; 90% of a 100 limit allows 90: x10.
    path, env = fleet(simulator, db_url, tmp_path, extra="weight_limit = 100")
    # Polls only: the ledger's share of the plan is tested in test_fleet_ledger.py.
    process = subprocess.Popen([*RECORDER, "run", "--config", path, "--no-ledger"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: len(polls_by_label(db_url)) == 3, "a first poll of each account")
    stderr = stop(process)
    assert process.returncode == 0, stderr
    warnings = [line for line in stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, stderr
    assert "need 900 request weight a minute" in warnings[0] and "allows 90 (90% of 100)" in warnings[0]
    assert "stretched x10.000, the shortest to 10s" in warnings[0]
    engine = make_engine(db_url)
    try:
        with make_sessions(engine)() as session:
            assert set(session.scalars(select(PollSchedule.interval_ms))) == {10_000}
    finally:
        engine.dispose()


def test_run_config_refuses_per_account_options(simulator, tmp_path):
    path, env = fleet(simulator, f"sqlite:///{tmp_path / 'x.db'}", tmp_path)
    ran = recorder("run", "--config", path, "--interval", "5", "--endpoint", "v2", env=env)
    assert ran.returncode == 2
    assert ran.stderr.strip().splitlines() == [
        "error: --endpoint, --interval: set per account in the accounts file, not on the command line with --config "
        "(see 'recorder run --help')"
    ]
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("command", ["run", "accounts"])
def test_bad_accounts_file_is_one_line_naming_the_line_exit_2(simulator, tmp_path, command):
    path, env = fleet(simulator, f"sqlite:///{tmp_path / 'x.db'}", tmp_path)
    Path(path).write_text(Path(path).read_text() + 'api_secret = "inline-secret"\n')
    ran = recorder(command, "--config", path, env=env)
    assert ran.returncode == 2
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1 and "line 18: accounts[2]: api_secret is a secret written into the file" in lines[0]
    assert "inline-secret" not in ran.stderr
    assert not (tmp_path / "x.db").exists()


def test_run_config_missing_credential_variable_exits_2_before_any_request(simulator, tmp_path):
    path, env = fleet(simulator, f"sqlite:///{tmp_path / 'x.db'}", tmp_path)
    del env["KEY_BETA"]
    ran = recorder("run", "--config", path, env=env)
    assert ran.returncode == 2
    assert "account 'beta': api_key_env: environment variable KEY_BETA is not set" in ran.stderr
    assert simulator.requests_log == []


def test_run_config_checks_every_key_and_serves_every_account_s_figures(simulator, db_url, tmp_path):
    from tests.e2e.test_operations import free_port
    from tests.integration.test_metrics import get, metric

    path, env = fleet(simulator, db_url, tmp_path)
    simulator.set_api_restrictions("api-key-beta", enableFutures=True)
    port = free_port()
    process = subprocess.Popen([*RECORDER, "run", "--config", path, "--metrics-addr", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: all(len(polls_by_label(db_url).get(label, [])) >= 2 for label, _, _ in ACCOUNTS),
                   "two polls of every account")
        try:
            metrics_status, body = get(f"http://127.0.0.1:{port}/metrics")
            health_status, _ = get(f"http://127.0.0.1:{port}/healthz")
        except OSError as error:  # URLError: nothing listening
            metrics_status, health_status, body = str(error), None, b""
    finally:
        stderr = stop(process)
    assert process.returncode == 0, stderr
    assert (metrics_status, health_status) == (200, 200), stderr
    for label, _, _ in ACCOUNTS:
        assert metric(body, f'recorder_consecutive_failures{{account="{label}"}}') == 0
        assert metric(body, f'recorder_polls_total{{account="{label}",outcome="ok"}}') >= 2
    warnings = [line for line in stderr.splitlines() if "not a read-only key" in line]
    assert len(warnings) == 1 and "account 'beta'" in warnings[0] and "enableFutures" in warnings[0], stderr


def test_run_config_refuses_to_start_when_one_key_may_withdraw(simulator, db_url, tmp_path):
    path, env = fleet(simulator, db_url, tmp_path)
    simulator.set_api_restrictions("api-key-gamma", enableWithdrawals=True)
    env["RECORDER_REQUIRE_READ_ONLY_KEY"] = "true"
    result = subprocess.run([*RECORDER, "run", "--config", path], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "account 'gamma'" in result.stderr and "enableWithdrawals" in result.stderr
    assert polls_by_label(db_url) == {}
