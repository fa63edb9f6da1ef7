"""clusterIP and nodePort allocation, as the Kubernetes API server does it on apply.

A re-applied service keeps what it was given; a new one gets the lowest free
address of its family's range (never the network address, the first host
address, which Kubernetes keeps for its own service, nor IPv4's broadcast
address) and the lowest free nodePorts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from cilia.k8s.manifests import Service, ServicePort, display
from cilia.service.model import ServiceError, ServiceRanges

__all__ = ["ServiceError", "allocate"]


class _Addresses:
    """The addresses of one family's range and who holds them."""

    def __init__(self, cidr: str) -> None:
        self.net = ipaddress.ip_network(cidr)
        first = int(self.net.network_address)
        last = int(self.net.broadcast_address)
        self.lowest = first + 2
        self.highest = last - 1 if self.net.version == 4 else last
        self.holders: dict[int, str] = {}
        self.cursor = self.lowest
        """Every address below it is held (nothing is released during a run)."""

    def check(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        """Why `address` cannot be asked for, or None."""
        if address not in self.net:
            return f"{address} is not in the service range {self.net}"
        if address == self.net.network_address:
            return f"{address} is the network address of {self.net}"
        if self.net.version == 4 and address == self.net.broadcast_address:
            return f"{address} is the broadcast address of {self.net}"
        return None

    def take_lowest(self, holder: str) -> str | None:
        """The lowest free address, now held by `holder`; None when the range is full."""
        while self.cursor <= self.highest and self.cursor in self.holders:
            self.cursor += 1
        if self.cursor > self.highest:
            return None
        self.holders[self.cursor] = holder
        return str(ipaddress.ip_address(self.cursor))


class _NodePorts:
    """The nodePort range and who holds which (port, protocol)."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self.holders: dict[tuple[int, str], str] = {}
        self.held: dict[str, list[tuple[int, str]]] = {}
        """What each holder holds."""
        self.numbers: dict[int, int] = {}
        """How many protocols hold each port number."""
        self.cursor = lo
        """Every port number below it is held by some protocol."""

    def holder(self, port: int, protocol: str) -> str | None:
        """Who holds (port, protocol), or None."""
        return self.holders.get((port, protocol))

    def hold(self, port: int, protocol: str, holder: str) -> None:
        """Give (port, protocol) to `holder` unless somebody holds it."""
        if (port, protocol) in self.holders:
            return
        self.holders[(port, protocol)] = holder
        self.held.setdefault(holder, []).append((port, protocol))
        self.numbers[port] = self.numbers.get(port, 0) + 1

    def release(self, holder: str) -> None:
        """Free everything `holder` holds."""
        for port, protocol in self.held.pop(holder, []):
            del self.holders[(port, protocol)]
            self.numbers[port] -= 1
            if not self.numbers[port]:
                del self.numbers[port]
                self.cursor = min(self.cursor, port)

    def take_lowest(self, protocol: str, holder: str) -> int | None:
        """The lowest port number no protocol holds, or None when none is left."""
        while self.cursor <= self.hi and self.cursor in self.numbers:
            self.cursor += 1
        if self.cursor > self.hi:
            return None
        self.hold(self.cursor, protocol, holder)
        return self.cursor


class _Allocator:
    def __init__(self, stored: Sequence[Service], ranges: ServiceRanges) -> None:
        self.ranges = ranges
        self.families = {"IPv4": _Addresses(ranges.cidr4)}
        if ranges.cidr6:
            self.families["IPv6"] = _Addresses(ranges.cidr6)
        self.node_ports = _NodePorts(*ranges.node_ports)
        self.current: dict[str, Service] = {}
        for svc in stored:
            self._record(svc)

    def _record(self, svc: Service) -> None:
        """Note what a stored service holds (as it is: it is not checked again)."""
        self.current[svc.key] = svc
        who = display(svc)
        ip = svc.spec.clusterIP
        if ip and ip != "None":
            address = ipaddress.ip_address(ip)
            pool = self.families.get(f"IPv{address.version}")
            if pool is not None:
                pool.holders[int(address)] = who
        for port in svc.spec.ports:
            if port.nodePort is not None:
                self.node_ports.hold(port.nodePort, port.protocol, who)

    def allocate(self, svc: Service) -> Service:
        old = self.current.get(svc.key)
        who = display(svc)
        update: dict[str, object] = {}
        cluster_ip = self._cluster_ip(svc, old, who)
        if cluster_ip != svc.spec.clusterIP:
            update["clusterIP"] = cluster_ip
        self.node_ports.release(who)
        if svc.spec.type == "NodePort":
            ports = self._node_ports(svc, old, who)
            if ports != svc.spec.ports:
                update["ports"] = ports
        done = svc.model_copy(update={"spec": svc.spec.model_copy(update=update)})
        self.current[svc.key] = done
        return done

    def _cluster_ip(self, svc: Service, old: Service | None, who: str) -> str | None:
        given = svc.spec.clusterIP
        before = old.spec.clusterIP if old is not None else None
        if given and before and given != before:
            raise ServiceError(who, "spec.clusterIP", f"field is immutable (it is {before})")
        if before:
            if svc.spec.ipFamilies and before != "None" and svc.spec.family != _family(before):
                raise ServiceError(
                    who, "spec.ipFamilies", f"field is immutable (the clusterIP is {before})"
                )
            return before
        if svc.spec.ipFamilies and svc.spec.family not in self.families:
            raise ServiceError(who, "spec.ipFamilies", "IPv6 is not enabled")
        if given == "None":
            return given
        family = _family(given) if given else svc.spec.family
        pool = self.families.get(family)
        if pool is None:
            raise ServiceError(who, "spec.clusterIP", "IPv6 is not enabled")
        if given is None:
            taken = pool.take_lowest(who)
            if taken is None:
                raise ServiceError(who, "spec.clusterIP", f"no free address in {pool.net}")
            return taken
        address = ipaddress.ip_address(given)
        if reason := pool.check(address):
            raise ServiceError(who, "spec.clusterIP", reason)
        holder = pool.holders.get(int(address))
        if holder is not None and holder != who:
            raise ServiceError(who, "spec.clusterIP", f"{given} is already in use by {holder}")
        pool.holders[int(address)] = who
        return given

    def _node_ports(self, svc: Service, old: Service | None, who: str) -> list[ServicePort]:
        pool = self.node_ports
        lo, hi = self.ranges.node_ports
        for index, port in enumerate(svc.spec.ports):
            if port.nodePort is None:
                continue
            field = f"spec.ports[{index}].nodePort"
            if not lo <= port.nodePort <= hi:
                raise ServiceError(who, field, f"{port.nodePort} is not in the range {lo}-{hi}")
            holder = pool.holder(port.nodePort, port.protocol)
            if holder is not None:
                raise ServiceError(
                    who, field, f"{port.nodePort}/{port.protocol} is already in use by {holder}"
                )
            pool.hold(port.nodePort, port.protocol, who)
        previous: dict[str, int | None] = {}
        if old is not None and old.spec.type == "NodePort":
            previous = {p.port_name: p.nodePort for p in old.spec.ports}
        out: list[ServicePort] = []
        for index, port in enumerate(svc.spec.ports):
            if port.nodePort is None:
                number = previous.get(port.port_name)
                if number is None or pool.holder(number, port.protocol) is not None:
                    number = pool.take_lowest(port.protocol, who)
                    if number is None:
                        raise ServiceError(
                            who, f"spec.ports[{index}].nodePort", f"no free port in {lo}-{hi}"
                        )
                else:
                    pool.hold(number, port.protocol, who)
                port = port.model_copy(update={"nodePort": number})
            out.append(port)
        return out


def _family(address: str) -> str:
    return "IPv6" if ":" in address else "IPv4"


def allocate(
    new: Sequence[Service], stored: Sequence[Service], ranges: ServiceRanges
) -> list[Service]:
    """`new` in the same order with `spec.clusterIP` and every NodePort port's nodePort
    filled in, given the `stored` services (those of the same key are re-applied);
    raises ServiceError naming the first service and field refused."""
    allocator = _Allocator(stored, ranges)
    return [allocator.allocate(svc) for svc in new]
