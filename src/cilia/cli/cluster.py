"""`cilia cluster up|down|status`, `cilia kvstore get|set|delete` and `cilia get nodes`."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from cilia.cli.api import call
from cilia.cli.output import emit, output_option, table
from cilia.defaults import cluster_dir

# -- cluster ------------------------------------------------------------------


@click.group()
def cluster() -> None:
    """A cluster on this machine: etcd, and per node a network namespace on a shared
    underlay bridge running an unmodified agent (state in CILIA_CLUSTER_DIR, default
    /var/run/cilia-cluster)."""


@cluster.command("up")
@click.option("--nodes", type=click.IntRange(1, 200), default=3, show_default=True)
@click.option(
    "--kvstore-endpoint",
    metavar="URL[,URL...]",
    help="Use this etcd instead of starting one: reachable from the underlay (the nodes'"
    " gateway is the bridge) and dedicated to this cluster (down deletes its cilia/ keys).",
)
@click.option(
    "--cluster-pod-cidr",
    help="Range the agents carve their pod ranges from (default: the agents' default).",
)
@click.option("--lease-ttl", type=int, help="Seconds each node's etcd lease lives.")
@click.option("--lease-keepalive", type=float, help="Seconds between lease refreshes.")
@click.option(
    "--agent-arg",
    "agent_args",
    multiple=True,
    metavar="ARG",
    help="Another flag for every agent, as is (repeatable): --agent-arg=--mtu=1400.",
)
@click.option(
    "--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for health."
)
@output_option()
def cluster_up(
    nodes: int,
    kvstore_endpoint: str | None,
    cluster_pod_cidr: str | None,
    lease_ttl: int | None,
    lease_keepalive: float | None,
    agent_args: tuple[str, ...],
    timeout: float,
    fmt: str,
) -> None:
    """Build the cluster and wait until every agent is healthy; on any failure remove what
    was built and exit 1."""
    from cilia.cluster.lifecycle import ClusterSpec, up  # the CLI starts faster without
    from cilia.cluster.state import ClusterError

    spec = ClusterSpec(
        nodes=nodes,
        kvstore_endpoints=tuple(u for u in (kvstore_endpoint or "").split(",") if u.strip()),
        cluster_pod_cidr=cluster_pod_cidr or ClusterSpec.cluster_pod_cidr,
        lease_ttl=lease_ttl,
        lease_keepalive=lease_keepalive,
        agent_args=agent_args,
        timeout=timeout,
    )
    # A SIGTERM (a cancelled CI job) unwinds like Ctrl-C: `up` removes what it built.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        state = up(Path(cluster_dir()), spec, lambda line: click.echo(line, err=fmt != "table"))
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    emit(state.model_dump(), fmt)


@cluster.command("down")
def cluster_down() -> None:
    """Stop the agents and etcd; remove every namespace, device, pin, process and the etcd
    data of the cluster (also after a kill -9 of any part; running it twice is fine)."""
    from cilia.cluster.lifecycle import down
    from cilia.cluster.state import ClusterError

    try:
        complete = down(Path(cluster_dir()), click.echo)
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(0 if complete else 1)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _kvstore(value: Any) -> str:
    """The agent's kvstore status in a few words."""
    if not isinstance(value, dict):
        return "-"
    if "healthy" not in value:
        return str(value.get("backend", "-"))
    health = "ok" if value["healthy"] else "unreachable"
    return f"{health}, {value['nodes']} nodes" if "nodes" in value else health


@cluster.command("status")
@output_option()
def cluster_status(fmt: str) -> None:
    """etcd health and every node's agent (alive, healthy, node, pod range); exit 1 when
    something is down."""
    from cilia.cluster.lifecycle import status
    from cilia.cluster.state import ClusterError

    try:
        data = status(Path(cluster_dir()))
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    if not emit(data, fmt):
        etcd = data["etcd"]
        click.echo(f"Cluster:   {data['cluster']} in {data['directory']}")
        click.echo(f"Underlay:  bridge {data['underlay']['bridge']}, {data['underlay']['cidr']}")
        where = "external" if etcd.get("external") else f"pid {etcd.get('pid')}"
        click.echo(
            f"etcd:      {'healthy' if etcd['healthy'] else 'UNREACHABLE'}, "
            f"{', '.join(etcd.get('endpoints', []))} ({where})"
        )
        table(
            [
                (
                    n["name"],
                    n["netns"],
                    n["underlay-ip"],
                    n["agent-pid"] or "-",
                    _yes(n["agent-alive"]),
                    _yes(n["agent-healthy"]),
                    n.get("agent", {}).get("pod-cidr", "-"),
                    _kvstore(n.get("agent", {}).get("kvstore")),
                )
                for n in data["nodes"]
            ],
            ["NAME", "NETNS", "UNDERLAY-IP", "PID", "ALIVE", "HEALTHY", "POD-CIDR", "KVSTORE"],
        )
    sys.exit(0 if data["healthy"] else 1)


# -- nodes and kvstore (served by the selected agent) ---------------------------


def _heartbeat(value: Any) -> str:
    if isinstance(value, int | float):
        return f"{max(0.0, time.time() - value):.0f}s ago"
    return "-" if value is None else str(value)


def show_nodes(name: str | None, fmt: str, selector: str | None = None) -> None:
    """`cilia get nodes [NAME]`: the cluster's nodes as the agent sees them in etcd;
    -o json|yaml prints Kubernetes Nodes (a List; with NAME the Node itself)."""
    if fmt in ("json", "yaml"):
        params = {"format": "k8s", **({"name": name} if name else {})}
        listing = call("GET", "/objects/nodes", **params, **_selector(selector))
        if name and not listing["items"]:
            raise click.ClickException(f"node {name} not found")
        emit(listing["items"][0] if name else listing, fmt)
        return
    nodes = call("GET", "/cluster/nodes")
    if name:
        nodes = [n for n in nodes if n["name"] == name]
        if not nodes:
            raise click.ClickException(f"node {name} not found")
    if selector:  # the agent matches node labels (kubernetes.io/hostname)
        listing = call("GET", "/objects/nodes", format="k8s", **_selector(selector))
        names = {n["metadata"]["name"] for n in listing["items"]}
        nodes = [n for n in nodes if n["name"] in names]
    table(
        [
            (
                n["name"],
                n.get("underlay-ip") or "-",
                n.get("pod-cidr") or "-",
                n.get("health", "-"),
                _heartbeat(n.get("last-heartbeat")),
            )
            for n in nodes
        ],
        ["NAME", "UNDERLAY-IP", "POD-CIDR", "HEALTH", "LAST-HEARTBEAT"],
    )


def _selector(selector: str | None) -> dict[str, str]:
    return {"labelSelector": selector} if selector else {}


@click.group()
def kvstore() -> None:
    """Read and write the cluster's etcd directly, through the agent (as `cilium kvstore`)."""


@kvstore.command("get")
@click.option("--recursive", is_flag=True, help="Every key starting with KEY.")
@click.argument("key")
@output_option()
def kvstore_get(recursive: bool, key: str, fmt: str) -> None:
    """Print KEY (or every key under it) as `key => value`."""
    pairs = call("GET", "/kvstore", key=key, recursive=recursive)
    if not pairs and not recursive:
        raise click.ClickException(f"key {key} not found")
    if emit(pairs, fmt):
        return
    for pair in pairs:
        click.echo(f"{pair['key']} => {pair['value']}")


@kvstore.command("set")
@click.argument("key")
@click.argument("value")
def kvstore_set(key: str, value: str) -> None:
    """Set KEY to VALUE."""
    call("PUT", "/kvstore", {"key": key, "value": value})
    click.echo(f"{key} => {value}")


@kvstore.command("delete")
@click.argument("key")
def kvstore_delete(key: str) -> None:
    """Delete KEY."""
    res = call("DELETE", "/kvstore", key=key)
    click.echo(f"deleted {res['deleted']} key{'s' if res['deleted'] != 1 else ''}")
