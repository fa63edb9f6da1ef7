"""`cilia bpf`: the datapath's maps (policy, metrics, ct, tunnel, ipcache, lb)."""

from __future__ import annotations

from typing import Any

import click

from cilia.cli.api import call, resolve_endpoint
from cilia.cli.output import emit, output_option, table


@click.group()
def bpf() -> None:
    """Inspect the datapath's maps."""


@bpf.group("policy")
def bpf_policy() -> None:
    """The policy map: what the kernel enforces per endpoint."""


@bpf_policy.command("get")
@click.argument("endpoint_id", required=False, type=int)
@output_option()
def bpf_policy_get(endpoint_id: int | None, fmt: str) -> None:
    """Entries of the policy map (all endpoints, or one). Protocol 255 rows are L4 markers."""
    params = {"endpoint": endpoint_id} if endpoint_id is not None else {}
    rows = call("GET", "/bpf/policy", **params)
    if emit(rows, fmt):
        return
    names = {0: "ANY", 1: "ICMP", 6: "TCP", 17: "UDP", 255: "(L4 marker)"}
    table(
        [
            (
                r["endpoint"],
                r["direction"],
                r["identity"] or "any",
                r["port"] or "all",
                names.get(r["protocol"], r["protocol"]),
            )
            for r in rows
        ],
        ["ENDPOINT", "DIRECTION", "IDENTITY", "PORT", "PROTOCOL"],
    )


@bpf.group("metrics")
def bpf_metrics() -> None:
    """Datapath counters."""


@bpf_metrics.command("list")
@output_option()
def bpf_metrics_list(fmt: str) -> None:
    """Forward and drop counters by reason and direction (from per-CPU maps)."""
    rows = call("GET", "/bpf/metrics")
    if emit(rows, fmt):
        return
    table(
        [(r["reason"], r["direction"], r["packets"], r["bytes"]) for r in rows],
        ["REASON", "DIRECTION", "PACKETS", "BYTES"],
    )


# -- bpf ct -----------------------------------------------------------------------


@click.group("ct")
def bpf_ct() -> None:
    """The connection-tracking table."""


def _ct_params(target: str) -> dict[str, Any]:
    return {} if target == "global" else {"endpoint": resolve_endpoint(target)}


@bpf_ct.command("list")
@click.argument("target", default="global")
@output_option()
def bpf_ct_list(target: str, fmt: str) -> None:
    """Entries of one endpoint (id, NS/POD or IPv4) or of every endpoint (global)."""
    rows = call("GET", "/bpf/ct", **_ct_params(target))
    if emit(rows, fmt):
        return
    table(
        [
            (
                r["endpoint"],
                r["direction"],
                r["protocol"],
                r["source"],
                r["destination"],
                r["state"],
                r["expires-in"],
                r["packets"],
                r["bytes"],
            )
            for r in rows
        ],
        [
            "ENDPOINT",
            "DIRECTION",
            "PROTO",
            "SOURCE",
            "DESTINATION",
            "STATE",
            "EXPIRES-IN",
            "PACKETS",
            "BYTES",
        ],
    )


@bpf_ct.command("flush")
@click.argument("target", default="global")
def bpf_ct_flush(target: str) -> None:
    """Delete the entries of one endpoint, or every entry (global)."""
    res = call("DELETE", "/bpf/ct", **_ct_params(target))
    click.echo(f"Flushed {res['deleted']} entries from the CT table")


# -- bpf tunnel and bpf ipcache ---------------------------------------------------


@click.group("tunnel")
def bpf_tunnel() -> None:
    """The tunnel map: other nodes' pod ranges and their tunnel endpoints."""


@bpf_tunnel.command("list")
@output_option()
def bpf_tunnel_list(fmt: str) -> None:
    """Every pod range of another node with that node's underlay address."""
    rows = call("GET", "/bpf/tunnel")
    if emit(rows, fmt):
        return
    table([(r["prefix"], r["node-ip"]) for r in rows], ["PREFIX", "TUNNEL ENDPOINT"])


@click.group("ipcache")
def bpf_ipcache() -> None:
    """The IP-to-identity cache the datapath reads."""


@bpf_ipcache.command("list")
@output_option()
def bpf_ipcache_list(fmt: str) -> None:
    """Every prefix with its identity and, for other nodes' pods, their tunnel endpoint."""
    rows = call("GET", "/bpf/ipcache")
    if emit(rows, fmt):
        return
    table(
        [(r["prefix"], r["identity"], r["tunnel-endpoint"] or "-") for r in rows],
        ["PREFIX", "IDENTITY", "TUNNEL ENDPOINT"],
    )


@bpf.group("lb")
def bpf_lb() -> None:
    """The load-balancer maps."""


@bpf_lb.command("list")
@output_option()
def bpf_lb_list(fmt: str) -> None:
    """Frontends with their service id and backend slots, as the kernel holds them."""
    rows = call("GET", "/bpf/lb")
    if emit(rows, fmt):
        return
    lines: list[tuple[Any, ...]] = []
    for r in rows:
        lines.append((r["frontend"], r["protocol"], r["id"], r["flags"], "(master)"))
        lines += [
            ("", "", "", "", f"{b['slot']} => {b['backend']} (backend {b['backend-id']})")
            for b in r["backends"]
        ]
    table(lines, ["FRONTEND", "PROTOCOL", "ID", "FLAGS", "BACKENDS"])


bpf.add_command(bpf_ct)
bpf.add_command(bpf_tunnel)
bpf.add_command(bpf_ipcache)
