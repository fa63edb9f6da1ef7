"""`cilia policy trace` and `cilia endpoint labels` (registered by cilia.cli.main)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from cilia.cli.output import emit, output_option

Call = Callable[..., Any]


def make_trace_command(call: Call) -> click.Command:
    """The `policy trace` command, using the CLI's API call helper."""

    @click.command("trace")
    @click.option("-s", "--src", "src_labels", multiple=True, help="Source label (repeatable).")
    @click.option("-d", "--dst", "dst_labels", multiple=True, help="Destination label.")
    @click.option("--src-identity", type=int, help="Source security identity.")
    @click.option("--dst-identity", type=int, help="Destination security identity.")
    @click.option("--src-endpoint", help="Source endpoint (id, NS/POD or IPv4).")
    @click.option("--dst-endpoint", help="Destination endpoint (id, NS/POD or IPv4).")
    @click.option("--src-k8s-pod", "src_pod", help="Source pod NS:NAME.")
    @click.option("--dst-k8s-pod", "dst_pod", help="Destination pod NS:NAME.")
    @click.option("--dport", help="Destination port PORT[/PROTO] (TCP by default); none: L3.")
    @click.option("-v", "--verbose", is_flag=True, help="Also list rules that select nothing.")
    @output_option()
    def trace(fmt: str, **options: Any) -> None:
        """Explain whether SOURCE may reach DESTINATION, ending with the final verdict.

        Exit code 0 when ALLOWED, 1 when DENIED.
        """
        body = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}
        res = call("POST", "/policy/resolve", body)
        if not emit(res, fmt):
            click.echo(res["trace"])
        sys.exit(0 if res["verdict"] == "ALLOWED" else 1)

    return trace


def make_labels_command(call: Call) -> click.Command:
    """The `endpoint labels` command."""

    @click.command("labels")
    @click.argument("key")
    @click.option("-a", "--add", multiple=True, help="Label to add: [source:]key=value.")
    @click.option("-d", "--delete", multiple=True, help="Label key to delete.")
    @output_option()
    def labels(key: str, add: tuple[str, ...], delete: tuple[str, ...], fmt: str) -> None:
        """Change an endpoint's labels (by id, NS/POD or IPv4); releases held-back labels.

        The endpoint moves to the identity of its new labels without a restart.
        """
        ep = call("PUT", f"/endpoint/{key}/labels", {"add": list(add), "delete": list(delete)})
        if not emit(ep, fmt):
            click.echo(f"Endpoint {ep['id']}: identity {ep['identity']}")
            for label in ep["labels"]:
                click.echo(f"  {label}")

    return labels
