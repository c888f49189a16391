"""`recorder ARGS` run inside the test process: the same main(), exit code, stdout and stderr.

A subprocess start costs about 1 s of CPU on a busy 2-core machine (the interpreter, SQLAlchemy,
click); a case that only checks what one command prints and how it exits pays that for nothing.
`run_recorder` calls the console script's own `recorder.cli.main()` with the arguments, the
environment (replacing os.environ for the call) and the working folder the subprocess would
have had, and returns the same `subprocess.CompletedProcess` text: stdout and stderr decoded as
`text=True` would (universal newlines), the exit code `sys.exit` gave (0 when main returned).

What main() changes in the process is put back after each call, so no test sees another's:
os.environ, sys.argv, the working folder, the root logger's handlers and level and the levels
configure_logging() sets, the SIGTERM/SIGINT/SIGALRM handlers (and no SIGALRM timer is left
running), and click's cached help options. Commands that start a
service (`run`, `demo`, `simulate`) or whose subject is the process itself (signals, start-up
imports, the entry point) stay subprocesses; every command family keeps subprocess cases
elsewhere, so the installed `recorder` and `python -m recorder` stay covered.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

# Loggers whose level recorder.cli.configure_logging() sets.
_LOGGERS = ("recorder", "urllib3", "requests", "alembic", "sqlalchemy")
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)
# Commands that start a service: a test runs them as subprocesses it can time out and signal.
SERVICE_COMMANDS = ("run", "demo", "simulate")
# Commands that only read the database (and write files or stdout): no lock, no exchange, no
# signal of their own but export's, which run_recorder puts back. Helpers run these in process.
# Not the one-shot writers (poll, sync-ledger, import, backfill): the spool's lock stays held by
# a live pid after an in-process poll, so the test's next poll (a subprocess) is refused.
READ_COMMANDS = frozenset({"history", "balances", "diff", "changes", "gaps", "series", "ledger", "status", "export",
                           "statement", "report", "reconcile", "accounts"})


def command_of(args: tuple[str, ...] | list[str]) -> str | None:
    """The command name in `recorder ARGS` (after the group's own options), or None."""
    rest = list(args)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if option == "--log-level" and rest:
            rest.pop(0)
    return rest[0] if rest else None


def _text(stream: io.TextIOWrapper) -> str:
    """What `subprocess.run(..., text=True)` makes of the bytes written: UTF-8, universal newlines."""
    stream.flush()
    return io.TextIOWrapper(io.BytesIO(stream.buffer.getvalue()), encoding="utf-8").read()  # type: ignore[attr-defined]


def run_recorder(
    *args: str, env: Mapping[str, str] | None = None, cwd: str | Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`recorder ARGS` in this process, as `subprocess.run([recorder, *ARGS], env=env, cwd=cwd,
    capture_output=True, text=True)` would report it; env None keeps this process's environment."""
    from recorder.cli import cli, main

    command = command_of(args)
    assert command not in SERVICE_COMMANDS or "--help" in args, f"`recorder {command}` starts a service: run it as a subprocess"
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    saved_environ = dict(os.environ)
    saved_argv = sys.argv
    saved_cwd = os.getcwd()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    saved_signals = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    saved_alarm = signal.getitimer(signal.ITIMER_REAL)
    # click caches each command's help option with the names of the first context that asked for
    # it: a test that called `cli.commands[name].make_context(...)` alone leaves `--help` without
    # the group's `-h`. A fresh process starts with no cached option; so does this call.
    commands = [cli, *cli.commands.values()]
    saved_help = [getattr(command, "_help_option", None) for command in commands]
    for command in commands:
        command._help_option = None
    code: int = 0
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        sys.argv = ["recorder", *args]
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exit_:
                if exit_.code is None or isinstance(exit_.code, int):
                    code = exit_.code or 0
                else:  # sys.exit("text"): the interpreter prints it and exits 1
                    print(exit_.code, file=sys.stderr)
                    code = 1
    finally:
        os.chdir(saved_cwd)
        if env is not None:
            os.environ.clear()
            os.environ.update(saved_environ)
        sys.argv = saved_argv
        # basicConfig(force=True) removed (and closed) the handlers it found: put them back.
        for handler in root.handlers[:]:
            if handler not in saved_handlers:
                root.removeHandler(handler)
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        for command, help_option in zip(commands, saved_help):
            command._help_option = help_option
        # The exchange client's request deadline is a SIGALRM timer: never leave one running once
        # the handler is back to the default, which would end the test process.
        if saved_alarm == (0.0, 0.0):
            signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in saved_signals.items():
            if signal.getsignal(signum) is not handler and handler is not None:
                signal.signal(signum, handler)
    return subprocess.CompletedProcess(["recorder", *args], code, _text(out), _text(err))
