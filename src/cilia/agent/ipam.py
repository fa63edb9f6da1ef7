"""Address management for the node's pod ranges (one per family)."""

from __future__ import annotations

import ipaddress


class IpamExhausted(RuntimeError):
    """No free address is left in the pod range."""


class Ipam:
    """Hands out the lowest free host address of a range."""

    def __init__(self, cidr: str, used: set[str] | None = None) -> None:
        self.network = ipaddress.ip_network(cidr)
        self.used: set[str] = set(used or ())

    def allocate(self) -> str:
        """Reserve and return a free address."""
        for host in self.network.hosts():
            ip = str(host)
            if ip not in self.used:
                self.used.add(ip)
                return ip
        raise IpamExhausted(f"pod range {self.network} has no free address")

    def release(self, ip: str) -> None:
        """Return an address to the pool."""
        self.used.discard(ip)
