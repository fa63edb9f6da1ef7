"""The endpoints controller: the Endpoints object of a Service that selects pods.

As Kubernetes does it: the pods of the service's namespace whose labels carry every
selector entry (an empty selector picks them all), by their address of the service's
family; ready pods under `addresses`, the others under `notReadyAddresses`. Each
service port goes to its numeric targetPort, or to the pod's container port of that
name and protocol (a pod without one is left out of that port); pods that serve the
same ports share a subset.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from cilia.k8s.manifests import (
    EndpointAddress,
    EndpointPort,
    Endpoints,
    EndpointSubset,
    ObjectMeta,
    ObjectReference,
    Pod,
    Service,
    ServicePort,
)
from cilia.service.model import PodInfo, Protocol

__all__ = ["endpoints_for", "pod_info"]


def _ready(status: Mapping[str, Any]) -> bool:
    """Whether a status row's `ready` is "n/n" with n > 0."""
    ready, slash, total = str(status.get("ready", "")).partition("/")
    return bool(slash) and ready.isdigit() and ready == total and int(total) > 0


def pod_info(pod: Pod, status: Mapping[str, Any] | None) -> PodInfo:
    """What the controller needs of `pod`, given its status row (`Agent.pod_status`;
    None when no node reported it): ready when all its containers are and it has an
    address."""
    status = status or {}
    ipv4 = str(status.get("ipv4") or "")
    ipv6 = str(status.get("ipv6") or "")
    ports: dict[str, tuple[int, Protocol]] = {}
    for container in pod.spec.containers:
        for port in container.ports:
            if port.name:
                ports.setdefault(port.name, (port.containerPort, port.protocol))
    return PodInfo(
        namespace=pod.namespace,
        name=pod.name,
        labels=dict(pod.metadata.labels),
        ipv4=ipv4,
        ipv6=ipv6,
        ready=bool(ipv4 or ipv6) and _ready(status),
        node=str(status.get("node") or pod.spec.nodeName or ""),
        ports=ports,
    )


def _target(port: ServicePort, pod: PodInfo) -> int | None:
    """The pod's port for a service port, or None when it has none of that name."""
    target = port.target
    if isinstance(target, int):
        return target
    named = pod.ports.get(target)
    return named[0] if named is not None and named[1] == port.protocol else None


def _address(pod: PodInfo, ip: str) -> EndpointAddress:
    return EndpointAddress(
        ip=ip,
        nodeName=pod.node or None,
        targetRef=ObjectReference(kind="Pod", namespace=pod.namespace, name=pod.name),
    )


def _port_key(port: EndpointPort) -> tuple[str, int, str]:
    return port.name or "", port.port, port.protocol


def _addresses(found: list[tuple[PodInfo, str]]) -> list[EndpointAddress]:
    """Sorted by address (numerically), then pod name."""
    found.sort(key=lambda item: (int(ipaddress.ip_address(item[1])), item[0].name))
    return [_address(pod, ip) for pod, ip in found]


def endpoints_for(service: Service, pods: Iterable[PodInfo]) -> Endpoints | None:
    """The Endpoints object of `service` (named like it, with its labels); None for a
    service without a selector, whose Endpoints are written by hand."""
    selector = service.spec.selector
    if selector is None:
        return None
    ipv6 = service.spec.family == "IPv6"
    groups: dict[tuple[EndpointPort, ...], tuple[list[tuple[PodInfo, str]], ...]] = {}
    for pod in pods:
        if pod.namespace != service.namespace:
            continue
        if any(pod.labels.get(key) != value for key, value in selector.items()):
            continue
        ip = pod.ipv6 if ipv6 else pod.ipv4
        if not ip:
            continue
        ports: list[EndpointPort] = []
        for port in service.spec.ports:
            number = _target(port, pod)
            if number is not None:
                ports.append(EndpointPort(name=port.name, port=number, protocol=port.protocol))
        if service.spec.ports and not ports:
            continue
        ready, not_ready = groups.setdefault(tuple(sorted(ports, key=_port_key)), ([], []))
        (ready if pod.ready else not_ready).append((pod, ip))
    subsets = [
        EndpointSubset(
            addresses=_addresses(ready), notReadyAddresses=_addresses(not_ready), ports=list(key)
        )
        for key, (ready, not_ready) in sorted(
            groups.items(), key=lambda item: [_port_key(p) for p in item[0]]
        )
    ]
    return Endpoints(
        apiVersion="v1",
        kind="Endpoints",
        metadata=ObjectMeta(
            name=service.name, namespace=service.namespace, labels=dict(service.metadata.labels)
        ),
        subsets=subsets,
    )
