"""The node's router addresses towards its pods: a /32 (and with IPv6 a /128) on `lo`,
the source of host traffic to pods."""

from __future__ import annotations

import errno

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

LOOPBACK = "lo"


def _lo_index(ipr: IPRoute) -> int:
    return int(ipr.link_lookup(ifname=LOOPBACK)[0])


IPV6_FORWARDING = "/proc/sys/net/ipv6/conf/all/forwarding"


def _host_len(ip: str) -> int:
    return 128 if ":" in ip else 32


def ensure_host_address(ip: str) -> None:
    """Add `ip/32` (or `ip/128`) to `lo` (idempotent)."""
    with IPRoute() as ipr:
        try:
            ipr.addr("add", index=_lo_index(ipr), address=ip, prefixlen=_host_len(ip))
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise


def enable_ipv6_routing(router_ipv6: str) -> None:
    """The IPv6 router address on `lo`, and IPv6 forwarding, which unlike IPv4's is
    node-wide in Linux (pods' packets are routed between their devices)."""
    ensure_host_address(router_ipv6)
    with open(IPV6_FORWARDING) as f:
        if f.read().strip() == "1":
            return
    with open(IPV6_FORWARDING, "w") as f:
        f.write("1")


def remove_host_address(ip: str) -> bool:
    """Remove `ip/32` (or `ip/128`) from `lo`; True if it was there."""
    with IPRoute() as ipr:
        try:
            ipr.addr("del", index=_lo_index(ipr), address=ip, prefixlen=_host_len(ip))
        except NetlinkError as exc:
            if exc.code in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                return False
            raise
    return True


def device_ipv4(ifname: str) -> str:
    """The first IPv4 address of a device (the node's tunnel endpoint on its underlay)."""
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)
        if not index:
            raise ValueError(f"underlay device {ifname!r} does not exist")
        for addr in ipr.get_addr(family=2, index=index[0]):
            return str(addr.get_attr("IFA_ADDRESS"))
    raise ValueError(f"underlay device {ifname!r} has no IPv4 address")
