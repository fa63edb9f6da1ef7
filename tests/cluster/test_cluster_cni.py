"""A CNI container on one node of the shared cluster, under the cluster's policy:
its identity is the cluster's, and pods of other nodes see it by that identity."""

from __future__ import annotations

import pytest

from tests.cluster.harness import ClusterHandle
from tests.cluster.workload import eventually, reaches, workload
from tests.integration.cni_tool import cni, plugin_conf, sandbox, sandboxes

__all__ = ["sandboxes"]

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]


def test_cni_container_is_a_cluster_endpoint(cluster: ClusterHandle, sandboxes: list[str]) -> None:
    here, there = cluster.nodes[0], cluster.nodes[1]
    conf = plugin_conf(cluster.node(here).config.socket_path)
    with workload(cluster, "cni") as w:
        w.apply(
            w.namespace_doc(),
            w.pod("web", there, {"app": "web"}),
            w.policy(
                "clients",
                {
                    "endpointSelector": {"matchLabels": {"app": "web"}},
                    "ingress": [
                        {
                            "fromEndpoints": [{"matchLabels": {"container:app": "client"}}],
                            "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}],
                        }
                    ],
                },
            ),
        )
        web = w.info("web")
        netns = sandbox(sandboxes)
        cid = f"{w.namespace}-client"
        code, res = cni("ADD", conf, cid, netns)
        assert code == 0, res
        try:
            assert not reaches(netns, web.ip), "the init identity is no client"
            key = f"/endpoint/container-id:{cid}"
            ep = cluster.client(here).request(
                "PATCH", key, json={"labels": ["container:app=client"]}
            )

            def same_identity_there() -> bool:
                ids = {i["id"]: i["labels"] for i in cluster.client(there).get("/identity")}
                return ids.get(ep["identity"]) == ["container:app=client"]

            eventually(same_identity_there, "the container's identity on the other node")
            eventually(lambda: reaches(netns, web.ip), "the client reaching web across nodes")
            cluster.client(here).request("PATCH", key, json={"labels": ["container:app=x"]})
            eventually(lambda: not reaches(netns, web.ip), "the relabelled container denied")
        finally:
            assert cni("DEL", conf, cid, netns)[0] == 0
        assert cid not in {e["container-id"] for e in cluster.client(here).get("/endpoint")}
