"""`cilia get pods -o json` in a cluster: each pod's `spec.nodeName` is the node it runs
on and `status.hostIP` that node's underlay address, whichever node is asked."""

from __future__ import annotations

import pytest

from tests.cluster.harness import ClusterHandle
from tests.cluster.workload import workload

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]


def test_pods_show_their_node_and_host_ip_from_any_node(cluster: ClusterHandle) -> None:
    with workload(cluster, "getk8s") as w:
        placed = {f"p{i}": n for i, n in enumerate(cluster.nodes, 1)}
        w.apply(
            w.namespace_doc(),
            *(w.pod(p, n, {"app": p}, ports=(80,)) for p, n in placed.items()),
        )
        infos = {p: w.info(p) for p in placed}
        for asked in cluster.nodes:
            res = cluster.run(asked, "get", "pods", "-n", w.namespace, "-o", "json")
            assert res.code == 0, res.stderr
            pods = {i["metadata"]["name"]: i for i in res.json()["items"]}
            assert sorted(pods) == sorted(placed)
            for name, node in placed.items():
                pod = pods[name]
                assert pod["spec"]["nodeName"] == node
                assert pod["status"]["hostIP"] == cluster.node(node).underlay_ip
                assert pod["status"]["podIP"] == infos[name].ip
                assert pod["status"]["phase"] == "Running"
                assert pod["status"]["cilia"]["identity"] == infos[name].identity
        res = cluster.run(None, "get", "pods", "-n", w.namespace, "-l", "app=p2", "-o", "wide")
        assert res.code == 0, res.stderr
        rows = [line.split() for line in res.stdout.splitlines()[1:]]
        assert [r[:1] + r[5:7] for r in rows] == [["p2", infos["p2"].ip, placed["p2"]]]
