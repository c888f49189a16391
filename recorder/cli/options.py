"""Options shared by several commands; each also reads its environment variable via Settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

F = Callable[..., Any]


def database_options(function: F) -> F:
    """--database-url and --account, shared by every command that opens the database."""
    function = click.option(
        "--account",
        help="Our label for the account [env RECORDER_ACCOUNT; default: default].",
    )(function)
    function = click.option(
        "--database-url",
        help="SQLAlchemy URL, e.g. sqlite:///recorder.db or postgresql://user@host/db "
        "[env RECORDER_DATABASE_URL; default: sqlite:///recorder.db].",
    )(function)
    return function
