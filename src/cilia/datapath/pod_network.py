"""Pod plumbing: a namespace joined to the host by a veth pair with /32 routing.

Pod side: ``eth0`` with ``<ip>/32``, ``lo`` up, ``169.254.1.1 dev eth0 scope link``,
``default via 169.254.1.1`` and a permanent neighbour 169.254.1.1 -> host-side MAC.
A dual-stack pod also gets ``<ipv6>/128`` (no duplicate address detection, so it is
usable at once), ``default via fe80::1`` and a permanent neighbour fe80::1 -> host-side
MAC. In tunnel mode the routes carry a lower MTU than the device (the VXLAN overhead),
so the pod receives full-size packets but sends what fits the tunnel.
Host side: ``<ip>/32`` (and ``<ipv6>/128``) ``dev <host_ifname>``, permanent neighbours
to the pod MAC and per-device IPv4 forwarding (IPv6 forwarding is node-wide, turned on
by the agent when IPv6 is enabled).

Everything is idempotent and reuses what exists (agent restarts must not disturb
running pods). The functions are synchronous (pyroute2's sync API): from asyncio code
call them through ``asyncio.to_thread``; called on an event loop thread they still
work but block it while running in a helper thread.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cilia.datapath.netns import create_netns, delete_netns, is_netns, resolve_netns, setns

GATEWAY_IP = "169.254.1.1"
GATEWAY_IPV6 = "fe80::1"
IFA_F_NODAD = 0x02
POD_IFNAME = "eth0"
IFNAMSIZ = 15
LOOPBACK_IFINDEX = 1  # the kernel registers every namespace's lo first
RTM_F_FIB_MATCH = 0x2000
MAIN_TABLE = 254

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class PodNetwork:
    """What ``ensure_pod_network`` set up (``netns`` is the namespace name)."""

    netns: str
    host_ifname: str
    host_ifindex: int
    host_mac: str
    pod_mac: str
    ipv4: str
    mtu: int
    route_mtu: int | None = None
    pod_ifname: str = POD_IFNAME
    ipv6: str = ""

    def to_dict(self) -> dict[str, Any]:
        # Every field is a str or int: a plain copy does what asdict's deep copy did, at a
        # fraction of the cost (the state of every endpoint is saved after each change).
        return dict(vars(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PodNetwork:
        return cls(
            netns=str(data["netns"]),
            host_ifname=str(data["host_ifname"]),
            host_ifindex=int(data["host_ifindex"]),
            host_mac=str(data["host_mac"]),
            pod_mac=str(data["pod_mac"]),
            ipv4=str(data["ipv4"]),
            mtu=int(data["mtu"]),
            route_mtu=None if data.get("route_mtu") is None else int(data["route_mtu"]),
            pod_ifname=str(data.get("pod_ifname", POD_IFNAME)),
            ipv6=str(data.get("ipv6", "")),
        )


def _off_loop(fn: Callable[P, R]) -> Callable[P, R]:
    """Run *fn* in a helper thread when called on a thread with a running event loop
    (pyroute2's sync API cannot run there)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args, **kwargs)
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(fn, *args, **kwargs).result()

    return wrapper


@contextmanager
def _ipr(path: str | None = None) -> Iterator[Any]:
    """An IPRoute on the host, or in the namespace at *path* (netlink socket made there)."""
    if path is None:
        ipr = IPRoute()
    else:
        with setns(path):
            nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
        ipr = IPRoute(fileno=nl.detach())
    try:
        yield ipr
    finally:
        ipr.close()


def get_link(ipr: Any, **match: Any) -> Any | None:
    """The link matching *match* (``ifname=`` or ``index=``), or None."""
    try:
        links = ipr.link("get", **match)
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    return links[0] if links else None


def link_kind(link: Any) -> str | None:
    """``veth``, ``vxlan``... of a link message (None for devices without a kind)."""
    info = link.get("IFLA_LINKINFO")
    return None if info is None else info.get("IFLA_INFO_KIND")


def _validate(ifnames: tuple[str, ...], ipv4: str, ipv6: str, *mtus: int | None) -> None:
    ipaddress.IPv4Address(ipv4)  # ValueError on bad input, before anything is created
    if ipv6:
        ipaddress.IPv6Address(ipv6)
    for name in ifnames:
        if not 0 < len(name) <= IFNAMSIZ or any(c in name for c in "/: \t\n"):
            raise ValueError(f"invalid interface name {name!r}")
    for mtu in mtus:
        if mtu is not None and not 68 <= mtu <= 65535:
            raise ValueError(f"invalid MTU {mtu}")


def set_interface_sysctl(ifname: str, key: str, value: str, family: str = "ipv4") -> None:
    """Set net.<family>.conf.<ifname>.<key> (written only when it differs)."""
    path = f"/proc/sys/net/{family}/conf/{ifname}/{key}"
    with open(path) as f:
        if f.read().strip() == value:
            return
    with open(path, "w") as f:
        f.write(value)


def route_mtu(route: Any) -> int | None:
    """The MTU metric of a route message (None: the device's)."""
    metrics = route.get("RTA_METRICS")
    mtu = metrics.get("RTAX_MTU") if metrics else None
    return None if mtu is None else int(mtu)


def _ensure_route(
    ipr: Any,
    dst: str,
    oif: int,
    gateway: str | None = None,
    src: str | None = None,
    mtu: int | None = None,
) -> bool:
    """Ensure a main-table route for *dst* (a host route, or the default one when
    ``dst='default'``; IPv6 when *gateway* or *dst* is).

    Returns True if it was added. A route to the same prefix through another device
    is an error (an address clash), never silently taken over. *src* is the
    preferred source address of locally originated packets and *mtu* the route's
    MTU (None: the device's); both are fixed if they differ.
    """
    v6 = ":" in (gateway or dst)
    family = socket.AF_INET6 if v6 else socket.AF_INET
    host_len, anywhere, probe = (128, "::", "2001:db8::1") if v6 else (32, "0.0.0.0", "1.2.3.4")
    dst_len = 0 if dst == "default" else host_len
    spec: dict[str, Any] = {"dst": anywhere if dst == "default" else dst, "dst_len": dst_len}
    spec |= {"oif": oif, "table": MAIN_TABLE, "family": family}
    spec |= {"gateway": gateway} if gateway else {} if v6 else {"scope": "link"}
    spec |= {"prefsrc": src} if src else {}
    spec |= {"metrics": {"mtu": mtu}} if mtu else {}
    try:
        ipr.route("add", **spec)
        return True
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise
    probe = probe if dst == "default" else dst
    for r in ipr.route("get", dst=probe, flags=RTM_F_FIB_MATCH, family=family):
        same = r["dst_len"] == dst_len and r.get("RTA_OIF") == oif
        if same and r.get("RTA_GATEWAY") == gateway:
            if r.get("RTA_PREFSRC") != src or route_mtu(r) != mtu:
                ipr.route("replace", **spec)
            return False
        if dst == "default" and r.get("RTA_OIF") == oif:
            ipr.route("replace", **spec)  # our own pod's default route, fix it
            return False
    raise FileExistsError(errno.EEXIST, f"route to {dst}/{dst_len} exists via another device")


def _ensure_neigh(ipr: Any, ip: str, mac: str, ifindex: int) -> None:
    # A replace is idempotent and costs one round trip, as would reading it first.
    ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=ifindex, state="permanent")


@dataclass(frozen=True)
class _Pair:
    """Index and MAC of both ends of a pod's veth; `created` by this call or reused."""

    host_index: int
    host_mac: str
    pod_index: int
    pod_mac: str
    created: bool


def _random_mac() -> str:
    """A random locally administered unicast MAC, as the kernel would pick for a veth."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def _ensure_veth(
    host: Any,
    pod: Any,
    names: tuple[str, str],
    path: str,
    mtu: int,
    undo: list[Callable[[], None]],
) -> _Pair:
    """Create the pair, or reuse it when both ends exist and are peers. A new pair gets
    MACs chosen here and comes up at once, so nothing of it needs reading back (each
    netlink read costs about as much as creating the pair)."""
    host_ifname, pod_ifname = names
    host_mac, pod_mac = _random_mac(), _random_mac()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        peer = {"ifname": pod_ifname, "net_ns_fd": fd, "mtu": mtu, "address": pod_mac}
        host.link(
            "add",
            ifname=host_ifname,
            kind="veth",
            mtu=mtu,
            address=host_mac,
            state="up",
            peer=peer,
        )
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise
        return _existing_veth(host, pod, names, path, mtu)
    finally:
        os.close(fd)
    undo.append(lambda: _delete_link(host_ifname))
    host_index = socket.if_nametoindex(host_ifname)
    with setns(path):
        pod_index = socket.if_nametoindex(pod_ifname)
    pod.link("set", index=pod_index, state="up")
    return _Pair(host_index, host_mac, pod_index, pod_mac, created=True)


def _existing_veth(host: Any, pod: Any, names: tuple[str, str], path: str, mtu: int) -> _Pair:
    """The pair as it is (MTU and state fixed), if its two ends are peers."""
    host_ifname, pod_ifname = names
    hlink = get_link(host, ifname=host_ifname)
    plink = get_link(pod, ifname=pod_ifname)
    if hlink is None or plink is None or not _paired(host, hlink, plink, path):
        raise FileExistsError(
            errno.EEXIST,
            f"{host_ifname} exists but is not the veth peer of {pod_ifname} in {path}",
        )
    _ensure_mtu_up(host, hlink, mtu)
    _ensure_mtu_up(pod, plink, mtu)
    return _Pair(
        hlink["index"],
        hlink.get("IFLA_ADDRESS"),
        plink["index"],
        plink.get("IFLA_ADDRESS"),
        created=False,
    )


def _paired(host: Any, hlink: Any, plink: Any, path: str) -> bool:
    if link_kind(hlink) != "veth" or link_kind(plink) != "veth":
        return False
    if hlink.get("IFLA_LINK") != plink["index"] or plink.get("IFLA_LINK") != hlink["index"]:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        nsid = host.get_netnsid(fd=fd)
    finally:
        os.close(fd)
    return nsid is not None and nsid["nsid"] == hlink.get("IFLA_LINK_NETNSID")


def _ensure_mtu_up(ipr: Any, link: Any, mtu: int) -> None:
    changes: dict[str, Any] = {}
    if link.get("IFLA_MTU") != mtu:
        changes["mtu"] = mtu
    if not link["flags"] & 1:  # IFF_UP
        changes["state"] = "up"
    if changes:
        ipr.link("set", index=link["index"], **changes)


def _device_addresses(ipr: Any, index: int, family: int) -> set[tuple[str, int]]:
    """(address, prefix length) of every address of one family on a device."""
    return {
        (a.get("IFA_ADDRESS"), a["prefixlen"])
        for a in ipr.addr("dump", family=family)
        if a["index"] == index
    }


def _ensure_address(pod: Any, idx: int, ip: str, created: bool) -> None:
    """Make *ip* (/32 or /128) the only global address of its family on the device;
    link-local IPv6 addresses stay."""
    v6 = ":" in ip
    plen = 128 if v6 else 32
    family = socket.AF_INET6 if v6 else socket.AF_INET
    have = set() if created else _device_addresses(pod, idx, family)
    have = {(addr, n) for addr, n in have if not addr.startswith("fe80:")}
    for addr, have_len in have:
        if (addr, have_len) != (ip, plen):
            pod.addr("del", index=idx, address=addr, prefixlen=have_len)
    if (ip, plen) not in have:
        # No duplicate address detection: the address is the pod's alone, usable at once.
        pod.addr("add", index=idx, address=ip, prefixlen=plen, flags=IFA_F_NODAD if v6 else 0)


def _ensure_pod_side(pod: Any, pair: _Pair, ipv4: str, ipv6: str, route_mtu: int | None) -> None:
    idx = pair.pod_index
    pod.link("set", index=LOOPBACK_IFINDEX, state="up")
    _ensure_address(pod, idx, ipv4, pair.created)
    _ensure_route(pod, GATEWAY_IP, idx, mtu=route_mtu)
    _ensure_route(pod, "default", idx, gateway=GATEWAY_IP, mtu=route_mtu)
    _ensure_neigh(pod, GATEWAY_IP, pair.host_mac, idx)
    if ipv6:
        _ensure_address(pod, idx, ipv6, pair.created)
        _ensure_route(pod, "default", idx, gateway=GATEWAY_IPV6, mtu=route_mtu)
        _ensure_neigh(pod, GATEWAY_IPV6, pair.host_mac, idx)


def _ensure_host_routes(
    host: Any,
    hidx: int,
    pod_mac: str,
    routes: tuple[tuple[str, str | None], ...],
    undo: list[Callable[[], None]],
) -> None:
    """The host's route (with its preferred source) and permanent neighbour for each
    (address, source) of a pod; "" addresses are skipped."""
    for ip, src in routes:
        if not ip:
            continue
        if _ensure_route(host, ip, hidx, src=src):
            undo.append(functools.partial(_delete_route, ip, hidx))
        _ensure_neigh(host, ip, pod_mac, hidx)


@_off_loop
def ensure_pod_network(
    netns: str,
    host_ifname: str,
    ipv4: str,
    mtu: int = 1500,
    route_src: str | None = None,
    route_mtu: int | None = None,
    pod_ifname: str = POD_IFNAME,
    ipv6: str = "",
    route_src6: str | None = None,
) -> PodNetwork:
    """Create or reuse the pod's veth pair, addresses, routes and neighbours.

    *netns* is a namespace name (created when missing) or the path of a namespace
    somebody else made (a container runtime's), which must exist. *route_src* (a
    local address) becomes the source of host processes' packets to the pod, and
    *route_src6* of their IPv6 packets when the pod has *ipv6* too.
    *route_mtu* is the MTU of the pod's own routes (tunnel mode: *mtu* less the VXLAN
    overhead; None: the device's). On failure everything created by this call is
    removed and the error re-raised.
    """
    _validate((host_ifname, pod_ifname), ipv4, ipv6, mtu, route_mtu)
    path = resolve_netns(netns)
    undo: list[Callable[[], None]] = []
    try:
        if not is_netns(path):
            if netns.startswith("/"):
                raise FileNotFoundError(errno.ENOENT, "not a network namespace", path)
            create_netns(netns)
            undo.append(lambda: delete_netns(netns))
        with _ipr() as host, _ipr(path) as pod:
            names = (host_ifname, pod_ifname)
            pair = _ensure_veth(host, pod, names, path, mtu, undo)
            hidx = pair.host_index
            set_interface_sysctl(host_ifname, "forwarding", "1")
            _ensure_pod_side(pod, pair, ipv4, ipv6, route_mtu)
            routes = ((ipv4, route_src), (ipv6, route_src6))
            _ensure_host_routes(host, hidx, pair.pod_mac, routes, undo)
    except BaseException:
        for step in reversed(undo):
            with suppress(Exception):
                step()
        raise
    return PodNetwork(
        netns,
        host_ifname,
        hidx,
        pair.host_mac,
        pair.pod_mac,
        ipv4,
        mtu,
        route_mtu,
        pod_ifname,
        ipv6,
    )


@_off_loop
def ensure_host_peer_veth(
    netns: str,
    host_ifname: str,
    peer_ifname: str,
    ipv4: str,
    mtu: int = 1500,
    route_src: str | None = None,
    ipv6: str = "",
    route_src6: str | None = None,
) -> PodNetwork:
    """A veth pair whose workload end the runtime moves into its sandbox itself
    (Docker does, renaming it eth0 and configuring it from the driver's answer).

    The pair is made with the peer named *peer_ifname* left down in the host
    namespace; an existing host end is reused (its peer may have moved already).
    The host side is set up as for pods: up, forwarding, the /32 (and /128 for
    *ipv6*) route and the permanent neighbours to the peer's MAC (which survives the
    move).
    """
    _validate((host_ifname, peer_ifname), ipv4, ipv6, mtu)
    undo: list[Callable[[], None]] = []
    try:
        with _ipr() as host:
            hlink = get_link(host, ifname=host_ifname)
            if hlink is None:
                peer = {"ifname": peer_ifname, "mtu": mtu}
                host.link("add", ifname=host_ifname, kind="veth", mtu=mtu, peer=peer)
                undo.append(lambda: _delete_link(host_ifname))
                hlink = get_link(host, ifname=host_ifname)
            plink = get_link(host, ifname=peer_ifname)
            if hlink is None or link_kind(hlink) != "veth":
                raise FileExistsError(errno.EEXIST, f"{host_ifname} exists but is not a veth")
            if plink is None or plink["index"] != hlink.get("IFLA_LINK"):
                raise FileExistsError(
                    errno.EEXIST, f"{peer_ifname} is not the host-side peer of {host_ifname}"
                )
            hidx = hlink["index"]
            host_mac, pod_mac = hlink.get("IFLA_ADDRESS"), plink.get("IFLA_ADDRESS")
            _ensure_mtu_up(host, hlink, mtu)
            set_interface_sysctl(host_ifname, "forwarding", "1")
            routes = ((ipv4, route_src), (ipv6, route_src6))
            _ensure_host_routes(host, hidx, pod_mac, routes, undo)
    except BaseException:
        for step in reversed(undo):
            with suppress(Exception):
                step()
        raise
    return PodNetwork(
        netns, host_ifname, hidx, host_mac, pod_mac, ipv4, mtu, None, POD_IFNAME, ipv6
    )


@_off_loop
def restore_host_peer_veth(
    net: PodNetwork, route_src: str | None = None, route_src6: str | None = None
) -> PodNetwork:
    """Re-check the host side of an `ensure_host_peer_veth` pair after a restart (the
    peer lives in the sandbox by now); FileNotFoundError when the device is gone."""
    with _ipr() as host:
        hlink = get_link(host, ifname=net.host_ifname)
        if hlink is None or hlink["index"] != net.host_ifindex or link_kind(hlink) != "veth":
            raise FileNotFoundError(errno.ENODEV, "device is gone", net.host_ifname)
        _ensure_mtu_up(host, hlink, net.mtu)
        routes = ((net.ipv4, route_src), (net.ipv6, route_src6))
        _ensure_host_routes(host, hlink["index"], net.pod_mac, routes, [])
    return net


def _fib_match(ipr: Any, dst: str) -> list[Any]:
    """The route the kernel would take to *dst* (none when unreachable)."""
    try:
        family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        return list(ipr.route("get", dst=dst, flags=RTM_F_FIB_MATCH, family=family))
    except NetlinkError as exc:
        if exc.code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return []
        raise


@_off_loop
def check_pod_network(net: PodNetwork) -> list[str]:
    """What is wrong with a pod's plumbing (empty when device, address, routes and
    pairing are as `ensure_pod_network` left them); changes nothing."""
    path = resolve_netns(net.netns)
    if not is_netns(path):
        return [f"network namespace {path} is gone"]
    problems: list[str] = []
    with _ipr() as host, _ipr(path) as pod:
        hlink = get_link(host, ifname=net.host_ifname)
        plink = get_link(pod, ifname=net.pod_ifname)
        if hlink is None or plink is None:
            missing = net.host_ifname if hlink is None else f"{net.pod_ifname} in {path}"
            return [f"device {missing} is missing"]
        if not _paired(host, hlink, plink, path):
            problems.append(f"{net.host_ifname} is not the peer of {net.pod_ifname}")
        if (net.ipv4, 32) not in _device_addresses(pod, plink["index"], socket.AF_INET):
            problems.append(f"{net.pod_ifname} lacks address {net.ipv4}/32")
        if not any(r.get("RTA_GATEWAY") == GATEWAY_IP for r in _fib_match(pod, "1.2.3.4")):
            problems.append(f"no default route via {GATEWAY_IP} in the pod")
        if net.ipv6:
            if (net.ipv6, 128) not in _device_addresses(pod, plink["index"], socket.AF_INET6):
                problems.append(f"{net.pod_ifname} lacks address {net.ipv6}/128")
            if not any(
                r.get("RTA_GATEWAY") == GATEWAY_IPV6 for r in _fib_match(pod, "2001:db8::1")
            ):
                problems.append(f"no default route via {GATEWAY_IPV6} in the pod")
        for ip in (net.ipv4, net.ipv6) if net.ipv6 else (net.ipv4,):
            if not any(r.get("RTA_OIF") == hlink["index"] for r in _fib_match(host, ip)):
                problems.append(f"no host route to {ip} via {net.host_ifname}")
    return problems


def _delete_link(name: str) -> None:
    with _ipr() as host:
        link = get_link(host, ifname=name)
        if link is not None and link_kind(link) == "veth":
            try:
                host.link("del", index=link["index"])
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:  # gone with its namespace meanwhile
                    raise


def _delete_route(ip: str, oif: int | None = None) -> None:
    plen = 128 if ":" in ip else 32
    with _ipr() as host:
        for r in _fib_match(host, ip):
            if r["dst_len"] == plen and (oif is None or r.get("RTA_OIF") == oif):
                with suppress(NetlinkError):
                    host.route("del", dst=ip, dst_len=plen, oif=r.get("RTA_OIF"), table=MAIN_TABLE)


@_off_loop
def remove_pod_network(netns: str, host_ifname: str, ipv4: str, ipv6: str = "") -> None:
    """Remove the host routes and the veth pair, and the namespace when given by name
    (a runtime's namespace, given by path, is its own); missing parts are fine."""
    idx = interface_index(host_ifname)
    if idx is not None:
        for ip in (ipv4, ipv6) if ipv6 else (ipv4,):
            _delete_route(ip, idx)  # never a route through somebody else's device
        _delete_link(host_ifname)
    if not netns.startswith("/"):
        delete_netns(netns)


@_off_loop
def remove_host_veth(host_ifname: str, ifindex: int) -> bool:
    """Delete a host-side veth if `ifindex` still names it (its routes go with it)."""
    if not ifindex or interface_index(host_ifname) != ifindex:
        return False
    _delete_link(host_ifname)
    return True


@_off_loop
def host_addresses(ipv6: bool = False) -> list[str]:
    """All IPv4 addresses of the host namespace, and its IPv6 ones with `ipv6`, in one
    netlink dump (loopback included; IPv6 link-local ones left out: they name no node),
    sorted."""
    family = socket.AF_UNSPEC if ipv6 else socket.AF_INET
    with _ipr() as host:
        addrs = {a.get("IFA_ADDRESS") for a in host.addr("dump", family=family)}
    usable = (a for a in addrs if a and not a.startswith("fe80:"))
    return sorted(usable, key=lambda a: (":" in a, ipaddress.ip_address(a)))


@_off_loop
def interface_index(name: str) -> int | None:
    """Index of the host-namespace interface *name*, or None."""
    with _ipr() as host:
        link = get_link(host, ifname=name)
    return None if link is None else int(link["index"])
