"""The cross-node datapath with real packets (no agent).

Two node namespaces on an underlay bridge, each with its own pins and a Datapath
used from inside the node, one pod per node: VXLAN in external mode with the
source identity in the VNI, the tunnel map and the tunnel-aware ipcache, `host`
never crossing nodes, drop 160, the tunnel MTU, restart and drift repair.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import errno
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute

from cilia.datapath.layout import MARK_MAGIC_FROM_PROXY
from cilia.datapath.netns import setns, socket_in_netns
from cilia.datapath.overlay import SCOPE_LINK, VXLAN_PORT, remove_overlay_device
from cilia.datapath.pod_network import MAIN_TABLE, POD_IFNAME, ensure_pod_network, route_mtu
from cilia.datapath.proxy_device import proxy_device_name
from cilia.datapath.proxy_routing import ensure_proxy_routing
from cilia.policy.desired import (
    ALL_PORTS,
    Direction,
    EndpointPolicy,
    L7Allow,
    PolicyEntry,
    Protocol,
    Redirect,
)
from cilia.proxy.sockets import listener
from cilia.runtime.probe import probe
from tests.integration.overlay_nodes import Cluster, Node, Pod, link_stats, snmp

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]

ID_A, ID_B, ID_OTHER = 1001, 1002, 1003
HOST, CLUSTER = 1, 3
PORT, CLOSED = 80, 81
INGRESS, EGRESS = 0, 1
DROP_POLICY, DROP_UNKNOWN_TARGET, DROP_POLICY_L4, DROP_NO_TUNNEL = 133, 150, 159, 160
IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2
Counts = dict[tuple[int, int], int]


@dataclass
class Env:
    cluster: Cluster
    a: Node
    b: Node
    pa: Pod
    pb: Pod


def allow(direction: Direction, identity: int, *ports: tuple[int, Protocol]) -> EndpointPolicy:
    """Enforce `direction`, allowing only `identity` on `ports`."""
    entries = frozenset(PolicyEntry(direction, identity, p, proto) for p, proto in ports)
    return EndpointPolicy(
        ingress_enforced=direction is Direction.INGRESS,
        egress_enforced=direction is Direction.EGRESS,
        entries=entries,
    )


WEB = ((PORT, Protocol.TCP), (PORT, Protocol.UDP))


def base_policies(env: Env) -> None:
    """Pod A: ingress from pod B on WEB, egress to pod B only; pod B: ingress from pod A
    on WEB."""
    a_in = allow(Direction.INGRESS, ID_B, *WEB)
    a_out = allow(Direction.EGRESS, ID_B, (ALL_PORTS, Protocol.ANY))
    env.pa.program(
        EndpointPolicy(True, True, a_in.entries | a_out.entries),
    )
    env.pb.program(allow(Direction.INGRESS, ID_A, *WEB))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    cluster = Cluster("co" + secrets.token_hex(3), tmp_path_factory.mktemp("overlay"))
    try:
        a, b = cluster.add_node(), cluster.add_node()
        pa, pb = a.add_pod(ID_A, (PORT,)), b.add_pod(ID_B, (PORT,))
        cluster.connect()
        cluster.sync_ipcache()
        yield Env(cluster, a, b, pa, pb)
    finally:
        left = cluster.cleanup()
    assert not left, left


@pytest.fixture(autouse=True)
def base(env: Env) -> Iterator[Env]:
    base_policies(env)
    yield env
    env.cluster.connect()
    env.cluster.sync_ipcache()
    for node in (env.a, env.b):
        node.call(node.dp.verify)  # what a test changed behind the datapath's back
    base_policies(env)


def reaches(src: str, dst: str, port: int = PORT, proto: str = "TCP") -> bool:
    """Probe from the namespace at `src`; True when answered."""
    return asyncio.run(probe(src, dst, port, proto, 1.0)).result == "allowed"


def drops(node: Node) -> Counts:
    """(reason, direction) -> packets of the node's datapath."""
    return {k: v[0] for k, v in node.dp.counters().items()}


def grew(
    before: dict[tuple[int, int], int], after: dict[tuple[int, int], int]
) -> set[tuple[int, int]]:
    """Counters that moved, leaving out forwarded packets and the pods' IPv6 chatter."""
    return {k for k, v in after.items() if k[0] not in (0, 139) and v > before.get(k, 0)}


def test_cross_node_tcp_and_udp_allowed_both_ways(env: Env) -> None:
    pa, pb = env.pa, env.pb
    tcp = asyncio.run(probe(pa.path, pb.ip, PORT, "TCP", 2.0))
    assert (tcp.result, tcp.detail) == ("allowed", "HTTP/1.1 200 OK"), tcp
    assert reaches(pa.path, pb.ip, proto="UDP")
    # B to A: A's ingress allows B; A's enforced egress lets the replies through (CT).
    assert reaches(pb.path, pa.ip) and reaches(pb.path, pa.ip, proto="UDP")
    assert env.a.dp.tunnel_entries() == {env.b.pod_range: env.b.underlay_ip}
    entry = env.a.dp.ipcache_entries()[f"{pb.ip}/32"]
    assert (entry.identity, entry.tunnel_endpoint) == (ID_B, env.b.underlay_ip)
    assert env.a.dp.ipcache_entries()[f"{pa.ip}/32"].tunnel_endpoint == ""


def test_denials_are_counted_on_the_receiving_node(env: Env) -> None:
    a, b, pa, pb = env.a, env.b, env.pa, env.pb
    before_a, before_b = drops(a), drops(b)
    assert not reaches(pa.path, pb.ip, CLOSED), "B allows A on port 80 only"
    assert grew(before_b, drops(b)) == {(DROP_POLICY_L4, INGRESS)}
    pb.program(allow(Direction.INGRESS, ID_OTHER, *WEB))
    before_b = drops(b)
    assert not reaches(pa.path, pb.ip) and not reaches(pa.path, pb.ip, proto="UDP")
    assert grew(before_b, drops(b)) == {(DROP_POLICY, INGRESS)}
    assert grew(before_a, drops(a)) == set(), "the sender's egress allowed it"

    pa.program(allow(Direction.INGRESS, ID_OTHER, *WEB))
    before_a, before_b = drops(a), drops(b)
    assert not reaches(pb.path, pa.ip)
    assert grew(before_a, drops(a)) == {(DROP_POLICY, INGRESS)}
    assert grew(before_b, drops(b)) == set()


def test_receiver_takes_the_source_identity_from_the_vni(env: Env) -> None:
    b, pa, pb = env.b, env.pa, env.pb
    # B's ipcache is wrong about pod A; B's verdicts still follow the VNI.
    wrong = {f"{p.ip}/32": p.identity for p in (pa, pb)} | {f"{pa.ip}/32": ID_OTHER}
    b.call(b.dp.sync_ipcache, wrong, frozenset(), {f"{pa.ip}/32": env.a.underlay_ip})
    assert reaches(pa.path, pb.ip)
    pb.program(allow(Direction.INGRESS, ID_OTHER, *WEB))
    assert not reaches(pa.path, pb.ip)


class Capture:
    """VXLAN frames on one bridge port: (VNI, inner source, inner destination)."""

    def __init__(self, cluster: Cluster, port: str) -> None:
        proto = socket.htons(0x0003)  # ETH_P_ALL
        self.sock = socket_in_netns(cluster.underlay_path, socket.AF_PACKET, socket.SOCK_RAW, proto)
        self.sock.bind((port, 0x0003))

    def frames(self) -> set[tuple[int, str, str]]:
        seen = set()
        self.sock.settimeout(0.3)
        try:
            while True:
                frame = self.sock.recv(65536)
                if parsed := self._parse(frame):
                    seen.add(parsed)
        except TimeoutError:
            return seen
        finally:
            self.sock.close()

    @staticmethod
    def _parse(f: bytes) -> tuple[int, str, str] | None:
        if f[12:14] != b"\x08\x00" or f[23] != socket.IPPROTO_UDP:
            return None
        udp = 14 + (f[14] & 0xF) * 4
        if int.from_bytes(f[udp + 2 : udp + 4], "big") != VXLAN_PORT:
            return None
        vni = int.from_bytes(f[udp + 12 : udp + 15], "big")
        inner = udp + 16 + 14
        if f[inner - 2 : inner] != b"\x08\x00":
            return None
        src, dst = f[inner + 12 : inner + 16], f[inner + 16 : inner + 20]
        return vni, socket.inet_ntoa(src), socket.inet_ntoa(dst)


def test_underlay_carries_the_source_identity_as_vni(env: Env) -> None:
    a, pa, pb = env.a, env.pa, env.pb
    cap = Capture(env.cluster, f"{env.cluster.prefix}p{env.b.name}")
    assert reaches(pa.path, pb.ip) and reaches(pb.path, pa.ip)
    reaches(a.path, pb.ip)  # the node's own traffic (denied there: B allows A only)
    seen = cap.frames()
    assert {v for v, s, d in seen if (s, d) == (pa.ip, pb.ip)} == {ID_A}, seen
    assert {v for v, s, d in seen if (s, d) == (pb.ip, pa.ip)} == {ID_B}, seen
    assert {v for v, s, d in seen if (s, d) == (a.router_ip, pb.ip)} == {HOST}, seen


def test_another_nodes_own_traffic_is_cluster_never_host(env: Env) -> None:
    a, b, pb = env.a, env.b, env.pb
    pb.program(allow(Direction.INGRESS, CLUSTER, (PORT, Protocol.TCP)))
    assert reaches(a.path, pb.ip), "node A's processes are cluster on node B"
    pb.program(allow(Direction.INGRESS, HOST, (PORT, Protocol.TCP)))
    before = drops(b)
    assert not reaches(a.path, pb.ip), "node A's processes are not node B's host"
    assert grew(before, drops(b)) == {(DROP_POLICY, INGRESS)}
    assert reaches(b.path, pb.ip), "node B's own processes are its host"


def test_cluster_address_without_tunnel_endpoint_is_dropped_160(env: Env) -> None:
    a, pa, pb = env.a, env.pa, env.pb
    pa.program(EndpointPolicy())
    before = drops(a)
    assert not reaches(pa.path, f"{env.cluster.net}.9.9")
    assert grew(before, drops(a)) == {(DROP_NO_TUNNEL, EGRESS)}
    # Node B leaves: its range and its pod's tunnel endpoint go.
    assert a.call(a.dp.sync_tunnels, {}) == (0, 1)
    a.call(a.dp.sync_ipcache, {f"{pa.ip}/32": ID_A, f"{pb.ip}/32": ID_B})
    assert env.a.dp.tunnel_entries() == {}
    before = drops(a)
    assert not reaches(pa.path, pb.ip)
    assert grew(before, drops(a)) == {(DROP_NO_TUNNEL, EGRESS)}
    assert not reaches(a.path, pb.ip), "no route through the tunnel any more"


def _pod_mtus(pod: Pod) -> tuple[int, dict[str, int | None]]:
    with setns(pod.path), IPRoute() as ipr:
        link = ipr.link("get", ifname=POD_IFNAME)[0]
        routes = {
            f"{r.get('RTA_DST', 'default')}": route_mtu(r)
            for r in ipr.route("dump", family=socket.AF_INET, table=MAIN_TABLE)
            if r.get("RTA_TABLE") == MAIN_TABLE and r.get("RTA_DST") != pod.ip
        }
    return int(link.get("IFLA_MTU")), routes


def test_pods_receive_full_size_and_send_what_fits_the_tunnel(env: Env) -> None:
    b, pa, pb = env.b, env.pa, env.pb
    assert _pod_mtus(pb) == (1500, {"default": 1450, "169.254.1.1": 1450})
    pb.program(EndpointPolicy())
    rx = socket_in_netns(pb.path, socket.AF_INET, socket.SOCK_DGRAM)
    senders = [socket_in_netns(p, socket.AF_INET, socket.SOCK_DGRAM) for p in (b.path, pa.path)]
    try:
        rx.bind((pb.ip, 9999))
        rx.settimeout(2.0)
        for s in senders:
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        reassembled = snmp(pb.path)["Ip.ReasmReqds"]
        from_node, from_pod = senders
        from_node.sendto(b"n" * 1472, (pb.ip, 9999))  # 1500 bytes, DF, outside the tunnel
        assert rx.recv(4096) == b"n" * 1472
        with pytest.raises(OSError) as too_big:
            from_pod.sendto(b"p" * 1472, (pb.ip, 9999))
        assert too_big.value.errno == errno.EMSGSIZE, "the pod's route MTU is 1450"
        from_pod.sendto(b"p" * 1422, (pb.ip, 9999))  # 1450 bytes through the tunnel
        assert rx.recv(4096) == b"p" * 1422
        assert snmp(pb.path)["Ip.ReasmReqds"] == reassembled, "nothing came fragmented"
    finally:
        for s in (rx, *senders):
            s.close()


FRAG_COUNTERS = ("Ip.FragCreates", "Ip.FragFails", "Ip.FragOKs", "Ip.ReasmReqds")


def _transfer(src: Pod, dst: Pod, port: int, size: int) -> tuple[int, int]:
    """Send `size` bytes over TCP from src to dst; (bytes received, client MSS)."""
    server = socket_in_netns(dst.path, socket.AF_INET, socket.SOCK_STREAM)
    client = socket_in_netns(src.path, socket.AF_INET, socket.SOCK_STREAM)
    received = [0]

    def sink() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(1 << 16):
                received[0] += len(chunk)

    try:
        server.bind((dst.ip, port))
        server.listen()
        reader = threading.Thread(target=sink)
        reader.start()
        client.settimeout(20.0)
        client.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        client.connect((dst.ip, port))
        mss = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        client.sendall(b"\0" * size)
        client.close()
        reader.join(20.0)
    finally:
        client.close()
        server.close()
    return received[0], mss


def test_large_cross_node_tcp_transfer_has_no_fragments_or_drops(env: Env) -> None:
    a, b, pa, pb = env.a, env.b, env.pa, env.pb
    pb.program(allow(Direction.INGRESS, ID_A, (5001, Protocol.TCP)))
    pa.program(EndpointPolicy())
    where = (pa.path, pb.path, a.path, b.path)
    frags = [{k: snmp(p)[k] for k in FRAG_COUNTERS} for p in where]
    links = [n.call(link_stats, n.vxlan) for n in (a, b)]
    before_a, before_b = drops(a), drops(b)
    size = 32 << 20
    received, mss = _transfer(pa, pb, 5001, size)
    assert received == size
    assert mss <= 1450 - 40
    assert [{k: snmp(p)[k] for k in FRAG_COUNTERS} for p in where] == frags
    after = [n.call(link_stats, n.vxlan) for n in (a, b)]
    for old, new in zip(links, after, strict=True):
        assert {k: new[k] - old[k] for k in new if "err" in k or "drop" in k} == {
            "rx_errors": 0,
            "tx_errors": 0,
            "rx_dropped": 0,
            "tx_dropped": 0,
        }
    assert after[0]["tx_packets"] > links[0]["tx_packets"]
    assert grew(before_a, drops(a)) == set() and grew(before_b, drops(b)) == set()


def _restart(node: Node, before_overlay: Callable[[], None]) -> tuple[int, int]:
    """A new Datapath on the same pins, as a restarted agent (`before_overlay` runs
    before it attaches the overlay again); policy entries rewritten."""
    node.start_datapath(overlay=False)
    before_overlay()
    node.attach_overlay()
    changed = [0, 0]
    for pod in node.pods:
        node.call(node.dp.attach, pod.net.host_ifname, pod.net.host_ifindex)
        written, removed = pod.program(pod.policy)
        changed[0] += written
        changed[1] += removed
    return changed[0], changed[1]


def test_restart_keeps_an_established_cross_node_flow(env: Env) -> None:
    a, b, pa, pb = env.a, env.b, env.pa, env.pb
    pb.program(allow(Direction.INGRESS, ID_A, (5002, Protocol.TCP), (PORT, Protocol.TCP)))

    def new_flows_keep_their_identity() -> None:
        assert reaches(pa.path, pb.ip), "B allows only A's identity"
        assert reaches(pb.path, pa.ip)

    server = socket_in_netns(pb.path, socket.AF_INET, socket.SOCK_STREAM)
    client = socket_in_netns(pa.path, socket.AF_INET, socket.SOCK_STREAM)
    try:
        server.bind((pb.ip, 5002))
        server.listen()
        client.settimeout(3.0)
        client.connect((pb.ip, 5002))
        conn, _ = server.accept()
        conn.settimeout(3.0)
        client.sendall(b"before")
        assert conn.recv(16) == b"before"
        vxlans = [n.dp.overlay.ifindex for n in (a, b) if n.dp.overlay]
        assert _restart(a, new_flows_keep_their_identity) == (0, 0)
        assert _restart(b, new_flows_keep_their_identity) == (0, 0)
        assert [n.dp.overlay.ifindex for n in (a, b) if n.dp.overlay] == vxlans
        assert env.cluster.connect() == [(0, 0), (0, 0)], "the pinned maps are kept"
        assert env.cluster.sync_ipcache() == [(0, 0), (0, 0)]
        client.sendall(b"after")
        assert conn.recv(16) == b"after"
        conn.sendall(b"reply")
        assert client.recv(16) == b"reply"
        conn.close()
    finally:
        client.close()
        server.close()


def test_pod_packets_routed_into_the_tunnel_keep_their_identity(env: Env) -> None:
    # The endpoint program does not tunnel (its config lost the VXLAN device): the
    # stack routes pod A's packets into the device, whose program tags them with
    # pod A's identity, never with the node's.
    a, pa, pb = env.a, env.pa, env.pb
    cfg = a.dp.config.lookup(ctypes.c_uint32(0))
    assert cfg is not None and cfg.vxlan_ifindex
    cfg.vxlan_ifindex = 0
    a.dp.config.update(ctypes.c_uint32(0), cfg)
    cap = Capture(env.cluster, f"{env.cluster.prefix}p{env.b.name}")
    assert reaches(pa.path, pb.ip), "B allows only A's identity"
    assert {v for v, s, d in cap.frames() if (s, d) == (pa.ip, pb.ip)} == {ID_A}
    assert a.call(a.dp.verify).repaired == ["datapath config restored"]


def test_verify_repairs_tunnel_map_routes_and_device(env: Env) -> None:
    a, pa, pb = env.a, env.pa, env.pb
    cluster_ip = env.cluster.net
    a.dp.tunnel.remove(env.b.pod_range)
    a.dp.tunnel.set(f"{cluster_ip}.77.0/24", env.b.underlay_ip)
    assert a.dp.overlay is not None
    with setns(a.path), IPRoute() as ipr:
        ipr.route("del", dst=env.b.pod_range, oif=a.dp.overlay.ifindex, scope=SCOPE_LINK)
    repaired = a.call(a.dp.verify).repaired
    assert f"tunnel entry restored: {env.b.pod_range} -> {env.b.underlay_ip}" in repaired
    assert f"foreign tunnel entry removed: {cluster_ip}.77.0/24" in repaired
    assert "overlay routes: 1 restored, 0 foreign removed" in repaired
    assert a.call(a.dp.verify).repaired == []
    assert reaches(pa.path, pb.ip)

    assert a.call(remove_overlay_device, a.vxlan) is True
    assert a.call(remove_overlay_device, a.vxlan) is False
    assert not reaches(pa.path, pb.ip), "no device, no tunnel"
    repaired = a.call(a.dp.verify).repaired
    assert any(line.startswith(f"overlay device {a.vxlan} re-attached") for line in repaired)
    assert reaches(pa.path, pb.ip)
    env.pb.program(allow(Direction.INGRESS, CLUSTER, (PORT, Protocol.TCP)))
    assert reaches(a.path, pb.ip), "the node's routes through the tunnel are back"


PROXY_PORT, L7_PORT = 15001, 8080


def _node_proxy(node: Node) -> socket.socket:
    """A transparent listener in the node as its L7 proxy, with the node's proxy
    device and the routing that delivers redirected packets to it."""
    node.call(node.dp.attach_proxy_device, proxy_device_name(node.netns))
    node.call(ensure_proxy_routing)
    sock = node.call(listener, "0.0.0.0", PROXY_PORT, transparent=True)
    sock.settimeout(3.0)
    return sock


def _redirect(pod: Pod, direction: Direction, port: int, identity: int) -> None:
    """Enforce `direction`: only `identity` on `port`/TCP, through the node's proxy."""
    redirect = Redirect(direction, port, "http", (L7Allow(identity),))
    policy = allow(direction, identity, (port, Protocol.TCP))
    pod.program(
        dataclasses.replace(policy, redirects=frozenset({redirect})), {redirect: PROXY_PORT}
    )


def test_l7_ingress_from_another_node_reaches_the_proxy_as_the_vni_identity(env: Env) -> None:
    # Through cilia_to_container, the proxy device and cilia_from_host; B's ipcache is
    # wrong about pod A, so a verdict taken from it would drop the flow.
    b, pa, pb = env.b, env.pa, env.pb
    b.call(b.dp.sync_ipcache, {f"{pa.ip}/32": ID_OTHER, f"{pb.ip}/32": ID_B})
    _redirect(pb, Direction.INGRESS, L7_PORT, ID_A)
    proxy = _node_proxy(b)
    client = socket_in_netns(pa.path, socket.AF_INET, socket.SOCK_STREAM)
    try:
        client.settimeout(3.0)
        client.connect((pb.ip, L7_PORT))
        conn, peer = proxy.accept()
        with conn:
            assert conn.getsockname() == (pb.ip, L7_PORT) and peer[0] == pa.ip
            conn.sendall(b"proxied")  # back through the tunnel to pod A
            assert client.recv(64) == b"proxied"
    finally:
        client.close()
        proxy.close()


def _upstream(node: Node, dst: Pod, mark: int) -> bool:
    """Does an HTTP request of a proxy in `node` (its upstream marked `mark`) get answered?"""
    sock = socket_in_netns(node.path, socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        sock.settimeout(1.0)
        sock.connect((dst.ip, PORT))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return sock.recv(64).startswith(b"HTTP/1.1 200")
    except TimeoutError:
        return False
    finally:
        sock.close()


def test_l7_egress_to_another_node_leaves_the_proxy_with_the_source_identity(env: Env) -> None:
    a, b, pa, pb = env.a, env.b, env.pa, env.pb
    _redirect(pa, Direction.EGRESS, PORT, ID_B)
    proxy = _node_proxy(a)
    client = socket_in_netns(pa.path, socket.AF_INET, socket.SOCK_STREAM)
    try:
        client.settimeout(3.0)
        client.connect((pb.ip, PORT))
        conn, _ = proxy.accept()
        with conn:
            assert conn.getsockname() == (pb.ip, PORT), "pod A's flow went to A's proxy"
    finally:
        client.close()
        proxy.close()
    # The proxy's upstream: its mark names pod A, so B (allowing only A) lets it in.
    assert _upstream(a, pb, MARK_MAGIC_FROM_PROXY | ID_A << 16)
    before = drops(b)
    assert not _upstream(a, pb, MARK_MAGIC_FROM_PROXY), "identity 0: node A's own, cluster on B"
    assert grew(before, drops(b)) == {(DROP_POLICY, INGRESS)}


def test_pod_route_mtu_is_fixed_in_place(env: Env) -> None:
    a, pa = env.a, env.pa
    net = pa.net
    args = (net.netns, net.host_ifname, net.ipv4, 1500)
    plain = a.call(ensure_pod_network, *args, route_src=a.router_ip)
    assert plain.host_ifindex == net.host_ifindex and plain.route_mtu is None
    assert _pod_mtus(pa) == (1500, {"default": None, "169.254.1.1": None})
    again = a.call(ensure_pod_network, *args, route_src=a.router_ip, route_mtu=1450)
    assert again == net
    assert _pod_mtus(pa) == (1500, {"default": 1450, "169.254.1.1": 1450})


def test_unknown_local_target_from_the_tunnel_is_dropped(env: Env) -> None:
    # A sends to an address of B's range that no endpoint of B has: B drops it (150).
    b, pa = env.b, env.pa
    ghost = f"{env.cluster.net}.{b.index}.99"
    pa.program(EndpointPolicy())
    before = drops(b)
    assert not reaches(pa.path, ghost)
    assert grew(before, drops(b)) == {(DROP_UNKNOWN_TARGET, INGRESS)}
