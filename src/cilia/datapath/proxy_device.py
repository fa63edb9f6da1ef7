"""The node's proxy device: where host traffic to an L7 port meets the proxy.

Only a tc ingress hook can assign a packet to a socket. Pods' packets pass one
at their veth; packets of the node's own processes (and routed ones) to a
local pod do not, so `cilia_to_container` bounces those into the ingress of
this device, whose `cilia_from_host` program assigns them to the proxy.
They carry a local source address, hence `accept_local` (IPv4 only: IPv6 has
no such check, it only needs IPv6 on the device). The device is one end of a
veth pair (the kernel here has no dummy devices); the other end is idle.
"""

from __future__ import annotations

import errno
import hashlib

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cilia.datapath.pod_network import set_interface_sysctl


def proxy_device_name(name_prefix: str) -> str:
    """The device of the agent with `name_prefix`: 'cpx' + 12 hex digits (15 chars)."""
    return "cpx" + hashlib.sha1(name_prefix.encode()).hexdigest()[:12]


def ensure_proxy_device(ifname: str) -> int:
    """Create (or reuse) the device, up, accepting local sources of both families; its
    ifindex."""
    peer = "cpy" + ifname[3:]
    with IPRoute() as ipr:
        if not ipr.link_lookup(ifname=ifname):
            ipr.link("add", ifname=ifname, kind="veth", peer={"ifname": peer})
        for name in (peer, ifname):
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
        index = int(ipr.link_lookup(ifname=ifname)[0])
    set_interface_sysctl(ifname, "accept_local", "1")
    set_interface_sysctl(ifname, "rp_filter", "0")
    set_interface_sysctl(ifname, "disable_ipv6", "0", family="ipv6")
    return index


def remove_proxy_device(ifname: str) -> bool:
    """Delete the device (and so its peer); True if it existed."""
    with IPRoute() as ipr:
        try:
            ipr.link("del", ifname=ifname)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return False
            raise
    return True
