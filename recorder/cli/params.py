"""Command-line parsing that refuses instead of guessing: one value per option, bounded numbers.

click keeps the last of `--since a --since b` without a word, and its FLOAT type takes
`inf`, `nan` and `1e300`; a user who typed either meant something we cannot know, so both
are usage errors (exit 2) naming the option.
"""

from __future__ import annotations

import math
from typing import Any

import click


class OneValueCommand(click.Command):
    """A command whose options that take one value refuse to be given twice."""

    def make_parser(self, ctx: click.Context) -> Any:
        """click's parser, checked after parsing for options that appeared more than once."""
        parser = super().make_parser(ctx)
        parse = parser.parse_args

        def parse_once(args: list[str]) -> Any:
            opts, rest, order = parse(args=args)
            if not ctx.resilient_parsing:  # shell completion parses half-typed lines
                refuse_repeated(ctx, order)
            return opts, rest, order

        parser.parse_args = parse_once
        return parser


class OneValueGroup(OneValueCommand, click.Group):
    """The `recorder` group: its own options and every command's take one value each."""

    command_class = OneValueCommand


def refuse_repeated(ctx: click.Context, order: list[click.Parameter]) -> None:
    """UsageError for a single-value option that appears more than once in `order`."""
    seen: set[str | None] = set()
    for param in order:
        if not isinstance(param, click.Option) or param.multiple or param.count or param.is_flag:
            continue
        if param.name in seen:
            raise click.UsageError(
                f"{param.get_error_hint(ctx)} was given more than once; it takes one value", ctx
            )
        seen.add(param.name)


class Bounded(click.ParamType):
    """A finite int or float within [minimum, maximum]; `unit` names what it counts in errors."""

    def __init__(self, kind: type, minimum: float, maximum: float, unit: str = "") -> None:
        self.kind = kind
        self.minimum = minimum
        self.maximum = maximum
        self.unit = unit
        self.name = "INTEGER" if kind is int else "NUMBER"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse and check one value; fail with the allowed range."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = value
        else:
            text = str(value).strip()
            try:
                number = self.kind(text)
            except ValueError:
                self.fail(f"{value!r} is not {'an integer' if self.kind is int else 'a number'}", param, ctx)
        # NaN fails every comparison, so the range test alone would let it through.
        if (isinstance(number, float) and not math.isfinite(number)) or not self.minimum <= number <= self.maximum:
            self.fail(f"{value!r} is outside the allowed range, {self.describe()}", param, ctx)
        return self.kind(number)

    def describe(self) -> str:
        """The allowed range, as help and errors show it."""
        unit = f" {self.unit}" if self.unit else ""
        return f"{plain(self.minimum)} to {plain(self.maximum)}{unit}"


def plain(number: float) -> str:
    """A bound as people write it: 86400, 0.2, never 8.64e+04."""
    return str(int(number)) if float(number).is_integer() else repr(float(number))
