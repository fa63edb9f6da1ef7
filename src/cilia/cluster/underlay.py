"""The underlay joining the node namespaces: a bridge in the host namespace with one veth
per node (host end a bridge port, node end `ul0` inside the node's namespace).

The bridge gets the first address of a /24 in 198.19.0.0/16 that nothing on the host
uses (the conformance suite's outside namespaces are in 198.18.0.0/16); it is the
nodes' default gateway, so they reach etcd on it as a machine reaches its servers.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cilia.cluster.state import UNDERLAY_DEVICE, ClusterError
from cilia.datapath.netns import create_netns, netns_path, setns

SUBNET_POOL = ipaddress.IPv4Network("198.19.0.0/16")
LOCK_FILE = "/run/lock/cilia-cluster-underlay.lock"


@contextmanager
def subnet_lock() -> Iterator[None]:
    """Held while a cluster picks its subnet and claims it, so two `up`s never share one."""
    os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
    with open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _used_networks(ipr: IPRoute) -> list[ipaddress.IPv4Network]:
    used = [
        ipaddress.IPv4Network(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}", strict=False)
        for a in ipr.addr("dump", family=socket.AF_INET)
    ]
    used += [
        ipaddress.IPv4Network(f"{r.get('RTA_DST') or '0.0.0.0'}/{r['dst_len']}")
        for r in ipr.route("dump", family=socket.AF_INET)
        if r["dst_len"] > 0
    ]
    return used


def free_subnet(tag: str) -> ipaddress.IPv4Network:
    """A /24 of 198.19.0.0/16 no host address or route overlaps, starting from the tag's."""
    subnets = list(SUBNET_POOL.subnets(new_prefix=24))
    start = int(tag, 16) % len(subnets)
    with IPRoute() as ipr:
        used = _used_networks(ipr)
    for i in range(len(subnets)):
        candidate = subnets[(start + i) % len(subnets)]
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise ClusterError(f"no free /24 left in {SUBNET_POOL} for the underlay")


def create_bridge(name: str, address: str, prefixlen: int, mac: str) -> None:
    """The bridge, up, with its address; bridged packets skip iptables (a plain switch).

    A fixed MAC keeps the nodes' neighbour entries valid as ports come and go."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="bridge", address=mac, br_nf_call_iptables=0)
        index = ipr.link_lookup(ifname=name)[0]
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
        ipr.link("set", index=index, state="up")


def attach_node(
    bridge: str, host_device: str, netns: str, address: str, prefixlen: int, gateway: str
) -> None:
    """Create the node's namespace and its underlay veth: `address` on `ul0`, lo up,
    default route via `gateway`."""
    path = create_netns(netns)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with IPRoute() as ipr:
            peer = {"ifname": UNDERLAY_DEVICE, "net_ns_fd": fd}
            ipr.link("add", ifname=host_device, kind="veth", peer=peer)
            index = ipr.link_lookup(ifname=host_device)[0]
            master = ipr.link_lookup(ifname=bridge)[0]
            ipr.link("set", index=index, master=master, state="up")
    finally:
        os.close(fd)
    with setns(netns_path(netns)), IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        index = ipr.link_lookup(ifname=UNDERLAY_DEVICE)[0]
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
        ipr.link("set", index=index, state="up")
        ipr.route("add", dst="0.0.0.0/0", gateway=gateway)


def remove_devices(prefix: str) -> list[str]:
    """Delete every host device whose name starts with `prefix` (a veth takes its peer
    along); returns their names."""
    removed: list[str] = []
    with IPRoute() as ipr:
        for link in ipr.link("dump"):
            name = link.get("IFLA_IFNAME")
            if name and name.startswith(prefix):
                with suppress(NetlinkError):  # gone meanwhile (a peer removed with its veth)
                    ipr.link("del", index=link["index"])
                    removed.append(name)
    return sorted(removed)
