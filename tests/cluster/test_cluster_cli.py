"""`cilia probe --matrix` in a cluster: every node's agent probes from its pods, merged."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.harness import ClusterHandle
from tests.cluster.workload import workload

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]

PODS = {"a": "node1", "b": "node2", "c": "node3"}
"""Pod name -> the node it is pinned to."""
ACCEPTS = {"a": "c", "b": "a", "c": "b"}
"""Pod name -> the only other pod it accepts: each ordered pair of nodes has one allowed
and one denied direction."""
EXPECTED = {(s, d): "allowed" if s in (d, ACCEPTS[d]) else "denied" for s in PODS for d in PODS}
"""(from, to) pod names -> verdict on 80/TCP (a pod reaches itself)."""


@pytest.fixture
def spread(cluster: ClusterHandle) -> Iterator[str]:
    """A namespace of the shared cluster with a responder pod on every node, each
    accepting only `ACCEPTS`, applied on every node; removed at the end."""
    with workload(cluster, "matrix") as w:
        pods = [w.pod(name, node, {"app": name}, ports=(80,)) for name, node in PODS.items()]
        policies = [
            w.policy(
                f"only-{peer}",
                {
                    "endpointSelector": {"matchLabels": {"app": name}},
                    "ingress": [{"fromEndpoints": [{"matchLabels": {"app": peer}}]}],
                },
            )
            for name, peer in ACCEPTS.items()
        ]
        w.apply(w.namespace_doc(), *pods, *policies)
        yield w.namespace


def _matrix(cluster: ClusterHandle, node: str | None, ns: str) -> tuple[int, Any]:
    res = cluster.run(
        node, "probe", "--matrix", "--namespaces", ns, "--timeout", "0.5", "-o", "json"
    )
    return res.code, res.json() if res.stdout.strip() else res.stderr


def test_matrix_covers_the_pods_of_every_node(cluster: ClusterHandle, spread: str) -> None:
    ns = spread
    code, rows = _matrix(cluster, None, ns)
    assert code == 0, rows
    # The session cluster is dual stack: every pair is probed over IPv4 and IPv6 alike.
    for family in (4, 6):
        verdicts = {
            (r["from"].split("/")[1], r["to"].split("/")[1]): r["result"]
            for r in rows
            if r["family"] == family
        }
        assert verdicts == EXPECTED, family
    assert len(rows) == 2 * len(PODS) ** 2
    assert {r["from"]: r["node"] for r in rows} == {f"{ns}/{p}": n for p, n in PODS.items()}

    code, other = _matrix(cluster, "node2", ns)  # whichever node the CLI talks to
    assert code == 0, other
    fields = ("from", "to", "family", "result", "node")
    assert sorted(tuple(r[k] for k in fields) for r in other) == sorted(
        tuple(r[k] for k in fields) for r in rows
    )

    table = cluster.run("node3", "probe", "--matrix", "--namespaces", ns, "--timeout", "0.5")
    assert table.code == 0, table.stderr
    assert f"node1: {ns}/a; node2: {ns}/b; node3: {ns}/c" in table.stdout
    lines = [line.split() for line in table.stdout.splitlines() if line.startswith(f"{ns}/")]
    one_table = [
        [f"{ns}/a", ".", ".", "X"],
        [f"{ns}/b", "X", ".", "."],
        [f"{ns}/c", ".", "X", "."],
    ]
    assert lines == one_table * 2, "the IPv4 table, then the IPv6 one"
    assert "TCP/80 IPv4" in table.stdout and "TCP/80 IPv6" in table.stdout
    assert "18 probes" in table.stdout and "6 denied" in table.stdout


def test_matrix_reports_a_node_that_does_not_answer(cluster: ClusterHandle, spread: str) -> None:
    cluster.kill_agent("node3")
    try:
        res = cluster.run("node1", "probe", "--matrix", "--namespaces", spread, "--timeout", "0.5")
        assert res.code == 1
        assert "node node3: cannot reach the agent" in res.stderr
    finally:
        cluster.restart_agent("node3")
