"""Nodes on one machine, for the overlay tests and benchmark (no agent).

Each node is a network namespace with an underlay veth whose other end is a
port of a bridge in a namespace of its own; the node's address on it is its
tunnel endpoint. Each node has its own bpffs pins and a `Datapath` driven from
a worker thread that enters the node namespace for every call, as an agent
running inside the node would. Pods hang off their node namespace.
Everything is named after a per-run prefix and removed by `cleanup()`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute

from cilia.datapath.bpffs import remove_pins
from cilia.datapath.host_address import ensure_host_address
from cilia.datapath.manager import Datapath
from cilia.datapath.netns import create_netns, delete_netns, list_netns, netns_path, setns
from cilia.datapath.overlay import VXLAN_OVERHEAD
from cilia.datapath.pod_network import PodNetwork, ensure_pod_network
from cilia.policy.desired import EndpointPolicy, Redirect
from cilia.runtime.processes import ProcessRecord, start_process, stop_process, wait_listening

R = TypeVar("R")
MTU = 1500


@dataclass
class Pod:
    """A pod of a node, programmed as an endpoint of the node's datapath."""

    node: Node
    ep_id: int
    identity: int
    net: PodNetwork
    policy: EndpointPolicy = field(default_factory=EndpointPolicy)

    @property
    def ip(self) -> str:
        return self.net.ipv4

    @property
    def path(self) -> str:
        return netns_path(self.net.netns)

    def program(
        self, policy: EndpointPolicy, proxy_ports: Mapping[Redirect, int] | None = None
    ) -> tuple[int, int]:
        """Make the node's datapath enforce `policy` for this pod."""
        self.policy = policy
        return self.node.call(
            self.node.dp.program_endpoint,
            self.net.host_ifindex,
            self.ep_id,
            self.ip,
            self.identity,
            policy,
            self.net.host_mac,
            proxy_ports=proxy_ports,
        )


@dataclass
class Node:
    """One node namespace and its datapath."""

    name: str
    netns: str
    index: int
    cluster: Cluster
    worker: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1))
    datapath: Datapath | None = None
    pods: list[Pod] = field(default_factory=list)

    @property
    def path(self) -> str:
        return netns_path(self.netns)

    @property
    def dp(self) -> Datapath:
        assert self.datapath is not None, "datapath not started"
        return self.datapath

    @property
    def underlay_ip(self) -> str:
        return f"198.18.{self.cluster.octet}.{self.index}"

    @property
    def pod_range(self) -> str:
        return f"{self.cluster.net}.{self.index}.0/24"

    @property
    def router_ip(self) -> str:
        return f"{self.cluster.net}.{self.index}.254"

    @property
    def vxlan(self) -> str:
        return f"{self.cluster.prefix}vx"

    @property
    def pin_dir(self) -> Path:
        return Path(f"/sys/fs/bpf/cilia-test-{self.cluster.prefix}-{self.name}")

    def call(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Run fn inside the node namespace (on the node's worker thread)."""

        def inside() -> R:
            with setns(self.path):
                return fn(*args, **kwargs)

        return self.worker.submit(inside).result()

    def start_datapath(self, overlay: bool = True) -> Datapath:
        """A new Datapath on the node's pins (a restarted agent reuses them), its overlay
        attached unless told otherwise."""
        if self.datapath is not None:
            self.call(self.datapath.close)
        self.datapath = self.call(Datapath, self.pin_dir, self.cluster.tmp / "cache")
        self.call(self.dp.start)
        if overlay:
            self.attach_overlay()
        return self.dp

    def attach_overlay(self) -> int:
        return self.call(
            self.dp.attach_overlay,
            self.vxlan,
            self.underlay_ip,
            self.cluster.cidr,
            mtu=MTU,
            route_src=self.router_ip,
        )

    def add_pod(self, identity: int, responder: tuple[int, ...] = (), attach: bool = True) -> Pod:
        """A pod at .10, .11, ... of the node's range; a built-in responder on TCP and
        UDP `responder` ports. Without `attach` no program serves it (a baseline)."""
        n = len(self.pods)
        prefix = self.cluster.prefix
        net = self.call(
            ensure_pod_network,
            f"cilia-test-{prefix}-pod-{self.name}{n}",
            f"{prefix}{self.name}{n}",
            f"{self.cluster.net}.{self.index}.{10 + n}",
            MTU,
            route_src=self.router_ip,
            route_mtu=MTU - VXLAN_OVERHEAD,
        )
        pod = Pod(self, 10 * self.index + n, identity, net)
        self.pods.append(pod)
        if attach:
            self.call(self.dp.attach, net.host_ifname, net.host_ifindex)
            pod.program(EndpointPolicy())
        if responder:
            self.cluster.responder(pod, responder)
        return pod


@dataclass
class Cluster:
    """Nodes joined by an underlay bridge; build with `add_node`, remove with `cleanup`."""

    prefix: str
    tmp: Path
    nodes: list[Node] = field(default_factory=list)
    procs: list[ProcessRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.octet = 100 + int(self.prefix[-4:], 16) % 100
        self.net = f"10.{self.octet}"
        self.cidr = f"{self.net}.0.0/16"
        self.underlay_ns = f"cilia-test-{self.prefix}-underlay"
        self.bridge = f"{self.prefix}br"
        self._underlay = ThreadPoolExecutor(max_workers=1)

    @property
    def underlay_path(self) -> str:
        return netns_path(self.underlay_ns)

    def in_underlay(self, fn: Callable[..., R], *args: Any) -> R:
        """Run fn inside the underlay namespace."""

        def inside() -> R:
            with setns(self.underlay_path):
                return fn(*args)

        return self._underlay.submit(inside).result()

    def add_node(self) -> Node:
        """A node namespace on the bridge, with its router address and a started datapath."""
        if not self.nodes:
            create_netns(self.underlay_ns)
            self.in_underlay(self._make_bridge)
        index = len(self.nodes) + 1
        name = "abcdefgh"[index - 1]
        node = Node(name, f"cilia-test-{self.prefix}-node-{name}", index, self)
        self.nodes.append(node)
        create_netns(node.netns)
        self.in_underlay(self._plug, node)
        node.call(self._address_underlay, node)
        node.call(ensure_host_address, node.router_ip)
        node.start_datapath()
        return node

    def _make_bridge(self) -> None:
        with IPRoute() as ipr:
            ipr.link("add", ifname=self.bridge, kind="bridge")
            ipr.link("set", index=ipr.link_lookup(ifname=self.bridge)[0], state="up")

    def _plug(self, node: Node) -> None:
        port = f"{self.prefix}p{node.name}"
        fd = os.open(node.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with IPRoute() as ipr:
                peer = {"ifname": "underlay", "net_ns_fd": fd}
                ipr.link("add", ifname=port, kind="veth", peer=peer)
                index = ipr.link_lookup(ifname=port)[0]
                master = ipr.link_lookup(ifname=self.bridge)[0]
                ipr.link("set", index=index, master=master, state="up")
        finally:
            os.close(fd)

    @staticmethod
    def _address_underlay(node: Node) -> None:
        with IPRoute() as ipr:
            for name in ("lo", "underlay"):
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
            index = ipr.link_lookup(ifname="underlay")[0]
            ipr.addr("add", index=index, address=node.underlay_ip, prefixlen=24)

    def connect(self) -> list[tuple[int, int]]:
        """Give every node the tunnel map and routes to every other node's pod range
        (the node's own range is passed too: the datapath leaves it out)."""
        ranges = {n.pod_range: n.underlay_ip for n in self.nodes}
        return [node.call(node.dp.sync_tunnels, ranges) for node in self.nodes]

    def sync_ipcache(self) -> list[tuple[int, int]]:
        """Every node's ipcache: every pod with its node as tunnel endpoint, its router."""
        desired = {f"{p.ip}/32": p.identity for n in self.nodes for p in n.pods}
        tunnels = {f"{p.ip}/32": n.underlay_ip for n in self.nodes for p in n.pods}
        return [
            node.call(
                node.dp.sync_ipcache, desired | {f"{node.router_ip}/32": 1}, frozenset(), tunnels
            )
            for node in self.nodes
        ]

    def responder(self, pod: Pod, ports: tuple[int, ...]) -> ProcessRecord:
        """The built-in responder in a pod: HTTP on TCP `ports`, echo on UDP `ports`."""
        argv = [sys.executable, "-m", "cilia.runtime.responder", f"--pod=test/{pod.net.netns}"]
        argv += [f"--tcp={p}" for p in ports] + [f"--udp={p}" for p in ports]
        rec = start_process(pod.path, argv, str(self.tmp / f"{pod.net.netns}.log"))
        self.procs.append(rec)
        assert wait_listening(pod.path, ports, ports, timeout=10.0)
        return rec

    def start(self, argv: list[str], where: str, log_name: str) -> ProcessRecord:
        """Any process inside a namespace path, stopped by cleanup()."""
        rec = start_process(where, argv, str(self.tmp / log_name))
        self.procs.append(rec)
        return rec

    def cleanup(self) -> list[str]:
        """Remove everything; returns what is still left (should be nothing)."""
        for rec in self.procs:
            stop_process(rec)
        for node in self.nodes:
            if node.datapath is not None:
                with suppress(Exception):
                    node.call(node.datapath.close)
            node.worker.shutdown()
            remove_pins(node.pin_dir)
        self._underlay.shutdown()
        mine = f"cilia-test-{self.prefix}-"
        for name in list_netns():
            if name.startswith(mine):
                delete_netns(name)
        left = [f"netns {n}" for n in list_netns() if n.startswith(mine)]
        left += [f"pins {n.pin_dir}" for n in self.nodes if n.pin_dir.exists()]
        return left


def snmp(netns_path_: str) -> dict[str, int]:
    """'Ip.FragCreates'-style counters of /proc/net/snmp in a namespace."""
    with setns(netns_path_), open("/proc/thread-self/net/snmp") as f:
        rows = f.read().splitlines()
    out: dict[str, int] = {}
    for names, values in zip(rows[::2], rows[1::2], strict=True):
        group = names.split(":")[0]
        for name, value in zip(names.split()[1:], values.split()[1:], strict=True):
            out[f"{group}.{name}"] = int(value)
    return out


def link_stats(ifname: str) -> dict[str, int]:
    """rx/tx packet, error and drop counters of a device of the current namespace."""
    with IPRoute() as ipr:
        stats = ipr.link("get", ifname=ifname)[0].get("IFLA_STATS64")
    keys = ("rx_packets", "tx_packets", "rx_errors", "tx_errors", "rx_dropped", "tx_dropped")
    return {k: int(stats[k]) for k in keys}
