"""The desired load-balancer table (service.table): frontends and their backends."""

from __future__ import annotations

import time
from typing import Any

from cilia.k8s.manifests import Endpoints, Service, parse_manifest
from cilia.service.model import Backend, Frontend, LbService
from cilia.service.table import endpoints_key, lb_services, service_name


def svc(name: str = "web", namespace: str = "prod", **spec: Any) -> Service:
    spec.setdefault("ports", [{"port": 80}])
    obj = parse_manifest(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )
    assert isinstance(obj, Service)
    return obj


def endpoints(name: str = "web", namespace: str = "prod", *subsets: Any) -> dict[str, Endpoints]:
    obj = parse_manifest(
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": name, "namespace": namespace},
            "subsets": list(subsets),
        }
    )
    assert isinstance(obj, Endpoints)
    return {obj.key: obj}


def subset(*ips: str, ports: Any = ({"port": 8080},), not_ready: Any = ()) -> dict[str, Any]:
    return {
        "addresses": [{"ip": ip} for ip in ips],
        "notReadyAddresses": [{"ip": ip} for ip in not_ready],
        "ports": list(ports),
    }


def backends(*pairs: tuple[str, int]) -> tuple[Backend, ...]:
    return tuple(Backend(a, p) for a, p in pairs)


def test_keys() -> None:
    web = svc()
    assert (service_name(web), endpoints_key(web)) == ("prod/web", "Endpoints/prod/web")
    (ep,) = endpoints().values()
    assert endpoints_key(web) == ep.key


def test_cluster_ip_frontend_with_ready_backends() -> None:
    eps = endpoints(
        "web", "prod", subset("10.0.0.2", "10.0.0.1", "10.0.0.2", not_ready=["10.0.0.3"])
    )
    assert lb_services([svc(clusterIP="10.96.0.10")], eps, ["192.0.2.1"]) == [
        LbService(
            service="prod/web",
            port_name="",
            kind="ClusterIP",
            frontend=Frontend("10.96.0.10", 80, "TCP"),
            backends=backends(("10.0.0.1", 8080), ("10.0.0.2", 8080)),
        )
    ]


def test_services_without_address_or_headless_have_no_entries() -> None:
    eps = endpoints("web", "prod", subset("10.0.0.1"))
    assert lb_services([svc(), svc(clusterIP="None")], eps, []) == []


def test_no_endpoints_means_no_backends() -> None:
    (entry,) = lb_services([svc(clusterIP="10.96.0.10")], {}, [])
    assert entry.backends == ()
    other = endpoints("web", "dev", subset("10.0.0.1"))
    (entry,) = lb_services([svc(clusterIP="10.96.0.10")], other, [])
    assert entry.backends == (), "only the Endpoints of the same namespace and name"


def test_ports_match_subset_ports_by_name() -> None:
    service = svc(
        clusterIP="10.96.0.10",
        ports=[
            {"name": "http", "port": 80},
            {"name": "dns", "port": 53, "protocol": "UDP"},
        ],
    )
    eps = endpoints(
        "web",
        "prod",
        subset("10.0.0.1", ports=[{"name": "http", "port": 8080}, {"name": "dns", "port": 5353}]),
        subset("10.0.0.2", ports=[{"name": "http", "port": 8081}]),
        subset("10.0.0.3", ports=[{"name": "other", "port": 1}]),
    )
    table = lb_services([service], eps, [])
    assert [(e.port_name, e.frontend, e.backends) for e in table] == [
        ("dns", Frontend("10.96.0.10", 53, "UDP"), backends(("10.0.0.1", 5353))),
        (
            "http",
            Frontend("10.96.0.10", 80, "TCP"),
            backends(("10.0.0.1", 8080), ("10.0.0.2", 8081)),
        ),
    ]


def test_unnamed_port_takes_a_subsets_only_port() -> None:
    eps = endpoints(
        "web",
        "prod",
        subset("10.0.0.1", ports=[{"name": "http", "port": 8080}]),
        subset("10.0.0.2", ports=[{"name": "a", "port": 1}, {"name": "b", "port": 2}]),
    )
    (entry,) = lb_services([svc(clusterIP="10.96.0.10")], eps, [])
    assert entry.backends == backends(("10.0.0.1", 8080))


def test_selectorless_service_with_hand_written_endpoints() -> None:
    eps = endpoints("ext", "prod", subset("198.51.100.7", ports=[{"port": 5432}]))
    (entry,) = lb_services([svc("ext", clusterIP="10.96.0.11", ports=[{"port": 5432}])], eps, [])
    assert entry.backends == backends(("198.51.100.7", 5432))


def test_backends_of_the_frontend_family_only() -> None:
    eps = endpoints("web", "prod", subset("10.0.0.1", "fd00::1", "fd00::0:2"))
    (v6,) = lb_services([svc(clusterIP="fd00:96::a")], eps, [])
    assert v6.backends == backends(("fd00::1", 8080), ("fd00::2", 8080))
    (v4,) = lb_services([svc(clusterIP="10.96.0.10")], eps, [])
    assert v4.backends == backends(("10.0.0.1", 8080))


def test_node_port_frontends_on_node_addresses_of_the_family() -> None:
    service = svc(
        clusterIP="10.96.0.10",
        type="NodePort",
        ports=[{"name": "http", "port": 80, "nodePort": 30080}, {"name": "new", "port": 81}],
    )
    eps = endpoints("web", "prod", subset("10.0.0.1", ports=[{"name": "http", "port": 8080}]))
    nodes = ["192.0.2.2", "fd00:1::0001", "192.0.2.1"]
    table = lb_services([service], eps, nodes)
    assert [(e.port_name, e.kind, e.frontend) for e in table] == [
        ("http", "ClusterIP", Frontend("10.96.0.10", 80, "TCP")),
        ("http", "NodePort", Frontend("192.0.2.1", 30080, "TCP")),
        ("http", "NodePort", Frontend("192.0.2.2", 30080, "TCP")),
        ("new", "ClusterIP", Frontend("10.96.0.10", 81, "TCP")),
    ]
    assert table[1].backends == table[0].backends == backends(("10.0.0.1", 8080))
    v6 = svc(clusterIP="fd00:96::a", type="NodePort", ports=[{"port": 80, "nodePort": 30080}])
    assert [e.frontend.address for e in lb_services([v6], {}, nodes)] == ["fd00:96::a", "fd00:1::1"]


def test_sorted_by_service() -> None:
    services = [
        svc("b", clusterIP="10.96.0.2"),
        svc("a", "prod", clusterIP="10.96.0.3"),
        svc("z", "dev", clusterIP="10.96.0.4"),
    ]
    assert [e.service for e in lb_services(services, {}, [])] == ["dev/z", "prod/a", "prod/b"]


def test_thousand_services_of_ten_backends_is_fast() -> None:
    services = []
    eps: dict[str, Endpoints] = {}
    for i in range(1000):
        name = f"s{i}"
        services.append(
            svc(
                name,
                clusterIP=f"10.96.{i // 250}.{i % 250 + 2}",
                type="NodePort",
                ports=[{"port": 80, "nodePort": 30000 + i}],
            )
        )
        ips = [f"10.{i // 200}.{i % 200}.{j}" for j in range(1, 11)]
        eps.update(endpoints(name, "prod", subset(*ips, ports=[{"port": 8080}])))
    start = time.perf_counter()
    table = lb_services(services, eps, ["192.0.2.1"])
    elapsed = time.perf_counter() - start
    assert len(table) == 2000 and all(len(e.backends) == 10 for e in table)
    assert elapsed < 0.5, f"{elapsed:.3f} s"
