"""The types the service code shares with the datapath and the agent."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Protocol = Literal["TCP", "UDP"]
Kind = Literal["ClusterIP", "NodePort"]

DEFAULT_NODE_PORTS = (30000, 32767)


@dataclass(frozen=True, order=True)
class Backend:
    """Where a frontend's traffic goes."""

    address: str
    """An IP address of either family, as ipaddress writes it (compressed)."""
    port: int


@dataclass(frozen=True, order=True)
class Frontend:
    """An address, port and protocol that is load-balanced."""

    address: str
    port: int
    protocol: Protocol


@dataclass(frozen=True)
class LbService:
    """One frontend of one service port and the backends it leads to."""

    service: str
    """`namespace/name`"""
    port_name: str
    """"" for an unnamed port"""
    kind: Kind
    """ClusterIP frontend, or a node address:nodePort frontend"""
    frontend: Frontend
    backends: tuple[Backend, ...]
    """sorted, no repeats"""


@dataclass(frozen=True)
class PodInfo:
    """What the endpoints controller needs to know of one pod."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    ipv4: str
    ipv6: str
    """"" when none"""
    ready: bool
    node: str
    ports: Mapping[str, tuple[int, Protocol]]
    """the pod's named container ports"""


class ServiceError(ValueError):
    """A service the allocator refuses: `obj` (`service/ns/name`), `field`, `reason`."""

    def __init__(self, obj: str, field: str, reason: str) -> None:
        super().__init__(f"{obj}: {field}: {reason}")
        self.obj = obj
        self.field = field
        self.reason = reason


def _network(cidr: str, version: int, name: str) -> None:
    try:
        net = ipaddress.ip_network(cidr)
    except ValueError as err:
        raise ValueError(f"{name}: invalid CIDR {cidr!r}: {err}") from None
    if net.version != version:
        raise ValueError(f"{name}: {cidr!r} is not an IPv{version} range")
    if net.num_addresses < 4:
        raise ValueError(f"{name}: {cidr!r} has no address to allocate")


@dataclass(frozen=True)
class ServiceRanges:
    """Where clusterIPs and nodePorts come from; checked when made."""

    cidr4: str
    """e.g. "10.96.0.0/16" """
    cidr6: str = ""
    """"" when IPv6 is off"""
    node_ports: tuple[int, int] = DEFAULT_NODE_PORTS
    """inclusive"""

    def __post_init__(self) -> None:
        _network(self.cidr4, 4, "cidr4")
        if self.cidr6:
            _network(self.cidr6, 6, "cidr6")
        lo, hi = self.node_ports
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(f"node_ports: {lo}-{hi} is not a range within 1-65535")
