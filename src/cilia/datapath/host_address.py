"""The node's router address towards its pods: a /32 on `lo`, the source of host traffic."""

from __future__ import annotations

import errno

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

LOOPBACK = "lo"


def _lo_index(ipr: IPRoute) -> int:
    return int(ipr.link_lookup(ifname=LOOPBACK)[0])


def ensure_host_address(ipv4: str) -> None:
    """Add `ipv4/32` to `lo` (idempotent)."""
    with IPRoute() as ipr:
        try:
            ipr.addr("add", index=_lo_index(ipr), address=ipv4, prefixlen=32)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise


def remove_host_address(ipv4: str) -> bool:
    """Remove `ipv4/32` from `lo`; True if it was there."""
    with IPRoute() as ipr:
        try:
            ipr.addr("del", index=_lo_index(ipr), address=ipv4, prefixlen=32)
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
