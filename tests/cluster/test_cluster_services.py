"""Services across the session cluster: a ClusterIP spreads over backends on every
node, and a NodePort on one node reaches backends on the others from the outside
(world, also SNATed to the node's address on the way in), replies coming back through
the node that translated them."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from cilia.datapath.external import Outside
from tests.cluster.harness import ClusterHandle
from tests.cluster.workload import Doc, Workload, eventually, workload
from tests.integration.harness import answering_pod

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]

NODE_PORT = 31080
CLUSTER_PODS = "10.208.0.0/12"
"""The cluster's pod range (the agents' default)."""


def service(w: Workload, kind: str = "ClusterIP", family: str = "IPv4") -> Doc:
    port: Doc = {"port": 8080, "targetPort": 80}
    if kind == "NodePort":
        port["nodePort"] = NODE_PORT
    spec = {"type": kind, "selector": {"app": "web"}, "ports": [port], "ipFamilies": [family]}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": w.namespace},
        "spec": spec,
    }


def backends_on(w: Workload, node: str, count: int) -> dict[str, object]:
    """The ClusterIP row of the test's service on `node` once it has `count` backends."""

    def row() -> dict[str, object] | None:
        for r in w.cluster.client(node).get("/service"):
            if r["service"] == f"{w.namespace}/web" and r["type"] == "ClusterIP":
                return dict(r) if len(r["backends"]) == count else None
        return None

    return eventually(row, f"{node} load-balances {count} backends")


@pytest.fixture
def svc(cluster: ClusterHandle) -> Iterator[Workload]:
    with workload(cluster, "svc") as w:
        yield w


@pytest.mark.parametrize("family", ["IPv4", "IPv6"])
def test_clusterip_spreads_over_backends_on_every_node(svc: Workload, family: str) -> None:
    w, nodes = svc, svc.cluster.nodes
    pods = [w.pod(f"web-{i}", node, {"app": "web"}) for i, node in enumerate(nodes)]
    client = w.pod("client", nodes[0], {"role": "client"})
    w.apply(w.namespace_doc(), *pods, client, service(w, family=family))
    vip = str(backends_on(w, nodes[0], len(nodes))["frontend"]).rsplit(":", 1)[0].strip("[]")
    assert (":" in vip) == (family == "IPv6")
    for node in nodes:  # every node programmed the same ClusterIP
        backends_on(w, node, len(nodes))
    seen = {answering_pod(w.netns("client"), vip, 8080) for _ in range(40)}
    assert seen == {f"{w.namespace}/web-{i}" for i in range(len(nodes))}


def test_node_port_on_one_node_reaches_backends_on_the_others(svc: Workload) -> None:
    w, nodes = svc, svc.cluster.nodes
    entry, far = nodes[0], nodes[1:]
    pods = [w.pod(f"web-{i}", node, {"app": "web"}) for i, node in enumerate(far)]
    policy = w.policy(
        "world-only",
        {
            "endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"fromEntities": ["world"]}],
        },
    )
    w.apply(w.namespace_doc(), *pods, service(w, "NodePort"), policy)
    backends_on(w, entry, len(far))
    tag = secrets.token_hex(3)
    n = int(tag[:2], 16)
    outside = Outside(
        netns=f"cilia-np{tag}-outside",
        host_ifname=f"cn{tag}",
        host_ip=f"198.18.{n}.1",
        outside_ip=f"198.18.{n}.2",
        router_netns=w.cluster.node(entry).netns,
    )
    comment = f"cilia-np{tag}-snat"
    outside.create()
    try:

        def node_port() -> set[str | None]:
            return {answering_pod(outside.path, outside.host_ip, NODE_PORT) for _ in range(20)}

        eventually(
            lambda: node_port() == {f"{w.namespace}/{p['metadata']['name']}" for p in pods},
            "the node port reaches every far backend",
        )
        # Masqueraded to the entry node's address on the way in: still world.
        outside.snat(CLUSTER_PODS, comment, on=True)
        assert node_port() == {f"{w.namespace}/{p['metadata']['name']}" for p in pods}
    finally:
        outside.snat(CLUSTER_PODS, comment, on=False)
        outside.remove()


def test_a_service_refused_on_one_node_is_stored_nowhere(svc: Workload) -> None:
    w, nodes = svc, svc.cluster.nodes
    w.apply(w.namespace_doc(), service(w, "NodePort"))
    clash = service(w, "NodePort")
    clash["metadata"] = {"name": "clash", "namespace": w.namespace}
    res = w.try_apply([clash], node=nodes[1])
    assert res.code != 0 and "nodePort" in res.stderr and "already" in res.stderr, res.stderr
    for node in nodes:
        names = {s["name"] for s in w.cluster.client(node).get("/objects/services")}
        assert "clash" not in names
