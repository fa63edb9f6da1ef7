"""`cilia probe --matrix`: the truth table of every ordered pair of pods.

An agent probes from its own pods (`sources`) to every pod it knows of. In a cluster
on this machine the CLI asks every node's agent at once and merges their answers, so
the table covers the pods of all nodes; a pair no node probed is reported, never
silently left out.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click

from cilia.cli.api import call
from cilia.cli.client import ApiError, Client
from cilia.cli.output import emit, table
from cilia.defaults import cluster_dir, cluster_exists, socket_path

Key = tuple[str, str, int, str, int]


def cluster_agents() -> dict[str, Client]:
    """Every node's agent, by node name, when the agent this command talks to is a node
    of the cluster on this machine; empty otherwise (a local agent, or no cluster)."""
    if not cluster_exists():
        return {}
    from cilia.cluster.state import ClusterError, load_state  # pydantic: only for a cluster

    try:
        state = load_state(Path(cluster_dir()))
    except ClusterError:
        return {}
    if state is None:
        return {}
    sockets = {n.name: n.config.socket_path for n in state.nodes}
    if Path(socket_path()) not in sockets.values():
        return {}
    return {name: Client(path) for name, path in sockets.items()}


def ask_all(agents: Mapping[str, Client], body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`POST /probe/matrix` on every agent concurrently: node -> its answer. ApiError
    naming the node if one fails."""

    def ask(item: tuple[str, Client]) -> dict[str, Any]:
        node, client = item
        try:
            answer: dict[str, Any] = client.request("POST", "/probe/matrix", json=body)
        except ApiError as exc:
            raise ApiError(f"node {node}: {exc}") from exc
        return answer

    with ThreadPoolExecutor(max(1, len(agents))) as pool:
        return dict(zip(agents, pool.map(ask, agents.items()), strict=True))


def merge(answers: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """One matrix from several agents' answers: the pods any of them knows, each result
    once (tagged with the node that probed it; the first node wins a pair reported
    twice), in source order, and the slowest agent's time."""
    results: dict[Key, dict[str, Any]] = {}
    for node, answer in answers.items():
        for row in answer["results"]:
            results.setdefault(key_of(row), {**row, "node": node})
    return {
        "pods": sorted({p for a in answers.values() for p in a["pods"]}),
        "families": sorted({f for a in answers.values() for f in a.get("families", [4])}),
        "sources": {node: list(a["sources"]) for node, a in answers.items()},
        "results": sorted(results.values(), key=lambda r: r["from"]),
        "elapsed_seconds": max((a["elapsed_seconds"] for a in answers.values()), default=0),
    }


def key_of(row: Mapping[str, Any]) -> Key:
    """(from, to, port, protocol, family) of one result row."""
    return (row["from"], row["to"], int(row["port"]), row["protocol"], int(row.get("family", 4)))


def missing(
    results: Sequence[Mapping[str, Any]],
    sources: Sequence[str],
    pods: Sequence[str],
    ports: Sequence[int],
    protocols: Sequence[str],
    families: Sequence[int] = (4,),
) -> list[Key]:
    """Probes from `sources` to `pods` (each port, protocol and family) with no result:
    a source no agent probed from, or a pod an agent did not know of yet."""
    have = {key_of(r) for r in results}
    wanted = itertools.product(sources, pods, ports, protocols, families)
    return [k for k in wanted if k not in have]


def show_matrix(body: dict[str, Any], fmt: str) -> None:
    """Probe and print the table ('.' allowed, 'X' denied, '?' not probed): rows are
    every pod of the cluster when every node is asked, else the agent's own pods. Exit 1
    when a pair was not probed."""
    agents = cluster_agents()
    if agents:
        try:
            data = merge(ask_all(agents, body))
        except ApiError as exc:
            raise click.ClickException(str(exc)) from None
        rows = data["pods"]
    else:
        data = call("POST", "/probe/matrix", body)
        rows = data.get("sources", data["pods"])
    ports, protocols, families = body["ports"], body["protocols"], data.get("families", [4])
    gaps = missing(data["results"], rows, data["pods"], ports, protocols, families)
    fields = ("from", "to", "port", "protocol", "family", "result", "node")
    if not emit([{k: r[k] for k in fields if k in r} for r in data["results"]], fmt):
        _print_tables(data, rows, ports, protocols, families)
    if gaps:
        src, dst, port, proto, family = gaps[0]
        click.echo(
            f"Error: {len(gaps)} probes missing (no agent probed from their source, or it "
            f"did not know their destination yet), e.g. {src} -> {dst} {port}/{proto}"
            f" IPv{family}",
            err=True,
        )
        sys.exit(1)


def _print_tables(
    data: Mapping[str, Any],
    rows: Sequence[str],
    ports: Sequence[int],
    protocols: Sequence[str],
    families: Sequence[int],
) -> None:
    pods = data["pods"]
    verdict = {key_of(r): r["result"] for r in data["results"]}
    marks = {"allowed": ".", None: "?"}
    if isinstance(data.get("sources"), dict):
        click.echo(
            "Sources by node: "
            + "; ".join(f"{n}: {', '.join(s) or '-'}" for n, s in data["sources"].items())
        )
    for proto, port, family in itertools.product(protocols, ports, families):
        click.echo(f"\n{proto}/{port} IPv{family}  (rows: from, columns: to)")
        table(
            [
                [src]
                + [marks.get(verdict.get((src, dst, port, proto, family)), "X") for dst in pods]
                for src in rows
            ],
            ["", *pods],
        )
    results = data["results"]
    allowed = sum(1 for r in results if r["result"] == "allowed")
    click.echo(
        f"\n{len(results)} probes in {data['elapsed_seconds']}s: {allowed} allowed, "
        f"{len(results) - allowed} denied"
    )
