"""The command line says what is wrong: one line on stderr, exit 2, no traceback, nothing on stdout.

Each case runs the console script's `main()` with a clean environment: in this process
(tests/inprocess.py) for commands that only read or poll once, as the installed `recorder`
subprocess for those that would start a service if the check failed (`run`, `demo`,
`simulate`), and through the real entry point once more in the option-given-twice test. The
repeated-option check walks every option of every command through click's own parser, so a
new option is covered without a new row.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from recorder.cli import cli, load_all_commands
from recorder.db import make_engine, make_sessions
from recorder.records import AssetBalance, FetchedBalances
from recorder.schema import upgrade_to_head
from recorder.store import ensure_account, record_poll
from tests.inprocess import SERVICE_COMMANDS, run_recorder

load_all_commands()  # commands are registered lazily; these tests walk them all

RECORDER = str(Path(sys.executable).with_name("recorder"))
RANGE = "times run from 0001-01-01 to 9999-12-31 UTC"


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory) -> Iterator[str]:
    """A SQLite database with one poll of account 'default' (USDT), so only the input can be wrong."""
    url = f"sqlite:///{tmp_path_factory.mktemp('validation') / 'recorder.db'}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    usdt = AssetBalance("USDT", *(Decimal("1.00000000"),) * 5, True, when)
    with make_sessions(engine, write=True).begin() as session:
        account = ensure_account(session, "default", "http://127.0.0.1:9", when)
        record_poll(session, account, FetchedBalances("SgsR", (usdt,), "/fapi/v2/balance", 5), started_at=when, finished_at=when)
    engine.dispose()
    yield url


def recorder(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `recorder` as a subprocess."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BINANCE_", "RECORDER_"))}
    return subprocess.run([RECORDER, *args], capture_output=True, text=True, timeout=60, env={**clean, **(env or {})})


def check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`recorder ARGS` in this process, or as a subprocess for a command that would start a service."""
    if args[0] in SERVICE_COMMANDS:
        return recorder(*args, env=env)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BINANCE_", "RECORDER_"))}
    return run_recorder(*args, env={**clean, **(env or {})})


def assert_one_line_usage_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert result.stdout == ""


READ_CASES = [
    # A range whose start is after its end, for every command with a range.
    (("history", "--since", "2026-01-03", "--until", "2026-01-02"), "--since 2026-01-03T00:00:00.000000Z is after --until"),
    (("changes", "--since", "2026-01-03", "--until", "2026-01-02T23:59:59Z"), "is after --until 2026-01-02T23:59:59.000000Z"),
    (("gaps", "--since", "2026-01-03", "--until", "2026-01-02"), "--since 2026-01-03T00:00:00.000000Z is after --until"),
    (("gaps", "--since", "9999-01-01"), "is after --until"),  # --until defaults to now
    (("series", "--asset", "USDT", "--since", "now", "--until", "1h"), "is after --until"),
    (("diff", "--from", "2026-01-03", "--to", "2026-01-02"), "--from 2026-01-03T00:00:00.000000Z is after --to"),
    (("diff", "--from", "9999-01-01"), "is after --to"),  # --to defaults to now
    (("export", "--what", "history", "--since", "2026-01-03", "--until", "2026-01-02"), "is after --until"),
    (("export", "--what", "history", "--at", "2026-01-02"), "--at is for --what balances"),
    (("export", "--what", "polls", "--incremental", "nightly"), "--incremental works with --what history or changes"),
    (("export", "--what", "history", "--incremental", "n", "--since", "1d"), "drop --since/--until"),
    (("export", "--what", "history", "--format", "parquet"), "--format parquet needs --out FILE"),
    # Time specs outside the representable range, before or after conversion to UTC.
    (("history", "--since", "99999999999d"), f"'99999999999d' reaches back before year 1: {RANGE}"),
    (("history", "--since", "800000d"), "reaches back before year 1"),
    (("changes", "--since", "1e300s"), "'1e300s' is not a time"),
    (("history", "--since", "0000-01-01"), "year 0 is out of range"),
    (("history", "--since", "0000-01-01T00:00:00"), f"is out of range: {RANGE}"),
    (("history", "--until", "10000-01-01"), f"'10000-01-01' is out of range: {RANGE}"),
    (("balances", "--at", "10000-01-01T00:00:00Z"), "is out of range"),
    (("diff", "--from", "2026-01-01", "--to", "9999-12-31T23:59:59-01:00"), f"out of range in UTC: {RANGE}"),
    (("diff", "--from", "0001-01-01T00:00:00+01:00"), "out of range in UTC"),
    (("balances", "--at", "9999-12-31T23:00Z", "--tz", "+14:00"), "cannot be shown in --tz UTC+14:00"),
    (("history", "--since", "0001-01-01", "--tz", "America/New_York"), "cannot be shown in --tz America/New_York"),
    (("series", "--asset", "USDT", "--since", "9999-12-31T22:30", "--until", "9999-12-31T23:59"),
     "buckets of this range reach past 9999-12-31"),
    (("series", "--asset", "USDT", "--every", "day", "--since", "9999-12-30", "--until", "9999-12-31T23:00",
      "--tz", "-05:00"), "buckets of this range reach past 9999-12-31"),
    # A database URL with a bad port.
    (("history", "--database-url", "postgresql://u@h:99999/db"), "invalid port '99999': use 1 to 65535"),
    (("history", "--database-url", "postgresql://u@h:abc/db"), "invalid port 'abc'"),
    (("history", "--database-url", "postgres://u:p@h:0/db"), "invalid port '0'"),
]


@pytest.mark.parametrize(("args", "message"), READ_CASES, ids=[" ".join(a) for a, _ in READ_CASES])
def test_read_commands_refuse_bad_input_in_one_line(sqlite_url, args, message):
    database = () if "--database-url" in args else ("--database-url", sqlite_url)
    assert_one_line_usage_error(check(*args, *database), message)


NUMBER_CASES = [
    (("demo", "--seconds", "inf"), "'inf' is outside the allowed range, 1 to 86400 s"),
    (("demo", "--seconds", "nan"), "'nan' is outside the allowed range"),
    (("demo", "--seconds", "1e300"), "'1e300' is outside the allowed range"),
    (("demo", "--seconds", "-1"), "'-1' is outside the allowed range"),
    (("demo", "--interval", "inf"), "0.2 to 3600 s"),
    (("demo", "--interval", "0"), "0.2 to 3600 s"),
    (("simulate", "--port", "-1"), "'-1' is outside the allowed range, 0 to 65535"),
    (("simulate", "--port", "70000"), "'70000' is outside the allowed range, 0 to 65535"),
    (("simulate", "--port", "abc"), "'abc' is not an integer"),
    (("simulate", "--clock-offset-ms", "1e300"), "'1e300' is not an integer"),
    (("simulate", "--clock-offset-ms", "99999999999999999999"), "-86400000 to 86400000 ms"),
    (("poll", "--timeout", "inf"), "RECORDER_TIMEOUT (--timeout) must be a finite number from 0.1 to 600 s"),
    (("poll", "--timeout", "nan"), "RECORDER_TIMEOUT (--timeout) must be a finite number"),
    (("poll", "--timeout", "1e300"), "RECORDER_TIMEOUT (--timeout) must be at most 600 s"),
    (("poll", "--timeout", "-1"), "RECORDER_TIMEOUT (--timeout) must be at least 0.1 s"),
    (("poll", "--recv-window", "-1"), "RECORDER_RECV_WINDOW (--recv-window) must be at least 1 ms"),
    (("poll", "--recv-window", "1e300"), "'1e300' is not a valid integer"),
    (("poll", "--weight-limit", "99999999999999999999"), "RECORDER_WEIGHT_LIMIT (--weight-limit) must be at most 1000000"),
    (("poll", "--weight-limit", "-1"), "RECORDER_WEIGHT_LIMIT (--weight-limit) must be at least 20"),
    (("run", "--interval", "inf"), "RECORDER_INTERVAL (--interval) must be a finite number from 0.2 to 86400 s"),
    (("run", "--interval", "nan"), "RECORDER_INTERVAL (--interval) must be a finite number"),
    (("run", "--interval", "1e300"), "RECORDER_INTERVAL (--interval) must be at most 86400 s"),
    (("run", "--interval", "-1"), "RECORDER_INTERVAL (--interval) must be at least 0.2 s"),
    (("poll", "--interval", "inf"), "RECORDER_INTERVAL (--interval) must be a finite number from 0.2 to 86400 s"),
    *(((command, "--tolerance", value), f"{value!r} is outside the allowed range, 0.001 to 31622400 s")
      for command in ("gaps", "balances") for value in ("nan", "inf", "1e300", "-1", "0")),
]


@pytest.mark.parametrize(("args", "message"), NUMBER_CASES, ids=[" ".join(a) for a, _ in NUMBER_CASES])
def test_numbers_must_be_finite_and_in_range(sqlite_url, tmp_path, args, message):
    # Credentials and a database are given so that only the number can be wrong; nothing is sent.
    extra = ("--api-key", "k", "--api-secret", "s", "--base-url", "http://127.0.0.1:9", "--database-url", sqlite_url,
             "--spool-dir", str(tmp_path / "spool")) if args[0] in ("poll", "run") else ()
    assert_one_line_usage_error(check(*args, *extra), message)


ENV_CASES = [
    ({"RECORDER_INTERVAL": "inf"}, ("run",), "RECORDER_INTERVAL (--interval) must be a finite number"),
    # Read commands ignore RECORDER_INTERVAL (the writer's interval is stored in the database);
    # the commands that poll refuse a bad one.
    ({"RECORDER_INTERVAL": "nan"}, ("poll",), "RECORDER_INTERVAL (--interval) must be a finite number"),
    ({"RECORDER_INTERVAL": "1e300"}, ("run",), "RECORDER_INTERVAL (--interval) must be at most 86400 s"),
    ({"RECORDER_TIMEOUT": "inf"}, ("poll",), "RECORDER_TIMEOUT (--timeout) must be a finite number"),
    ({"RECORDER_RECV_WINDOW": "1e300"}, ("poll",), "RECORDER_RECV_WINDOW (--recv-window) must be an integer, not '1e300'"),
    ({"RECORDER_WEIGHT_LIMIT": "-1"}, ("run",), "RECORDER_WEIGHT_LIMIT (--weight-limit) must be at least 20"),
    ({"RECORDER_DATABASE_URL": "postgresql://u@h:99999/db"}, ("history",), "invalid port '99999'"),
    ({"RECORDER_DATABASE_URL": "postgresql://u@h:abc/db"}, ("poll",), "invalid port 'abc'"),
]


@pytest.mark.parametrize(("env", "args", "message"), ENV_CASES, ids=[str(e) for e, _, _ in ENV_CASES])
def test_environment_variables_with_bad_values_fail_the_same_way(sqlite_url, tmp_path, env, args, message):
    settings = {"BINANCE_API_KEY": "k", "BINANCE_API_SECRET": "s", "BINANCE_BASE_URL": "http://127.0.0.1:9",
                "RECORDER_DATABASE_URL": sqlite_url, "RECORDER_SPOOL_DIR": str(tmp_path / "spool")}
    assert_one_line_usage_error(check(*args, env={**settings, **env}), message)


def test_simulate_on_a_busy_port_fails_in_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = recorder("simulate", "--port", str(port))
    assert_one_line_usage_error(result, f"cannot listen on 127.0.0.1:{port}: Address already in use")


def single_value_options() -> list[tuple[str, click.Option]]:
    """Every option of every command that takes one value (not a flag, not repeatable)."""
    found = [("", option) for option in cli.params if isinstance(option, click.Option)]
    for name, command in sorted(cli.commands.items()):
        found += [(name, option) for option in command.params if isinstance(option, click.Option)]
    return [(name, option) for name, option in found if not (option.is_flag or option.multiple or option.count)]


@pytest.mark.parametrize(
    ("name", "option"), single_value_options(), ids=[f"{n or 'recorder'} {o.opts[0]}" for n, o in single_value_options()]
)
def test_every_single_value_option_given_twice_is_refused(name, option):
    command = cli.commands[name] if name else cli
    flag = option.opts[-1]
    args = [flag, "first", flag, "second"] + ([] if name else ["history"])
    with pytest.raises(click.UsageError, match=f"'{flag}' was given more than once; it takes one value"):
        command.make_context(f"recorder {name}".strip(), args)


def test_repeatable_options_stay_repeatable():
    context = cli.commands["history"].make_context("recorder history", ["--asset", "USDT", "--asset", "BTC"])
    assert context.params["assets"] == ("USDT", "BTC")


def test_an_option_given_twice_is_one_line_through_the_real_cli(sqlite_url):
    for args in (("history", "--since", "1h", "--since", "2h"), ("diff", "--from", "1h", "--to", "now", "--to", "1h"),
                 ("--log-level", "INFO", "--log-level", "DEBUG", "history"),
                 ("history", "--account", "x", "--account", "y")):
        assert_one_line_usage_error(recorder(*args, "--database-url", sqlite_url) if args[0] != "--log-level"
                                    else recorder(*args), "was given more than once")


def test_every_help_renders_cleanly():
    """--help of every command: no %% left from %-style strings, no None default, no raw markup."""
    commands = [("recorder", cli), *((f"recorder {n}", c) for n, c in sorted(cli.commands.items()))]
    for prog, command in commands:
        result = CliRunner().invoke(command, ["--help"], prog_name=prog, terminal_width=100)
        assert result.exit_code == 0, (prog, result.output)
        text = result.output
        assert text.startswith(f"Usage: {prog} "), prog
        for bad in ("%%", "None", "\\b", "\b", "[default: ]", "UNSET", "Sentinel"):
            assert bad not in text, (prog, bad, text)
        for option in command.params:
            if isinstance(option, click.Option) and not option.hidden:
                assert option.help, f"{prog} {option.opts[0]} has no help"
    weight = CliRunner().invoke(cli.commands["poll"], ["--help"], terminal_width=100).output
    assert "under 90% of" in " ".join(weight.split())


@pytest.mark.parametrize("args", [("history", "--since", "last tuesday"), ("history", "--format", "csv"),
                                  ("balances", "--at", "2026-01-02", "--format", "json"), ("status",), ("history", "--help"), ("nosuch",)])
def test_a_command_run_in_process_reports_what_the_installed_one_does(sqlite_url, args):
    """The harness the in-process cases rely on: exit code, stdout and stderr equal the subprocess's, byte for byte."""
    env = {"RECORDER_DATABASE_URL": sqlite_url, "RECORDER_SPOOL_DIR": "/nonexistent/spool"}
    expected = recorder(*args, env=env)
    assert expected.returncode != 0 or expected.stdout  # a case that shows something
    found = check(*args, env=env)
    assert (found.returncode, found.stdout, found.stderr) == (expected.returncode, expected.stdout, expected.stderr)
