"""`cilia probe`: can one pod reach another (or every pair, with --matrix)?"""

from __future__ import annotations

import sys

import click

from cilia.cli.api import call
from cilia.cli.output import emit, output_option


@click.command()
@click.argument("source", required=False)
@click.argument("destination", required=False)
@click.option("--port", type=click.IntRange(1, 65535), default=80, show_default=True)
@click.option(
    "--protocol",
    type=click.Choice(["TCP", "UDP"], case_sensitive=False),
    default="TCP",
    show_default=True,
)
@click.option("--timeout", type=float, default=1.0, show_default=True, help="Seconds per probe.")
@click.option(
    "--matrix", is_flag=True, help="Probe every pair of pods (of every node of a cluster)."
)
@click.option("--ports", default="80", show_default=True, help="Matrix ports, comma separated.")
@click.option("--protocols", default="TCP", show_default=True, help="Matrix protocols.")
@click.option("--namespaces", default="", help="Matrix: only pods of these namespaces.")
@click.option(
    "--family",
    type=click.Choice(["4", "6", "both"]),
    help="Address family to probe (default: both when the agent has IPv6 on, else 4).",
)
@output_option()
def probe(
    source: str | None,
    destination: str | None,
    port: int,
    protocol: str,
    timeout: float,
    matrix: bool,
    ports: str,
    protocols: str,
    namespaces: str,
    family: str | None,
    fmt: str,
) -> None:
    """Check whether SOURCE can reach DESTINATION (exit 0 allowed, 1 denied).

    With --matrix, probe every ordered pair of pods and print a truth table
    ('.' allowed, 'X' denied); in a cluster on this machine every node's agent
    probes from its pods and the tables are merged. With both families each pair
    is probed over IPv4 and IPv6, and counts as allowed only when both are.
    """
    if matrix:
        _matrix(ports, protocols, namespaces, timeout, family, fmt)
        return
    if not source or not destination:
        raise click.UsageError("give SOURCE and DESTINATION pods (NS/NAME), or --matrix")
    res = call(
        "POST",
        "/probe",
        {
            "source": source,
            "destination": destination,
            "port": port,
            "protocol": protocol.upper(),
            "timeout": timeout,
            "family": family,
        },
    )
    if not emit(res, fmt):
        per_family = res.get("families") or [res]
        if len(per_family) == 1:
            click.echo(res["result"])
        for r in per_family if len(per_family) > 1 else ():
            click.echo(f"IPv{r['family']} {r.get('address', '-')}: {r['result']}")
    sys.exit(0 if res["result"] == "allowed" else 1)


def _matrix(
    ports: str, protocols: str, namespaces: str, timeout: float, family: str | None, fmt: str
) -> None:
    try:
        port_list = [int(p) for p in ports.split(",") if p]
    except ValueError:
        raise click.BadParameter(
            f"{ports!r} is not a comma-separated list of ports", param_hint="--ports"
        ) from None
    proto_list = [p.strip().upper() for p in protocols.split(",") if p]
    body = {
        "ports": port_list,
        "protocols": proto_list,
        "namespaces": [n for n in namespaces.split(",") if n],
        "timeout": timeout,
        "family": family,
    }
    from cilia.cli.matrix import show_matrix

    show_matrix(body, fmt)
