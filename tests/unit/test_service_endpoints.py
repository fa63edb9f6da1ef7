"""The endpoints controller (service.endpoints): which pods back a Service, on which ports."""

from __future__ import annotations

from typing import Any

from cilia.k8s.manifests import Endpoints, Pod, Service, dump, parse_manifest
from cilia.service.endpoints import endpoints_for, pod_info
from cilia.service.model import PodInfo, Protocol


def svc(**spec: Any) -> Service:
    spec.setdefault("selector", {"app": "web"})
    spec.setdefault("ports", [{"port": 80}])
    obj = parse_manifest(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "prod", "labels": {"tier": "front"}},
            "spec": spec,
        }
    )
    assert isinstance(obj, Service)
    return obj


def pod(
    name: str,
    ipv4: str,
    ready: bool = True,
    ipv6: str = "",
    namespace: str = "prod",
    labels: dict[str, str] | None = None,
    ports: dict[str, tuple[int, Protocol]] | None = None,
) -> PodInfo:
    return PodInfo(
        namespace=namespace,
        name=name,
        labels={"app": "web"} if labels is None else labels,
        ipv4=ipv4,
        ipv6=ipv6,
        ready=ready,
        node="node-a",
        ports=ports or {},
    )


def subsets(ep: Endpoints | None) -> list[dict[str, Any]]:
    """Each subset as (ready ips, not-ready ips, ports as (name, port, protocol))."""
    assert ep is not None
    return [
        {
            "ready": [a.ip for a in s.addresses],
            "not_ready": [a.ip for a in s.notReadyAddresses],
            "ports": [(p.name, p.port, p.protocol) for p in s.ports],
        }
        for s in ep.subsets
    ]


def test_named_like_the_service_with_its_labels() -> None:
    ep = endpoints_for(svc(), [pod("a", "10.0.0.1")])
    assert ep is not None
    assert (ep.key, ep.metadata.labels) == ("Endpoints/prod/web", {"tier": "front"})
    (address,) = ep.subsets[0].addresses
    assert address.nodeName == "node-a" and address.targetRef is not None
    assert (address.targetRef.kind, address.targetRef.namespace, address.targetRef.name) == (
        "Pod",
        "prod",
        "a",
    )
    assert parse_manifest(dump(ep)) == ep, "a valid Endpoints manifest"


def test_selection_and_readiness() -> None:
    pods = [
        pod("b", "10.0.0.10"),
        pod("a", "10.0.0.9"),
        pod("slow", "10.0.0.3", ready=False),
        pod("other-ns", "10.0.0.4", namespace="dev"),
        pod("other-app", "10.0.0.5", labels={"app": "db"}),
        pod("more-labels", "10.0.0.6", labels={"app": "web", "x": "y"}),
        pod("no-labels", "10.0.0.7", labels={}),
        pod("no-address", ""),
    ]
    assert subsets(endpoints_for(svc(), pods)) == [
        {
            "ready": ["10.0.0.6", "10.0.0.9", "10.0.0.10"],
            "not_ready": ["10.0.0.3"],
            "ports": [(None, 80, "TCP")],
        }
    ]


def test_every_selector_entry_must_match() -> None:
    pods = [
        pod("both", "10.0.0.1", labels={"app": "web", "tier": "a"}),
        pod("one", "10.0.0.2", labels={"app": "web", "tier": "b"}),
    ]
    ep = endpoints_for(svc(selector={"app": "web", "tier": "a"}), pods)
    assert subsets(ep)[0]["ready"] == ["10.0.0.1"]


def test_empty_selector_selects_the_whole_namespace() -> None:
    pods = [pod("a", "10.0.0.1", labels={}), pod("b", "10.0.0.2", namespace="dev")]
    assert subsets(endpoints_for(svc(selector={}), pods))[0]["ready"] == ["10.0.0.1"]


def test_selectorless_service_has_no_controller_endpoints() -> None:
    plain = parse_manifest(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "ext"},
            "spec": {"ports": [{"port": 80}]},
        }
    )
    assert isinstance(plain, Service)
    assert endpoints_for(plain, [pod("a", "10.0.0.1", namespace="default")]) is None


def test_address_of_the_service_family() -> None:
    pods = [pod("dual", "10.0.0.1", ipv6="fd00::1"), pod("v4", "10.0.0.2")]
    assert subsets(endpoints_for(svc(ipFamilies=["IPv6"]), pods))[0]["ready"] == ["fd00::1"]
    assert subsets(endpoints_for(svc(clusterIP="fd00:96::2"), pods))[0]["ready"] == ["fd00::1"]
    assert subsets(endpoints_for(svc(), pods))[0]["ready"] == ["10.0.0.1", "10.0.0.2"]


def test_named_target_ports_group_pods_by_their_port_sets() -> None:
    service = svc(
        ports=[
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "metrics", "port": 9090},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
        ]
    )
    pods = [
        pod("old", "10.0.0.1", ports={"web": (8080, "TCP"), "dns": (53, "UDP")}),
        pod("new", "10.0.0.2", ports={"web": (8081, "TCP"), "dns": (53, "UDP")}),
        pod("new2", "10.0.0.3", ready=False, ports={"web": (8081, "TCP"), "dns": (53, "UDP")}),
        pod("tcp-dns", "10.0.0.4", ports={"web": (8080, "TCP"), "dns": (53, "TCP")}),
        pod("nameless", "10.0.0.5"),
    ]
    # subsets sorted by their ports, addresses by value
    assert subsets(endpoints_for(service, pods)) == [
        {
            "ready": ["10.0.0.1"],
            "not_ready": [],
            "ports": [("dns", 53, "UDP"), ("http", 8080, "TCP"), ("metrics", 9090, "TCP")],
        },
        {
            "ready": ["10.0.0.2"],
            "not_ready": ["10.0.0.3"],
            "ports": [("dns", 53, "UDP"), ("http", 8081, "TCP"), ("metrics", 9090, "TCP")],
        },
        {
            "ready": ["10.0.0.4"],
            "not_ready": [],
            "ports": [("http", 8080, "TCP"), ("metrics", 9090, "TCP")],
        },
        {"ready": ["10.0.0.5"], "not_ready": [], "ports": [("metrics", 9090, "TCP")]},
    ]


def test_pod_serving_no_port_is_left_out() -> None:
    service = svc(ports=[{"port": 80, "targetPort": "web"}])
    ep = endpoints_for(
        service, [pod("a", "10.0.0.1"), pod("b", "10.0.0.2", ports={"web": (81, "TCP")})]
    )
    assert subsets(ep) == [{"ready": ["10.0.0.2"], "not_ready": [], "ports": [(None, 81, "TCP")]}]
    assert subsets(endpoints_for(service, [pod("a", "10.0.0.1")])) == []


def test_headless_without_ports_lists_addresses() -> None:
    ep = endpoints_for(svc(clusterIP="None", ports=[]), [pod("a", "10.0.0.1")])
    assert subsets(ep) == [{"ready": ["10.0.0.1"], "not_ready": [], "ports": []}]


def test_order_does_not_depend_on_the_pods_order() -> None:
    pods = [pod(f"p{i}", f"10.0.{i % 3}.{i}", ready=i % 2 == 0) for i in range(1, 30)]
    assert endpoints_for(svc(), pods) == endpoints_for(svc(), list(reversed(pods)))


POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web-1", "namespace": "prod", "labels": {"app": "web"}},
    "spec": {
        "nodeName": "node-b",
        "containers": [
            {"name": "a", "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 81}]},
            {
                "name": "b",
                "ports": [
                    {"containerPort": 53, "name": "dns", "protocol": "UDP"},
                    {"containerPort": 8080, "name": "http"},
                ],
            },
        ],
    },
}


def test_pod_info() -> None:
    obj = parse_manifest(POD)
    assert isinstance(obj, Pod)
    row = {"ipv4": "10.200.0.5", "ipv6": "fd00::5", "ready": "2/2", "node": "node-a"}
    info = pod_info(obj, row)
    assert info == PodInfo(
        namespace="prod",
        name="web-1",
        labels={"app": "web"},
        ipv4="10.200.0.5",
        ipv6="fd00::5",
        ready=True,
        node="node-a",
        ports={"http": (80, "TCP"), "dns": (53, "UDP")},
    )


def test_pod_readiness() -> None:
    obj = parse_manifest(POD)
    assert isinstance(obj, Pod)
    unreported = pod_info(obj, None)
    assert (unreported.ready, unreported.ipv4, unreported.ipv6) == (False, "", "")
    assert unreported.node == "node-b", "the node the manifest names"
    for ready, ipv4, ipv6, expected in [
        ("2/2", "10.0.0.1", "", True),
        ("1/1", "", "fd00::1", True),
        ("1/2", "10.0.0.1", "", False),
        ("0/0", "10.0.0.1", "", False),
        ("2/2", "", "", False),
        ("", "10.0.0.1", "", False),
        ("x/x", "10.0.0.1", "", False),
    ]:
        row = {"ipv4": ipv4, "ipv6": ipv6, "ready": ready, "node": "n", "state": "ready"}
        assert pod_info(obj, row).ready is expected, (ready, ipv4, ipv6)
