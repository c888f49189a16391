"""Start-up: read commands and help load none of the write side; --version; help lists every command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from recorder.cli import cli, load_all_commands
from tests.e2e.test_read_only import recorded

load_all_commands()  # commands are registered lazily; these tests walk them all

RECORDER = str(Path(sys.executable).with_name("recorder"))
WRITE_SIDE = ("requests", "urllib3", "apscheduler", "alembic", "cryptography")
# Runs the real entry point in a fresh interpreter, then reports which write-side
# packages got imported, whatever the command's exit code.
PROBE = """
import json, sys
from recorder.cli import main
sys.argv = ["recorder", *sys.argv[1:]]
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
print(json.dumps([code, sorted({m.split('.')[0] for m in sys.modules} & set(%r))]), file=sys.stderr)
""" % (WRITE_SIDE,)


def imported_write_side(*args: str) -> list[str]:
    """The write-side packages a successful `recorder ARGS` imported."""
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    code, modules = json.loads(result.stderr.strip().splitlines()[-1])
    assert code in (0, None), result.stderr
    return modules


@pytest.fixture
def migrated(tmp_path) -> str:
    """A database at head with two polls of account 'main'."""
    return recorded(f"sqlite:///{tmp_path / 'recorder.db'}")


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["history"],
        ["balances"],
        ["diff", "--from", "1h"],
        ["changes"],
        ["gaps"],
        ["series", "--asset", "USDT"],
        ["ledger"],
        ["ledger", "--coverage", "--format", "json"],
    ],
)
def test_read_commands_import_no_write_side_library(migrated, args):
    database = [] if args[0].startswith("--") else ["--database-url", migrated, "--account", "main"]
    assert imported_write_side(*args, *database) == []


def test_write_side_probe_sees_what_migrate_imports(tmp_path):
    """Guards the probe above: a command that needs Alembic (migrating an empty database) is seen importing it."""
    assert "alembic" in imported_write_side("migrate", "--database-url", f"sqlite:///{tmp_path / 'empty.db'}")


def test_migrate_on_a_current_schema_imports_no_alembic(migrated):
    """The schema is checked with plain SQL first: a service starting on a current database never loads Alembic."""
    assert "alembic" not in imported_write_side("migrate", "--database-url", migrated)


def test_run_loads_no_read_command_module():
    """Commands are imported on first use: `recorder run` (looked up as the entry point does) loads
    only its own module, not the read commands and what they import."""
    probe = (
        "import sys, click\n"
        "from recorder.cli import cli\n"
        "assert cli.get_command(click.Context(cli), 'run').name == 'run'\n"
        "print(sorted(m for m in sys.modules if m.startswith('recorder.cli.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "['recorder.cli.options', 'recorder.cli.params', 'recorder.cli.recording']"


def test_every_command_is_mapped_to_its_module():
    """A command added to a module but not to COMMAND_MODULES would be missing from --help until used."""
    from recorder.cli import COMMAND_MODULES

    assert set(cli.commands) == set(COMMAND_MODULES)
    for name, command in cli.commands.items():
        assert command.callback.__module__ == f"recorder.cli.{COMMAND_MODULES[name]}", name


def test_version_prints_the_package_version():
    result = subprocess.run([RECORDER, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout == f"recorder {version('recorder')}\n"


def test_help_lists_every_command_with_its_short_help():
    result = subprocess.run([RECORDER, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    listed = {}
    for line in result.stdout.split("Commands:\n", 1)[1].splitlines():
        name, _, summary = line.strip().partition(" ")
        listed[name] = summary.strip()
    assert set(listed) == set(cli.commands) >= {"history", "balances", "diff", "changes", "gaps", "series",
                                                 "migrate", "poll", "run", "demo", "simulate"}
    for name, command in cli.commands.items():
        shown = listed[name].removesuffix("...")
        assert shown, name
        assert " ".join(command.help.split()).startswith(shown), name


def test_version_in_a_checkout_never_installed_comes_from_pyproject():
    """Without site-packages (-S) no distribution metadata is found: pyproject.toml answers."""
    root = Path(__file__).resolve().parents[2]
    declared = re.search(r'^version = "([^"]+)"', (root / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    result = subprocess.run(
        [sys.executable, "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
         "import importlib.metadata as m; from recorder import package_version; "
         "print(package_version(), [d.name for d in m.distributions() if d.name == 'recorder'])", str(root)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(" ", 1) == [declared, "[]\n"]
