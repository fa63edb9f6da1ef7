"""The desired load-balancer table: every frontend of every service and its backends.

A service port's backends are the ready addresses of its Endpoints object (of the
frontend's family), at the port of each subset named like the service port (an
unnamed port also takes a subset's only port). A NodePort service has one more
frontend per node address of its family, on the port's nodePort.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

from cilia.k8s.manifests import Endpoints, EndpointSubset, Service
from cilia.service.model import Backend, Frontend, Kind, LbService

__all__ = ["endpoints_key", "lb_services", "service_name"]


def service_name(service: Service) -> str:
    """`namespace/name`, as LbService.service."""
    return f"{service.namespace}/{service.name}"


def endpoints_key(service: Service) -> str:
    """The key of the Endpoints object of `service` (`Endpoints/namespace/name`)."""
    return f"Endpoints/{service.namespace}/{service.name}"


def _subset_port(subset: EndpointSubset, name: str) -> int | None:
    for port in subset.ports:
        if (port.name or "") == name:
            return port.port
    if not name and len(subset.ports) == 1:
        return subset.ports[0].port
    return None


def _backends(endpoints: Endpoints | None, name: str, ipv6: bool) -> tuple[Backend, ...]:
    if endpoints is None:
        return ()
    found: set[tuple[str, int]] = set()
    for subset in endpoints.subsets:
        port = _subset_port(subset, name)
        if port is not None:
            found.update((a.ip, port) for a in subset.addresses if (":" in a.ip) == ipv6)
    return tuple(Backend(ip, port) for ip, port in sorted(found))


def lb_services(
    services: Sequence[Service],
    endpoints: Mapping[str, Endpoints],
    node_addresses: Sequence[str],
) -> list[LbService]:
    """The load-balancer entries of `services` (headless ones and those without a
    clusterIP have none), sorted by service, port name, kind and frontend;
    `endpoints` by key; NodePort frontends on every `node_addresses` of the service's
    family (a port without a nodePort yet gets none)."""
    nodes = sorted({str(ipaddress.ip_address(a)) for a in node_addresses})
    nodes_of = {False: [a for a in nodes if ":" not in a], True: [a for a in nodes if ":" in a]}
    out: list[LbService] = []
    for svc in services:
        spec = svc.spec
        cluster_ip = spec.clusterIP
        if not cluster_ip or cluster_ip == "None":
            continue
        ipv6 = ":" in cluster_ip
        name = service_name(svc)
        ep = endpoints.get(endpoints_key(svc))
        for port in spec.ports:
            backends = _backends(ep, port.port_name, ipv6)
            frontends: list[tuple[Kind, Frontend]] = [
                ("ClusterIP", Frontend(cluster_ip, port.port, port.protocol))
            ]
            if spec.type == "NodePort" and port.nodePort is not None:
                frontends += [
                    ("NodePort", Frontend(node, port.nodePort, port.protocol))
                    for node in nodes_of[ipv6]
                ]
            out += [LbService(name, port.port_name, k, f, backends) for k, f in frontends]
    out.sort(key=lambda s: (s.service, s.port_name, s.kind, s.frontend))
    return out
