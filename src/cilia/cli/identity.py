"""`cilia identity list|get`."""

from __future__ import annotations

import click

from cilia.cli.api import call
from cilia.cli.output import emit, output_option, table


@click.group()
def identity() -> None:
    """Inspect security identities."""


@identity.command("list")
@output_option()
def identity_list(fmt: str) -> None:
    """List identities."""
    ids = call("GET", "/identity")
    if emit(ids, fmt):
        return
    table([(i["id"], ", ".join(i["labels"])) for i in ids], ["ID", "LABELS"])


@identity.command("get")
@click.argument("ident", type=int)
@output_option()
def identity_get(ident: int, fmt: str) -> None:
    """Show one identity."""
    data = call("GET", f"/identity/{ident}")
    if not emit(data, fmt):
        table([(data["id"], ", ".join(data["labels"]))], ["ID", "LABELS"])
