"""`cilia probe --matrix` in a cluster: every node's agent probes from its pods, merged."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.cluster.harness import ClusterHandle

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]

PODS = {"a": "node1", "b": "node2", "c": "node3"}
"""Pod name -> the node it is pinned to."""
ACCEPTS = {"a": "c", "b": "a", "c": "b"}
"""Pod name -> the only other pod it accepts: each ordered pair of nodes has one allowed
and one denied direction."""
EXPECTED = {(s, d): "allowed" if s in (d, ACCEPTS[d]) else "denied" for s in PODS for d in PODS}
"""(from, to) pod names -> verdict on 80/TCP (a pod reaches itself)."""


def _manifest(ns: str) -> str:
    """A namespace with one responder pod per node, each accepting only `ACCEPTS`."""
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
    ]
    for name, node in PODS.items():
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
                "spec": {
                    "nodeName": node,
                    "containers": [{"name": "srv", "ports": [{"containerPort": 80}]}],
                },
            }
        )
    for name, peer in ACCEPTS.items():
        docs.append(
            {
                "apiVersion": "cilium.io/v2",
                "kind": "CiliumNetworkPolicy",
                "metadata": {"name": f"only-{peer}", "namespace": ns},
                "spec": {
                    "endpointSelector": {"matchLabels": {"app": name}},
                    "ingress": [{"fromEndpoints": [{"matchLabels": {"app": peer}}]}],
                },
            }
        )
    return yaml.safe_dump_all(docs)


@pytest.fixture
def spread(cluster: ClusterHandle) -> Iterator[str]:
    """A namespace of the shared cluster with a pod on every node; removed at the end."""
    ns = f"m{secrets.token_hex(3)}"
    manifest = _manifest(ns)
    res = cluster.run(None, "apply", "-f", "-", input=manifest)
    assert res.code == 0, res.stderr
    try:
        yield ns
    finally:
        assert cluster.run(None, "delete", "-f", "-", input=manifest).code == 0
        deadline = time.monotonic() + 30
        while any(_pods(cluster, node, ns) for node in cluster.nodes):
            assert time.monotonic() < deadline, f"pods of {ns} still listed"
            time.sleep(0.2)


def _pods(cluster: ClusterHandle, node: str, ns: str) -> list[dict[str, Any]]:
    return [p for p in cluster.client(node).request("GET", "/objects/pods") if p["namespace"] == ns]


def _matrix(cluster: ClusterHandle, node: str | None, ns: str) -> tuple[int, Any]:
    res = cluster.run(
        node, "probe", "--matrix", "--namespaces", ns, "--timeout", "0.5", "-o", "json"
    )
    return res.code, res.json() if res.stdout.strip() else res.stderr


def test_matrix_covers_the_pods_of_every_node(cluster: ClusterHandle, spread: str) -> None:
    ns = spread
    deadline = time.monotonic() + 30
    while True:  # the pods start on their nodes after `apply` returned on the first
        code, rows = _matrix(cluster, None, ns)
        verdicts = (
            {(r["from"].split("/")[1], r["to"].split("/")[1]): r["result"] for r in rows}
            if code == 0
            else None
        )
        if verdicts == EXPECTED or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert code == 0, rows
    assert verdicts == EXPECTED
    assert len(rows) == len(PODS) ** 2
    assert {r["from"]: r["node"] for r in rows} == {f"{ns}/{p}": n for p, n in PODS.items()}

    code, other = _matrix(cluster, "node2", ns)  # whichever node the CLI talks to
    assert code == 0, other
    assert sorted((r["from"], r["to"], r["result"], r["node"]) for r in other) == sorted(
        (r["from"], r["to"], r["result"], r["node"]) for r in rows
    )

    table = cluster.run("node3", "probe", "--matrix", "--namespaces", ns, "--timeout", "0.5")
    assert table.code == 0, table.stderr
    assert f"node1: {ns}/a; node2: {ns}/b; node3: {ns}/c" in table.stdout
    lines = {
        line.split()[0]: line.split()[1:]
        for line in table.stdout.splitlines()
        if line.startswith(f"{ns}/")
    }
    assert lines == {
        f"{ns}/a": [".", ".", "X"],
        f"{ns}/b": ["X", ".", "."],
        f"{ns}/c": [".", "X", "."],
    }
    assert "9 probes" in table.stdout and "3 denied" in table.stdout


def test_matrix_reports_a_node_that_does_not_answer(cluster: ClusterHandle, spread: str) -> None:
    cluster.kill_agent("node3")
    try:
        res = cluster.run("node1", "probe", "--matrix", "--namespaces", spread, "--timeout", "0.5")
        assert res.code == 1
        assert "node node3: cannot reach the agent" in res.stderr
    finally:
        cluster.restart_agent("node3")
