"""`cilia service`: the load-balanced services of the node (the reference's command)."""

from __future__ import annotations

from typing import Any

import click

from cilia.cli.api import call
from cilia.cli.output import emit, output_option, table


@click.group()
def service() -> None:
    """Services as the datapath load-balances them."""


def _rows(items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for s in items:
        backends = s["backends"] or ["(none: dropped, 158)"]
        for i, backend in enumerate(backends):
            first = i == 0
            rows.append(
                (
                    s["id"] if first else "",
                    s["frontend"] if first else "",
                    s["protocol"] if first else "",
                    s["type"] if first else "",
                    f"{s['service']}{':' + s['port-name'] if s['port-name'] else ''}"
                    if first
                    else "",
                    f"{i + 1} => {backend}" if s["backends"] else backend,
                )
            )
    return rows


@service.command("list")
@output_option()
def service_list(fmt: str) -> None:
    """Every frontend (ClusterIP, node address:nodePort) with its id and backends."""
    items = call("GET", "/service")
    if emit(items, fmt):
        return
    table(_rows(items), ["ID", "FRONTEND", "PROTOCOL", "TYPE", "SERVICE", "BACKENDS"])


@service.command("get")
@click.argument("ident", type=int)
@output_option()
def service_get(ident: int, fmt: str) -> None:
    """One frontend by id."""
    item = call("GET", f"/service/{ident}")
    if emit(item, fmt):
        return
    table(_rows([item]), ["ID", "FRONTEND", "PROTOCOL", "TYPE", "SERVICE", "BACKENDS"])
