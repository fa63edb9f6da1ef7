"""`cilia endpoint list|get|regenerate|log|labels|config`."""

from __future__ import annotations

import time

import click

from cilia.cli.api import call
from cilia.cli.options import endpoint_config
from cilia.cli.output import emit, output_option, table


@click.group()
def endpoint() -> None:
    """Inspect endpoints."""


@endpoint.command("list")
@output_option()
def endpoint_list(fmt: str) -> None:
    """List endpoints."""
    eps = call("GET", "/endpoint")
    if emit(eps, fmt):
        return
    dual_stack = any(e.get("ipv6") for e in eps)
    table(
        [
            (
                e["id"],
                "Enabled" if e["ingress-enforcement"] else "Disabled",
                "Enabled" if e["egress-enforcement"] else "Disabled",
                e["identity"],
                e["pod"],
                e["ipv4"],
                *([e.get("ipv6") or "-"] if dual_stack else []),
                e["state"],
            )
            for e in eps
        ],
        [
            "ENDPOINT",
            "INGRESS-ENFORCEMENT",
            "EGRESS-ENFORCEMENT",
            "IDENTITY",
            "POD",
            "IPV4",
            *(["IPV6"] if dual_stack else []),
            "STATUS",
        ],
    )


@endpoint.command("get")
@click.argument("key")
@output_option("json")
def endpoint_get(key: str, fmt: str) -> None:
    """Show one endpoint (by id, NS/POD, IPv4 or IPv6)."""
    emit(call("GET", f"/endpoint/{key}"), "json" if fmt == "table" else fmt)


@endpoint.command("regenerate")
@click.argument("key")
def endpoint_regenerate(key: str) -> None:
    """Re-attach and reprogram one endpoint (by id, NS/POD, IPv4 or IPv6)."""
    ep = call("POST", f"/endpoint/{key}/regenerate")
    click.echo(f"Endpoint {ep['id']} regenerated (policy revision {ep['policy-revision']})")


@endpoint.command("log")
@click.argument("key")
@output_option()
def endpoint_log(key: str, fmt: str) -> None:
    """Recent state changes of an endpoint."""
    entries = call("GET", f"/endpoint/{key}/log")
    if emit(entries, fmt):
        return
    table(
        [
            (time.strftime("%H:%M:%S", time.localtime(e["time"])), e["state"], e["message"])
            for e in entries
        ],
        ["TIME", "STATE", "MESSAGE"],
    )


@click.command("labels")
@click.argument("key")
@click.option("-a", "--add", multiple=True, help="Label to add: [source:]key=value.")
@click.option("-d", "--delete", multiple=True, help="Label key to delete.")
@output_option()
def labels(key: str, add: tuple[str, ...], delete: tuple[str, ...], fmt: str) -> None:
    """Change an endpoint's labels (by id, NS/POD, IPv4 or IPv6); releases held-back labels.

    The endpoint moves to the identity of its new labels without a restart.
    """
    ep = call("PUT", f"/endpoint/{key}/labels", {"add": list(add), "delete": list(delete)})
    if not emit(ep, fmt):
        click.echo(f"Endpoint {ep['id']}: identity {ep['identity']}")
        for label in ep["labels"]:
            click.echo(f"  {label}")


endpoint.add_command(labels)
endpoint.add_command(endpoint_config)
