"""The node's VXLAN device in external (collect_md) mode, and host routes through it.

One device per node carries every packet to other nodes' pods. The datapath sets
each packet's tunnel key (remote node, VNI = source identity), so the device has
no remote, VNI or forwarding database of its own, and learns nothing. It is NOARP:
inner destination MACs are never resolved (the receiving program makes the stack
take every packet as its own). The node's own processes reach other nodes' pods
through routes ``<range> dev <vxlan> mtu <base - 50>``.

Like pod_network, everything works in the network namespace of the calling thread
and is idempotent: an existing device is modified, never re-created, unless it is
not an external VXLAN device on the wanted port (attributes the kernel cannot change).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Iterable
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cilia.datapath.pod_network import (
    MAIN_TABLE,
    get_link,
    link_kind,
    route_mtu,
    set_interface_sysctl,
)

log = logging.getLogger("cilia.datapath")

VXLAN_PORT = 8472
"""Linux's historical VXLAN port, which the reference uses."""
VXLAN_OVERHEAD = 50
"""Outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14 bytes."""
IFF_UP = 0x1
IFF_NOARP = 0x80
SCOPE_LINK = 253


def _vxlan_data(link: Any) -> dict[str, Any]:
    info = link.get("IFLA_LINKINFO")
    data = info.get("IFLA_INFO_DATA") if info is not None else None
    return {} if data is None else dict(data["attrs"])


def _reusable(link: Any, port: int) -> bool:
    """Is the link an external VXLAN device on `port` (what changelink cannot alter)?"""
    data = _vxlan_data(link)
    return (
        link_kind(link) == "vxlan"
        and bool(data.get("IFLA_VXLAN_COLLECT_METADATA"))
        and data.get("IFLA_VXLAN_PORT") == port
    )


def ensure_overlay_device(ifname: str, port: int = VXLAN_PORT, mtu: int = 1500) -> int:
    """Create (or reuse and fix) the node's VXLAN device: up, NOARP, forwarding; its ifindex."""
    with IPRoute() as ipr:
        link = get_link(ipr, ifname=ifname)
        if link is not None and not _reusable(link, port):
            log.warning(
                "%s is not an external VXLAN device on port %d: re-creating it", ifname, port
            )
            ipr.link("del", index=link["index"])
            link = None
        if link is None:
            ipr.link(
                "add",
                ifname=ifname,
                kind="vxlan",
                vxlan_collect_metadata=1,
                vxlan_port=port,
                vxlan_learning=0,
                mtu=mtu,
            )
            link = get_link(ipr, ifname=ifname)
            assert link is not None
        index = int(link["index"])
        if _vxlan_data(link).get("IFLA_VXLAN_LEARNING"):
            ipr.link("set", index=index, kind="vxlan", vxlan_learning=0)
        if link.get("IFLA_MTU") != mtu:
            ipr.link("set", index=index, mtu=mtu)
        if link["flags"] & (IFF_UP | IFF_NOARP) != IFF_UP | IFF_NOARP:
            ipr.link("set", index=index, flags=IFF_UP | IFF_NOARP, change=IFF_UP | IFF_NOARP)
    set_interface_sysctl(ifname, "forwarding", "1")
    return index


def remove_overlay_device(ifname: str) -> bool:
    """Delete the VXLAN device (its routes go with it); True if it existed.

    A device of that name that is not VXLAN is left alone.
    """
    with IPRoute() as ipr:
        link = get_link(ipr, ifname=ifname)
        if link is None or link_kind(link) != "vxlan":
            return False
        try:
            ipr.link("del", index=link["index"])
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return False
            raise
    return True


def normalize_prefix(prefix: str) -> str:
    """'a.b.c.d/len' (or 'x::/len') of a prefix or bare address (host bits cleared)."""
    return str(ipaddress.ip_network(prefix, strict=False))


def sync_routes(
    ifindex: int,
    prefixes: Iterable[str],
    mtu: int,
    src: str | None = None,
    src6: str | None = None,
) -> tuple[int, int]:
    """Make the main-table routes through the device exactly `prefixes` (either
    family), each with `mtu` and preferred source `src` (`src6` for IPv6 ones);
    returns (written, removed)."""
    wanted = {normalize_prefix(p) for p in prefixes}
    with IPRoute() as ipr:
        have: dict[str, Any] = {}
        for family, anywhere in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            for r in ipr.route("dump", family=family, table=MAIN_TABLE):
                if r.get("RTA_OIF") == ifindex and r.get("RTA_TABLE", MAIN_TABLE) == MAIN_TABLE:
                    if r.get("RTA_DST", anywhere).startswith("fe80:"):
                        continue  # the device's own link-local route
                    have[f"{r.get('RTA_DST', anywhere)}/{r['dst_len']}"] = r
        stale = [p for p in have if p not in wanted]
        written = [
            p
            for p in sorted(wanted)
            if p not in have
            or route_mtu(have[p]) != mtu
            or have[p].get("RTA_PREFSRC") != (src6 if ":" in p else src)
        ]
        for prefix in written:
            v6 = ":" in prefix
            prefsrc = src6 if v6 else src
            spec: dict[str, Any] = {"dst": prefix, "oif": ifindex, "table": MAIN_TABLE}
            spec |= {"metrics": {"mtu": mtu}} | ({} if v6 else {"scope": SCOPE_LINK})
            spec |= {"family": socket.AF_INET6 if v6 else socket.AF_INET}
            ipr.route("replace", **spec | ({"prefsrc": prefsrc} if prefsrc else {}))
        for prefix in stale:
            v6 = ":" in prefix
            try:
                ipr.route(
                    "del",
                    dst=prefix,
                    oif=ifindex,
                    table=MAIN_TABLE,
                    scope=have[prefix]["scope"],
                    family=socket.AF_INET6 if v6 else socket.AF_INET,
                )
            except NetlinkError as exc:
                if exc.code not in (errno.ESRCH, errno.ENOENT):
                    raise  # else someone removed it first
    return len(written), len(stale)
