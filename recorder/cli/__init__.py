"""The `recorder` command: parse, one library call, render.

Every RecorderError becomes one line on stderr and exit code 1; usage and configuration
errors (bad option values, malformed or out-of-range times, an option given twice,
ConfigError) are one line too and exit 2. Logging is configured here, once.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from recorder.cli.params import OneValueGroup
from recorder.errors import ConfigError, RecorderError

log = logging.getLogger("recorder")

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _print_version(context: click.Context, _parameter: click.Parameter, value: bool) -> None:
    if not value or context.resilient_parsing:
        return
    from recorder import package_version

    click.echo(f"recorder {package_version()}")
    context.exit()


# Which module defines each command. A module is imported when one of its commands is first
# looked up, so `recorder run` loads none of the read commands (and the libraries only they
# use); `recorder --help` looks every command up and so still lists them all.
COMMAND_MODULES = {
    "migrate": "recording", "poll": "recording", "run": "recording", "demo": "recording", "simulate": "recording",
    "history": "querying", "balances": "querying", "diff": "querying", "changes": "querying", "gaps": "querying",
    "series": "querying",
    "accounts": "accounts",
    "status": "status",
    "export": "exporting",
    "statement": "reporting", "report": "reporting",
    "reconcile": "reconciling",
    "backfill": "backfilling", "import": "backfilling",
    "ledger": "ledgering", "sync-ledger": "ledgering",
}


class LazyGroup(OneValueGroup):
    """The `recorder` group, importing a command's module on the command's first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            # The module registers its commands on `cli` as it is imported.
            importlib.import_module(f"recorder.cli.{module}")
        return super().get_command(ctx, cmd_name)


def load_all_commands() -> None:
    """Import every command module, so that `cli.commands` holds them all (for tests and tools)."""
    for module in sorted(set(COMMAND_MODULES.values())):
        importlib.import_module(f"recorder.cli.{module}")


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print the version and exit.",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
    help="Verbosity of the log on stderr.",
)
def cli(log_level: str) -> None:
    """Record the exact balance history of Binance USD-M futures accounts into SQL."""
    configure_logging(log_level.upper())


def configure_logging(level: str) -> None:
    """Log to stderr, one line per event; HTTP libraries stay at WARNING."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # urllib3 logs every request URL at DEBUG, and a signed URL carries the signature.
    for noisy in ("urllib3", "requests", "alembic", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(prog_name="recorder", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        # One line, like every other error: click's usage block and "Try --help" would
        # bury the reason in a script's log.
        command = exc.ctx.command_path if exc.ctx is not None else "recorder"
        click.echo(f"error: {exc.format_message()} (see '{command} --help')", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        # A configuration problem is a usage error: exit 2, like a malformed option.
        click.echo(f"error: ConfigError: {exc}", err=True)
        sys.exit(2)
    except RecorderError as exc:
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    except OverflowError as exc:
        # A date or number past what Python can represent (a time beyond 9999-12-31 after
        # a conversion): the input is out of range, which is a usage error, not a crash.
        click.echo(f"error: a time or number is outside the representable range ({exc})", err=True)
        sys.exit(2)


