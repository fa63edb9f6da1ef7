"""The datapath facade: turns desired endpoint state into kernel state.

The agent hands it desired state (endpoint configuration, policy entries,
IP-to-identity mappings, other nodes' pod ranges); it writes the difference into
the pinned maps and remembers what it wrote, and `verify` compares the maps with
that record to repair drift made by anyone else.
"""

from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cilia.datapath import attach, compiler, overlay, proxy_device, service_hooks
from cilia.datapath.layout import (
    EP_F_EGRESS_ENFORCED,
    EP_F_INGRESS_ENFORCED,
    EP_F_TRACE,
    IPCACHE_F_CIDR,
    POLICY_PROTO_MARKER,
    Addr,
    DatapathConfig,
)
from cilia.datapath.lb import LbSyncReport, LoadBalancerMaps
from cilia.datapath.loader import LoadedObject
from cilia.datapath.maps import (
    BpfMap,
    CtMap,
    EndpointMap,
    EndpointRecord,
    IpcacheEntry,
    IpcacheMap,
    LxcIpMap,
    MetricsMap,
    PolicyMap,
    PolicyTuple,
    TunnelMap,
    ip_to_be,
)
from cilia.policy.desired import ALL_PORTS, EndpointPolicy, Protocol, Redirect
from cilia.service.model import LbService

log = logging.getLogger("cilia.datapath")


@dataclass(frozen=True)
class CtLifetimes:
    """Connection-tracking lifetimes in seconds (the reference's defaults)."""

    tcp: int = 21600
    tcp_syn: int = 60
    tcp_closing: int = 10
    non_tcp: int = 60


@dataclass(frozen=True)
class Overlay:
    """The node's VXLAN device as attach_overlay set it up."""

    ifname: str
    ifindex: int
    underlay_ip: str
    cluster_cidr: str
    port: int
    mtu: int
    route_src: str | None
    cluster_cidr6: str = ""
    """The cluster's IPv6 pod range ("" with IPv6 off)."""
    route_src6: str | None = None

    @property
    def route_mtu(self) -> int:
        """MTU of routes into the tunnel (the base MTU less the VXLAN overhead)."""
        return self.mtu - overlay.VXLAN_OVERHEAD


@dataclass
class DriftReport:
    """What verify() found different from the desired state and repaired."""

    repaired: list[str] = field(default_factory=list)


def policy_tuples(
    ep_id: int, policy: EndpointPolicy, proxy_ports: Mapping[Redirect, int] | None = None
) -> dict[PolicyTuple, int]:
    """Encode an endpoint's policy as policy-map keys -> proxy port (0: no redirect).

    L4 markers let the datapath tell an L4 denial (159) from an L3 one (133).
    Every peer of a redirected port gets an exact-port key carrying the proxy
    port, so it takes precedence over the peer's wider allowances.
    """
    out: dict[PolicyTuple, int] = {}
    for e in policy.entries:
        out[(ep_id, int(e.direction), e.identity, e.port, int(e.protocol))] = 0
        if e.port != ALL_PORTS or e.protocol != Protocol.ANY:
            out[(ep_id, int(e.direction), e.identity, 0, POLICY_PROTO_MARKER)] = 0
    for redirect, proxy_port in (proxy_ports or {}).items():
        for allow in redirect.allows:
            key = (ep_id, int(redirect.direction), allow.identity, redirect.port, int(Protocol.TCP))
            out[key] = proxy_port
            out[(ep_id, int(redirect.direction), allow.identity, 0, POLICY_PROTO_MARKER)] = 0
    return out


def endpoint_flags(policy: EndpointPolicy, trace: bool = False) -> int:
    """Enforcement and tracing bits of the endpoints map."""
    return (
        (EP_F_INGRESS_ENFORCED if policy.ingress_enforced else 0)
        | (EP_F_EGRESS_ENFORCED if policy.egress_enforced else 0)
        | (EP_F_TRACE if trace else 0)
    )


def _as_prefix(prefix: str) -> str:
    """A bare address as its /32 or /128 (prefixes are taken as written: this runs for
    every ipcache entry on every regeneration, so no parsing)."""
    if "/" in prefix:
        return prefix
    return f"{prefix}/128" if ":" in prefix else f"{prefix}/32"


def _addresses(rec: EndpointRecord) -> tuple[str, ...]:
    """The endpoint's addresses: IPv4, and IPv6 when it has one."""
    return (rec.ipv4, rec.ipv6) if rec.ipv6 else (rec.ipv4,)


def boottime() -> int:
    """Seconds of CLOCK_BOOTTIME, the clock of CT expiry stamps."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME))


class Datapath:
    """Owns the loaded programs, the pinned maps and the tcx links of one node."""

    def __init__(
        self,
        pin_dir: Path,
        cache_dir: Path,
        source_dir: Path | None = None,
        lifetimes: CtLifetimes | None = None,
        ct_max_entries: int | None = None,
    ) -> None:
        self.pin_dir = pin_dir
        self.maps_dir = pin_dir / "maps"
        self.links_dir = pin_dir / "links"
        self.cache_dir = cache_dir
        self.source_dir = source_dir or compiler.default_source_dir()
        self.lifetimes = lifetimes or CtLifetimes()
        self.ct_max_entries = ct_max_entries
        self._obj: LoadedObject | None = None
        self._realized_policy: dict[int, dict[PolicyTuple, int]] = defaultdict(dict)
        self._realized_lxc_ip: dict[str, tuple[int, int]] = {}
        self._realized_endpoints: dict[int, EndpointRecord] = {}
        self._realized_ipcache: dict[str, IpcacheEntry] = {}
        self._realized_tunnels: dict[str, str] = {}
        self.trace_all = False
        self.proxy_ifname = ""
        self.proxy_ifindex = 0
        self.overlay: Overlay | None = None
        self._overlay_config: tuple[int, int, int, bytes, int] = (0, 0, 0, bytes(16), 0)
        """vxlan_ifindex, cluster_ipv4, cluster_mask, cluster_ipv6, cluster_ipv6_len of the
        datapath config."""

    # -- life cycle -------------------------------------------------------

    def start(self) -> None:
        """Compile (cached), load with pinned maps reused, and read back kernel state
        (the pin directory is on a bpffs: `bpffs.pin_dir` saw to it)."""
        obj_path = compiler.compile_object(self.source_dir, self.cache_dir)
        sizes = {"cilia_ct": self.ct_max_entries} if self.ct_max_entries else None
        self._obj = LoadedObject(obj_path, self.maps_dir, sizes)
        path = str(self.maps_dir)
        self.endpoints = EndpointMap(f"{path}/cilia_endpoints")
        self.ipcache = IpcacheMap(f"{path}/cilia_ipcache")
        self.policy = PolicyMap(f"{path}/cilia_policy")
        self.lxc_ip = LxcIpMap(f"{path}/cilia_lxc_ip")
        self.ct = CtMap(f"{path}/cilia_ct")
        self.metrics = MetricsMap(f"{path}/cilia_metrics")
        self.tunnel = TunnelMap(f"{path}/cilia_tunnel")
        self.config = BpfMap(f"{path}/cilia_config", ctypes.c_uint32, DatapathConfig)
        self.lb = LoadBalancerMaps(path, self.ct)
        self.netns_cookie = service_hooks.netns_cookie()
        service_hooks.update_node_devices(self.links_dir, self._obj.prog_fds)
        if service_hooks.socket_hooks_attached(self.links_dir):
            self._socket_hooks(True)
        self._keep_pinned_overlay_config()
        self._write_config()
        # Whatever a previous agent left is the starting point of the diff.
        self._realized_endpoints = self.endpoints.dump()
        self._realized_ipcache = self.ipcache.dump()
        self._realized_tunnels = self.tunnel.dump()
        self._realized_lxc_ip = self.lxc_ip.dump()
        self._realized_policy = defaultdict(dict)
        for t, proxy_port in self.policy.dump_values().items():
            self._realized_policy[t[0]][t] = proxy_port

    def _keep_pinned_overlay_config(self) -> None:
        """Until attach_overlay runs again, a restarted datapath keeps tunnelling as
        the previous one did (its VXLAN device, cluster range)."""
        cfg = self.config.lookup(ctypes.c_uint32(0))
        if cfg is not None:
            self._overlay_config = (
                cfg.vxlan_ifindex,
                cfg.cluster_ipv4,
                cfg.cluster_mask,
                bytes(cfg.cluster_ipv6),
                cfg.cluster_ipv6_len,
            )

    def _desired_config(self) -> DatapathConfig:
        lt = self.lifetimes
        if (o := self.overlay) is not None:
            cluster = ipaddress.IPv4Network(o.cluster_cidr)
            addr, mask = str(cluster.network_address), str(cluster.netmask)
            cluster6 = ipaddress.IPv6Network(o.cluster_cidr6 or "::/0")
            len6 = cluster6.prefixlen if o.cluster_cidr6 else 0
            net6 = cluster6.network_address.packed
            self._overlay_config = (o.ifindex, ip_to_be(addr), ip_to_be(mask), net6, len6)
        vxlan, cluster_ipv4, cluster_mask, cluster_ipv6, cluster_ipv6_len = self._overlay_config
        return DatapathConfig(
            ct_lifetime_tcp=lt.tcp,
            ct_lifetime_tcp_syn=lt.tcp_syn,
            ct_lifetime_tcp_closing=lt.tcp_closing,
            ct_lifetime_nontcp=lt.non_tcp,
            trace_all=int(self.trace_all),
            proxy_ifindex=self.proxy_ifindex,
            vxlan_ifindex=vxlan,
            cluster_ipv4=cluster_ipv4,
            cluster_mask=cluster_mask,
            cluster_ipv6=Addr.from_buffer_copy(cluster_ipv6),
            cluster_ipv6_len=cluster_ipv6_len,
            host_netns_cookie=self.netns_cookie,
        )

    def _write_config(self) -> None:
        self.config.update(ctypes.c_uint32(0), self._desired_config())

    def set_trace_all(self, enabled: bool) -> None:
        """Switch trace events on or off for every endpoint of the node."""
        self.trace_all = enabled
        self._write_config()

    def attach_proxy_device(self, ifname: str) -> int:
        """Create (or reuse) the proxy device, attach its program and tell the endpoint
        programs its ifindex (host traffic to L7 ports goes round through it)."""
        assert self._obj is not None, "datapath not started"
        ifindex = proxy_device.ensure_proxy_device(ifname)
        attach.attach_device(
            self.links_dir, ifname, ifindex, self._obj.prog_fds, attach.PROXY_DEVICE_HOOKS
        )
        self.proxy_ifname, self.proxy_ifindex = ifname, ifindex
        self._write_config()
        return ifindex

    def ensure_proxy_device(self) -> bool:
        """Re-create the proxy device if it vanished or lost its program; True if it had."""
        ifname = self.proxy_ifname
        if not ifname or attach.is_attached(
            self.links_dir, ifname, self.proxy_ifindex, attach.PROXY_DEVICE_HOOKS
        ):
            return False
        self.attach_proxy_device(ifname)
        return True

    # -- overlay (other nodes) -------------------------------------------

    def attach_overlay(
        self,
        ifname: str,
        underlay_ip: str,
        cluster_cidr: str,
        port: int = overlay.VXLAN_PORT,
        mtu: int = 1500,
        route_src: str | None = None,
        cluster_cidr6: str = "",
        route_src6: str | None = None,
    ) -> int:
        """Create (or reuse) the node's VXLAN device, attach its programs and turn
        the tunnel on in the endpoint programs; returns the device's ifindex.

        `underlay_ip` is this node's tunnel endpoint, `cluster_cidr` the range of
        every node's pods (an address in it that no node owns is dropped, 160),
        `mtu` the base MTU (routes into the tunnel get `mtu - 50`), `route_src`
        the source of the node's own packets to other nodes' pods (the router
        address, so that replies come back through the tunnel). With IPv6,
        `cluster_cidr6` and `route_src6` are their IPv6 twins.
        """
        assert self._obj is not None, "datapath not started"
        ipaddress.IPv4Address(underlay_ip)  # ValueError before anything changes
        cluster = str(ipaddress.IPv4Network(cluster_cidr, strict=False))
        cluster6 = str(ipaddress.IPv6Network(cluster_cidr6, strict=False)) if cluster_cidr6 else ""
        if route_src is not None:
            ipaddress.IPv4Address(route_src)
        if route_src6 is not None:
            ipaddress.IPv6Address(route_src6)
        ifindex = overlay.ensure_overlay_device(ifname, port, mtu)
        attach.attach_device(
            self.links_dir, ifname, ifindex, self._obj.prog_fds, attach.OVERLAY_HOOKS
        )
        self.overlay = Overlay(
            ifname, ifindex, underlay_ip, cluster, port, mtu, route_src, cluster6, route_src6
        )
        self._write_config()
        self._sync_tunnel_routes()
        return ifindex

    def ensure_overlay(self) -> list[str]:
        """Repair the VXLAN device, its programs and its routes; what was repaired."""
        o = self.overlay
        if o is None:
            return []
        repaired = []
        ifindex = overlay.ensure_overlay_device(o.ifname, o.port, o.mtu)
        if ifindex != o.ifindex or not attach.is_attached(
            self.links_dir, o.ifname, ifindex, attach.OVERLAY_HOOKS
        ):
            assert self._obj is not None, "datapath not started"
            attach.attach_device(
                self.links_dir, o.ifname, ifindex, self._obj.prog_fds, attach.OVERLAY_HOOKS
            )
            self.overlay = dataclasses.replace(o, ifindex=ifindex)
            self._write_config()
            repaired.append(f"overlay device {o.ifname} re-attached (ifindex {ifindex})")
        written, removed = self._sync_tunnel_routes()
        if written or removed:
            repaired.append(f"overlay routes: {written} restored, {removed} foreign removed")
        return repaired

    def _remote_node(self, node_ip: str) -> str:
        """The node address itself, or "" when it is this node (local, not tunnelled)."""
        return "" if self.overlay is not None and node_ip == self.overlay.underlay_ip else node_ip

    def sync_tunnels(self, desired: Mapping[str, str]) -> tuple[int, int]:
        """Make the tunnel map equal `desired` (other nodes' pod range -> node underlay
        address) and route the node's own traffic to those ranges through the VXLAN
        device; returns (written, removed) map entries.

        A range naming this node's own underlay address is left out (it is local).
        Routes follow once attach_overlay has run.
        """
        norm = {overlay.normalize_prefix(p): self._remote_node(ip) for p, ip in desired.items()}
        norm = {p: ip for p, ip in norm.items() if ip}
        for ip in norm.values():
            ipaddress.IPv4Address(ip)
        changed = [p for p, ip in norm.items() if self._realized_tunnels.get(p) != ip]
        stale = [p for p in self._realized_tunnels if p not in norm]
        for p in changed:
            self.tunnel.set(p, norm[p])
            self._realized_tunnels[p] = norm[p]
        for p in stale:
            self.tunnel.remove(p)
            del self._realized_tunnels[p]
        self._sync_tunnel_routes()  # after the removals: a departed node's route goes too
        return len(changed), len(stale)

    def _sync_tunnel_routes(self) -> tuple[int, int]:
        o = self.overlay
        if o is None:
            return 0, 0
        return overlay.sync_routes(
            o.ifindex, self._realized_tunnels, o.route_mtu, o.route_src, o.route_src6
        )

    def tunnel_entries(self) -> dict[str, str]:
        """The tunnel map as the kernel has it: pod range -> node underlay address."""
        return self.tunnel.dump()

    def close(self) -> None:
        """Drop file descriptors; pins (and so enforcement) stay in place."""
        maps = (
            "endpoints",
            "ipcache",
            "policy",
            "lxc_ip",
            "ct",
            "metrics",
            "tunnel",
            "config",
            "lb",
        )
        for m in maps:
            if hasattr(self, m):
                getattr(self, m).close()
        if self._obj is not None:
            self._obj.close()
            self._obj = None

    # -- endpoints --------------------------------------------------------

    def attach(self, ifname: str, ifindex: int) -> None:
        """Attach the endpoint programs to a host-side device (idempotent)."""
        assert self._obj is not None, "datapath not started"
        attach.attach_device(self.links_dir, ifname, ifindex, self._obj.prog_fds)

    def is_attached(self, ifname: str, ifindex: int) -> bool:
        """Are the programs attached to this device through live links?"""
        return attach.is_attached(self.links_dir, ifname, ifindex)

    def detach(self, ifname: str) -> None:
        """Detach the endpoint programs from a device."""
        attach.detach_device(self.links_dir, ifname)

    def program_endpoint(
        self,
        ifindex: int,
        ep_id: int,
        ipv4: str,
        identity: int,
        policy: EndpointPolicy,
        router_mac: str,
        trace: bool = False,
        proxy_ports: Mapping[Redirect, int] | None = None,
        ipv6: str = "",
    ) -> tuple[int, int]:
        """Make the kernel enforce `policy` for an endpoint; returns (written, removed).

        Order avoids transient denials: new and changed allowances first, then
        the endpoint's flags, then removal of allowances no longer wanted.
        """
        desired = policy_tuples(ep_id, policy, proxy_ports)
        realized = self._realized_policy[ep_id]
        written = [t for t, port in desired.items() if realized.get(t) != port]
        removed = [t for t in realized if t not in desired]
        for t in written:
            self.policy.put(t, desired[t])
            realized[t] = desired[t]
        flags = endpoint_flags(policy, trace)
        rec = EndpointRecord(ep_id, ipv4, identity, flags, router_mac, ipv6)
        if self._realized_endpoints.get(ifindex) != rec:
            self.endpoints.set(ifindex, rec)
            self._realized_endpoints[ifindex] = rec
        for ip in _addresses(rec):
            if self._realized_lxc_ip.get(ip) != (ep_id, rec.flags):
                self.lxc_ip.set(ip, ep_id, rec.flags)
                self._realized_lxc_ip[ip] = (ep_id, rec.flags)
        for t in removed:
            self.policy.remove(t)
            del realized[t]
        return len(written), len(removed)

    def remove_endpoint(self, ifindex: int, ep_id: int) -> None:
        """Forget an endpoint's configuration and policy entries."""
        rec = self._realized_endpoints.pop(ifindex, None)
        self.endpoints.remove(ifindex)
        for ip in _addresses(rec) if rec is not None else ():
            self.lxc_ip.remove(ip)
            self._realized_lxc_ip.pop(ip, None)
        for t in self._realized_policy.pop(ep_id, {}):
            self.policy.remove(t)

    # -- ipcache ----------------------------------------------------------

    def sync_ipcache(
        self,
        desired: Mapping[str, int],
        cidr_identities: frozenset[int] = frozenset(),
        tunnel_endpoints: Mapping[str, str] | None = None,
    ) -> tuple[int, int]:
        """Make the IP-to-identity map equal `desired` (prefix -> identity).

        Entries whose identity is in `cidr_identities` are flagged so that a
        denial names CIDR policy (drop reason 162). `tunnel_endpoints` gives
        the underlay address of the node owning a prefix of `desired` (other
        nodes' pods): packets to it are tunnelled there. Absent, or this
        node's own address: local.
        """
        tunnels = {_as_prefix(p): ip for p, ip in (tunnel_endpoints or {}).items()}
        norm: dict[str, IpcacheEntry] = {}
        for p, i in desired.items():
            prefix = _as_prefix(p)
            node = self._remote_node(tunnels.get(prefix, ""))
            norm[prefix] = IpcacheEntry(i, IPCACHE_F_CIDR if i in cidr_identities else 0, node)
        changed = [p for p, v in norm.items() if self._realized_ipcache.get(p) != v]
        stale = [p for p in self._realized_ipcache if p not in norm]
        for p in changed:
            self.ipcache.put(p, norm[p])
            self._realized_ipcache[p] = norm[p]
        for p in stale:
            self.ipcache.remove(p)
            del self._realized_ipcache[p]
        return len(changed), len(stale)

    def ipcache_entries(self) -> dict[str, IpcacheEntry]:
        """The ipcache as the kernel has it: prefix -> identity, flags, tunnel endpoint."""
        return self.ipcache.dump()

    # -- services ----------------------------------------------------------

    def sync_services(
        self, desired: list[LbService], node_devices: Mapping[str, int]
    ) -> LbSyncReport:
        """Make the load balancer hold `desired`; while any NodePort frontend exists its
        programs sit on `node_devices` (name -> ifindex), and while any frontend exists
        the node's own sockets are load-balanced too."""
        assert self._obj is not None, "datapath not started"
        report = self.lb.sync(desired)
        nodeport = any(d.kind == "NodePort" for d in desired)
        service_hooks.sync_node_devices(
            self.links_dir, node_devices if nodeport else {}, self._obj.prog_fds
        )
        if bool(desired) != service_hooks.socket_hooks_attached(self.links_dir):
            self._socket_hooks(bool(desired))
        return report

    def _socket_hooks(self, on: bool) -> None:
        assert self._obj is not None
        cgroup = service_hooks.cgroup2_root()
        if on and cgroup is not None:
            service_hooks.attach_socket_hooks(self.links_dir, self._obj.prog_fds, cgroup)
        elif on:
            log.warning("no cgroup v2 hierarchy: the node's own sockets reach no service")
        else:
            service_hooks.detach_socket_hooks(self.links_dir)

    # -- drift, counters, CT ---------------------------------------------

    def verify(self) -> DriftReport:
        """Compare the maps with what was written and repair any difference.

        Each endpoint's own policy entries are restored by its sync-policymap
        controller (`verify_endpoint_policy`); here only entries nobody wrote
        are removed, with the config, endpoint, ipcache, lxc and tunnel maps,
        and the VXLAN device with its programs and routes.
        """
        report = DriftReport()
        desired = self._desired_config()
        actual = self.config.lookup(ctypes.c_uint32(0))
        if actual is None or bytes(actual) != bytes(desired):
            self.config.update(ctypes.c_uint32(0), desired)
            report.repaired.append("datapath config restored")
        for t in self.policy.dump():
            if t not in self._realized_policy.get(t[0], {}):
                self.policy.remove(t)
                report.repaired.append(f"foreign policy entry removed: {t}")
        actual_eps = self.endpoints.dump()
        for ifindex, rec in self._realized_endpoints.items():
            if actual_eps.get(ifindex) != rec:
                self.endpoints.set(ifindex, rec)
                report.repaired.append(f"endpoint config restored: ifindex {ifindex}")
        actual_ipc = self.ipcache.dump()
        for prefix, value in self._realized_ipcache.items():
            if actual_ipc.get(prefix) != value:
                self.ipcache.put(prefix, value)
                report.repaired.append(f"ipcache entry restored: {prefix}")
        actual_lxc = self.lxc_ip.dump()
        for ip, (ep_id, flags) in self._realized_lxc_ip.items():
            if actual_lxc.get(ip) != (ep_id, flags):
                self.lxc_ip.set(ip, ep_id, flags)
                report.repaired.append(f"local endpoint address restored: {ip}")
        for prefix in set(actual_ipc) - set(self._realized_ipcache):
            self.ipcache.remove(prefix)
            report.repaired.append(f"foreign ipcache entry removed: {prefix}")
        actual_tun = self.tunnel.dump()
        for prefix, node_ip in self._realized_tunnels.items():
            if actual_tun.get(prefix) != node_ip:
                self.tunnel.set(prefix, node_ip)
                report.repaired.append(f"tunnel entry restored: {prefix} -> {node_ip}")
        for prefix in set(actual_tun) - set(self._realized_tunnels):
            self.tunnel.remove(prefix)
            report.repaired.append(f"foreign tunnel entry removed: {prefix}")
        report.repaired += self.ensure_overlay()
        report.repaired += self.lb.verify()
        for line in report.repaired:
            log.warning("drift repaired: %s", line)
        return report

    def verify_endpoint_policy(self, ep_id: int) -> list[str]:
        """Restore one endpoint's policy entries that are missing or carry another proxy port."""
        realized = self._realized_policy.get(ep_id, {})
        drifted = []
        for t, proxy_port in realized.items():
            value = self.policy.lookup(self.policy.key(t))
            if value is None or value.proxy_port != proxy_port:
                self.policy.put(t, proxy_port)
                drifted.append(t)
        return [f"policy entry restored: {t}" for t in drifted]

    def counters(self) -> dict[tuple[int, int], tuple[int, int]]:
        """(reason, direction) -> (packets, bytes) from the per-CPU metrics map."""
        return self.metrics.totals()
