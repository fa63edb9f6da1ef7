"""Output formats shared by the CLI commands: table, json, yaml."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

FORMATS = click.Choice(["table", "json", "yaml"])


def output_option(default: str = "table") -> Callable[[F], F]:
    """The -o/--output option."""
    return click.option(
        "-o",
        "--output",
        "fmt",
        type=FORMATS,
        default=default,
        show_default=True,
        help="Output format.",
    )


def emit(data: Any, fmt: str) -> bool:
    """Print data as json or yaml; False when the caller should print a table."""
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=False))
        return True
    if fmt == "yaml":
        import yaml  # only here: it takes longer to import than a whole request

        click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
        return True
    return False


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    """Print aligned columns (kubectl style)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
