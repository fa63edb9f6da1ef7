"""The node's router address towards its pods: an address of the node's pod range.

Pure, so the agent's configuration and the cluster's node records agree on it.
"""

from __future__ import annotations

import ipaddress


def default_router_ip(pod_cidr: str) -> str:
    """The last usable address of the pod range."""
    return str(ipaddress.IPv4Network(pod_cidr)[-2])


def router_ip(pod_cidr: str, configured: str = "") -> str:
    """The configured router address, or the default of the range."""
    return configured or default_router_ip(pod_cidr)


def router_ip_problem(pod_cidr: str, address: str) -> str | None:
    """Why `address` cannot be the router of `pod_cidr`, or None."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return f"{address!r} is not an IPv4 address"
    net = ipaddress.IPv4Network(pod_cidr)
    if ip not in net:
        return f"{address} is not inside the pod range {pod_cidr}"
    if ip in (net.network_address, net.broadcast_address):
        return f"{address} is the network or broadcast address of {pod_cidr}"
    return None
