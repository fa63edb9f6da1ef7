"""The node's router address towards its pods: an address of the node's pod range.

Pure, so the agent's configuration and the cluster's node records agree on it.
"""

from __future__ import annotations

import ipaddress


def default_router_ip(pod_cidr: str) -> str:
    """The last usable address of the pod range (IPv6 has no broadcast address)."""
    net = ipaddress.ip_network(pod_cidr)
    return str(net[-2] if net.version == 4 else net[-1])


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


IPV6_RANGE = "fd00:c1a::/96"
"""The IPv6 pod range of a node alone: the first /96 of the default cluster /64."""
IPV6_CLUSTER_ALLOC_CIDR = "fd00:c1a::/64"
IPV6_NODE_PREFIX = 96
"""Each node's IPv6 pod range in cluster mode (the reference's /96 out of a /64)."""
_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def valid_ipv6_range(value: str, longest: int) -> str:
    """`value` normalized, or ValueError naming why it cannot hold pod addresses."""
    try:
        net = ipaddress.IPv6Network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv6 network: {exc}") from None
    if net.prefixlen > longest:
        raise ValueError(f"{net} is narrower than /{longest}")
    if net.is_link_local or net.is_multicast or net.is_loopback or net.overlaps(_V4_MAPPED):
        raise ValueError(f"{net} is link-local, multicast, loopback or IPv4-mapped")
    return str(net)


def node_ipv6_range(cluster_pod_cidr: str, node_pod_cidr: str, ipv6_cluster_cidr: str) -> str:
    """A node's IPv6 pod range: the /96 of the cluster's IPv6 /64 with the index its IPv4
    range has in the cluster's IPv4 range (unique as the IPv4 claims are, no claim of its
    own needed)."""
    cluster = ipaddress.IPv4Network(cluster_pod_cidr)
    node = ipaddress.IPv4Network(node_pod_cidr)
    index = (int(node.network_address) - int(cluster.network_address)) >> (32 - node.prefixlen)
    base = ipaddress.IPv6Network(ipv6_cluster_cidr)
    step = 1 << (128 - IPV6_NODE_PREFIX)
    return str(ipaddress.IPv6Network((int(base.network_address) + index * step, IPV6_NODE_PREFIX)))
