"""The cluster's datapath on real namespaces and packets, on the shared 3-node cluster.

Each test runs its own namespace of pods pinned to nodes (`tests/cluster/workload.py`)
and deletes it at the end: cluster-wide identities and their store layout, cross-node
L3/L4/L7 verdicts in both directions with drops, events and L7 metrics on the node that
enforced them, the `host` and `cluster` entities across nodes, the VNI on the underlay,
the tunnel MTU, and the tunnel map and ipcache as the CLI shows them.
"""

from __future__ import annotations

import re
import signal
import socket
import struct
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from cilia.datapath.netns import setns
from tests.cluster.harness import ClusterHandle
from tests.cluster.workload import (
    Doc,
    Monitor,
    PodConnection,
    Workload,
    metric,
    node_netns,
    own_drops,
    reaches,
    workload,
)
from tests.integration.overlay_nodes import link_stats, snmp

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]

IDENTITIES = "cilia/state/identities/v1/"
DROP_POLICY, DROP_POLICY_L4 = 133, 159
CLUSTER = 3
VXLAN_PORT = 8472
IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2
FRAG_COUNTERS = ("Ip.FragCreates", "Ip.FragFails", "Ip.FragOKs", "Ip.ReasmReqds")
L7_METRICS = ("received", "forwarded", "denied")


def _selects(app: str) -> Doc:
    return {"matchLabels": {"app": app}}


def _port(port: int, http: list[Doc] | None = None) -> Doc:
    rule: Doc = {"ports": [{"port": str(port), "protocol": "TCP"}]}
    return rule | ({"rules": {"http": http}} if http else {})


def ingress(dst: str, src: str, port: int, http: list[Doc] | None = None) -> Doc:
    """Pods `app=dst` accept `app=src` on `port` (through HTTP rules when given)."""
    return {
        "endpointSelector": _selects(dst),
        "ingress": [{"fromEndpoints": [_selects(src)], "toPorts": [_port(port, http)]}],
    }


def egress(src: str, dst: str, port: int, http: list[Doc] | None = None) -> Doc:
    """Pods `app=src` may reach `app=dst` on `port` only."""
    return {
        "endpointSelector": _selects(src),
        "egress": [{"toEndpoints": [_selects(dst)], "toPorts": [_port(port, http)]}],
    }


PUBLIC_ONLY = [{"method": "GET", "path": "/public"}]


def test_equal_labels_get_one_identity_on_every_node(cluster: ClusterHandle) -> None:
    with workload(cluster, "ident") as w:
        twins = {f"twin{i}": n for i, n in enumerate(cluster.nodes, 1)}
        w.apply(
            w.namespace_doc(),
            *(w.pod(name, node, {"app": "twin"}, ports=(80,)) for name, node in twins.items()),
            w.pod("solo", cluster.nodes[0], {"app": "solo"}, ports=(80,)),
        )
        ident = w.info("twin1").identity
        assert {w.info(name).identity for name in twins} == {ident}
        solo = w.info("solo").identity
        assert solo != ident

        labels: list[str] = []
        for node in cluster.nodes:
            listed = cluster.run(node, "identity", "list", "-o", "json")
            assert listed.code == 0, listed.stderr
            by_id = {i["id"]: i["labels"] for i in listed.json()}
            labels = labels or by_id[ident]
            assert by_id[ident] == labels and "k8s:app=twin" in labels, node
            assert solo in by_id, f"{node} knows identities of pods it does not run"
            endpoints = cluster.run(node, "endpoint", "list", "-o", "json").json()
            mine = [e["identity"] for e in endpoints if e["pod"].startswith(f"{w.namespace}/")]
            assert sorted(mine) == sorted([ident] + ([solo] if node == cluster.nodes[0] else [])), (
                node
            )

        res = cluster.run(
            cluster.nodes[1], "kvstore", "get", "--recursive", IDENTITIES, "-o", "json"
        )
        assert res.code == 0, res.stderr
        store = {kv["key"]: kv for kv in res.json()}
        master = store[f"{IDENTITIES}id/{ident}"]
        assert master["lease"] == 0, "the id key outlives every node"
        assert master["value"].rstrip(";").split(";") == labels
        refs = f"{IDENTITIES}value/{master['value']}/"
        per_node = {k.removeprefix(refs): kv for k, kv in store.items() if k.startswith(refs)}
        assert sorted(per_node) == cluster.nodes
        assert {kv["value"] for kv in per_node.values()} == {str(ident)}
        assert all(kv["lease"] for kv in per_node.values()), "references live under leases"
        solo_key = store[f"{IDENTITIES}id/{solo}"]["value"]
        assert [k for k in store if k.startswith(f"{IDENTITIES}value/{solo_key}/")] == [
            f"{IDENTITIES}value/{solo_key}/{cluster.nodes[0]}"
        ]
        text = cluster.run(None, "kvstore", "get", "--recursive", IDENTITIES).stdout
        assert f"{IDENTITIES}id/{ident} => {master['value']}\n" in text


Case = tuple[str, str, int, tuple[str, int] | None]
"""(source pod, destination pod, port, (node expected to drop, reason) or None: allowed)."""


def _verdicts(w: Workload, cases: list[Case], direction: str) -> None:
    """Probe each case; a denial must be counted and reported by the node expected to
    enforce it (with the source's identity), and by no other node."""
    nodes = w.cluster.nodes
    # The session cluster is dual stack: each probe goes over both families.
    mine = {ip for case in cases for p in case[:2] for ip in (w.info(p).ip, w.info(p).ipv6)}
    expected: dict[str, set[tuple[Any, ...]]] = {n: set() for n in nodes}
    with ExitStack() as stack:
        monitors = {n: stack.enter_context(Monitor(w.cluster, n, "drop")) for n in nodes}
        for src, dst, port, denial in cases:
            what = f"{src} -> {dst}:{port}"
            with own_drops(w.cluster, monitors, mine) as moved:
                allowed = w.probe(src, dst, port)
            assert allowed == (denial is None), what
            want: dict[str, set[tuple[int, str]]] = {n: set() for n in nodes}
            if denial is not None:
                enforcer, reason = denial
                want[enforcer] = {(reason, direction)}
                s, d = w.info(src), w.info(dst)
                for source, dest in ((s.ip, d.ip), (s.ipv6, d.ipv6)):
                    expected[enforcer].add((source, dest, port, reason, direction, s.identity))
            assert moved == want, what
        for node, mon in monitors.items():
            mon.settle(partial(_reported, mine=mine, expected=expected[node]))
    for node, mon in monitors.items():
        assert _drops(mon, mine) == expected[node], node


def _reported(mon: Monitor, mine: set[str], expected: set[tuple[Any, ...]]) -> bool:
    return _drops(mon, mine) >= expected


def _drops(mon: Monitor, sources: set[str]) -> set[tuple[Any, ...]]:
    """(source, destination, port, reason, direction, source identity) of the drops a
    monitor reported of packets from `sources`."""
    keys = ("src-ip", "dst-ip", "dst-port", "reason", "direction", "src-identity")
    return {tuple(e[k] for k in keys) for e in mon.of("drop") if e.get("src-ip") in sources}


def _four_pods(w: Workload, *policies: Doc) -> tuple[str, str]:
    """a and x1 on the first node, b and x2 on the second; x pods are never allowed."""
    n1, n2 = w.cluster.nodes[:2]
    w.apply(
        w.namespace_doc(),
        w.pod("a", n1, {"app": "a"}),
        w.pod("x1", n1, {"app": "x"}),
        w.pod("b", n2, {"app": "b"}),
        w.pod("x2", n2, {"app": "x"}),
        *policies,
    )
    return n1, n2


def test_l3_l4_ingress_across_nodes_both_ways(cluster: ClusterHandle) -> None:
    with workload(cluster, "l34in") as w:
        n1, n2 = _four_pods(
            w, w.policy("to-b", ingress("b", "a", 80)), w.policy("to-a", ingress("a", "b", 80))
        )
        cases: list[Case] = [
            ("a", "b", 80, None),
            ("b", "a", 80, None),
            ("a", "b", 81, (n2, DROP_POLICY_L4)),
            ("x1", "b", 80, (n2, DROP_POLICY)),
            ("b", "a", 81, (n1, DROP_POLICY_L4)),
            ("x2", "a", 80, (n1, DROP_POLICY)),
        ]
        _verdicts(w, cases, "ingress")
        shown = cluster.run(n2, "bpf", "metrics", "list", "-o", "json")
        assert shown.code == 0
        assert {r["reason_code"] for r in shown.json()} >= {DROP_POLICY, DROP_POLICY_L4}


def test_l3_l4_egress_across_nodes_both_ways(cluster: ClusterHandle) -> None:
    with workload(cluster, "l34eg") as w:
        n1, n2 = _four_pods(
            w, w.policy("from-a", egress("a", "b", 80)), w.policy("from-b", egress("b", "a", 80))
        )
        cases: list[Case] = [
            ("a", "b", 80, None),
            ("b", "a", 80, None),
            ("a", "b", 81, (n1, DROP_POLICY_L4)),
            ("a", "x2", 80, (n1, DROP_POLICY)),
            ("b", "a", 81, (n2, DROP_POLICY_L4)),
            ("b", "x1", 80, (n2, DROP_POLICY)),
            ("x1", "b", 80, None),  # b enforces egress only
        ]
        _verdicts(w, cases, "egress")


def _l7_counts(cluster: ClusterHandle) -> dict[str, dict[str, float]]:
    return {
        n: {m: metric(cluster, n, f"cilia_policy_l7_{m}_total") for m in L7_METRICS}
        for n in cluster.nodes
    }


def _l7_pair(w: Workload, src: str, dst: str, enforcer: str) -> None:
    """GET /public passes and GET /private is refused by the proxy of `enforcer`, which
    alone reports both requests (events and metrics)."""
    before = _l7_counts(w.cluster)
    s, d = w.info(src), w.info(dst)

    def requests(mon: Monitor) -> set[tuple[Any, ...]]:
        return {
            (e["path"], e["verdict"], e["src-identity"])
            for e in mon.of("l7")
            if e["source"].startswith(f"{s.ip}:") and e["destination"] == f"{d.ip}:80"
        }

    with Monitor(w.cluster, enforcer, "l7") as mon:
        assert w.get(src, dst, "/public") == 200
        assert w.get(src, dst, "/private") == 403
        mon.settle(lambda m: len(requests(m)) >= 2)
    after = _l7_counts(w.cluster)
    for node in w.cluster.nodes:
        delta = {m: after[node][m] - before[node][m] for m in L7_METRICS}
        want = dict.fromkeys(L7_METRICS, 0.0)
        if node == enforcer:
            want = {"received": 2.0, "forwarded": 1.0, "denied": 1.0}
        assert delta == want, f"L7 metrics of {node} ({src} -> {dst})"
    assert requests(mon) == {
        ("/public", "forwarded", s.identity),
        ("/private", "denied", s.identity),
    }, mon.events


def test_l7_ingress_rules_apply_on_the_destinations_node_both_ways(
    cluster: ClusterHandle, tmp_path: Path
) -> None:
    with workload(cluster, "l7in") as w:
        n1, n2 = _four_pods(
            w,
            w.policy("to-b", ingress("b", "a", 80, PUBLIC_ONLY)),
            w.policy("to-a", ingress("a", "b", 80, PUBLIC_ONLY)),
        )
        pcap = tmp_path / "underlay.pcap"
        with _tcpdump(cluster.state.bridge, pcap):
            _l7_pair(w, "a", "b", n2)
            _l7_pair(w, "b", "a", n1)
        assert not w.probe("x1", "b") and not w.probe("x2", "a"), "x is not allowed at all"
        # The proxy answers for the destination pod: its replies carry the pod's identity.
        frames = _vxlan_frames(pcap.read_bytes())
        for src, dst in (("a", "b"), ("b", "a")):
            s, d = w.info(src), w.info(dst)
            assert {(f[3], f[4]) for f in frames if f[4:] == (s.ip, d.ip)} == {(s.identity, s.ip)}
            assert {(f[3], f[4]) for f in frames if f[4:] == (d.ip, s.ip)} == {(d.identity, d.ip)}


def test_l7_egress_rules_apply_on_the_sources_node_both_ways(
    cluster: ClusterHandle, tmp_path: Path
) -> None:
    with workload(cluster, "l7eg") as w:
        n1, n2 = _four_pods(
            w,
            w.policy("from-a", egress("a", "b", 80, PUBLIC_ONLY)),
            w.policy("from-b", egress("b", "a", 80, PUBLIC_ONLY)),
        )
        pcap = tmp_path / "underlay.pcap"
        with _tcpdump(cluster.state.bridge, pcap):
            _l7_pair(w, "a", "b", n1)
            _l7_pair(w, "b", "a", n2)
        assert not w.probe("a", "x2"), "a may reach b only"
        # The proxy's upstream carries the source pod's identity, and the answers the
        # destination pod's.
        frames = _vxlan_frames(pcap.read_bytes())
        for src, dst in (("a", "b"), ("b", "a")):
            s, d = w.info(src), w.info(dst)
            assert {f[3] for f in frames if f[5] == d.ip} == {s.identity}, frames
            assert {f[3] for f in frames if f[4] == d.ip} == {d.identity}, frames


def _entities(*entities: str) -> Doc:
    return {
        "endpointSelector": {
            "matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]
        },
        "ingress": [{"fromEntities": list(entities)}],
    }


def test_another_nodes_processes_are_cluster_never_host(cluster: ClusterHandle) -> None:
    n1, n2, n3 = cluster.nodes
    with workload(cluster, "ent") as w:
        w.apply(
            w.namespace_doc(),
            w.pod("a", n1, {"app": "a"}, ports=(80,)),
            w.pod("b", n2, {"app": "b"}, ports=(80,)),
            w.policy("entities", _entities("host")),
        )
        a, b = w.info("a"), w.info("b")
        assert reaches(node_netns(cluster, n1), a.ip), "a pod's own node is its host"
        assert reaches(node_netns(cluster, n2), b.ip), "a pod's own node is its host"
        pod_range = IPv4Network(cluster.client(n1).get("/status")["pod-cidr"])
        router = str(pod_range[-2])  # node1's own address towards pods

        def syns(mon: Monitor) -> list[dict[str, Any]]:
            return [e for e in mon.of("drop") if e.get("tcp-flags") == "SYN"]

        with Monitor(cluster, n2, "drop") as mon:
            with own_drops(cluster, {n2: mon}, {router}) as moved:
                assert not reaches(node_netns(cluster, n1), b.ip), "another node is not host"
            mon.settle(lambda m: bool(syns(m)))
        assert moved[n2] == {(DROP_POLICY, "ingress")}
        seen = {(e["src-ip"], e["dst-ip"], e["src-identity"]) for e in syns(mon)}
        assert seen == {(router, b.ip, CLUSTER)}, f"node1's processes are cluster on node2: {seen}"
        assert not reaches(node_netns(cluster, n2), a.ip)
        assert not reaches(node_netns(cluster, n3), a.ip)

        w.apply(w.policy("entities", _entities("cluster")))
        assert reaches(node_netns(cluster, n1), b.ip)
        assert reaches(node_netns(cluster, n3), b.ip)
        assert reaches(node_netns(cluster, n2), a.ip)


@contextmanager
def _tcpdump(device: str, into: Path) -> Iterator[None]:
    """tcpdump of VXLAN on a host device into a pcap file, stopped by pid at the end."""
    proc = subprocess.Popen(
        [
            "tcpdump",
            "-i",
            device,
            "-nn",
            "--immediate-mode",
            "-U",
            "-w",
            str(into),
            "udp",
            "port",
            str(VXLAN_PORT),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "listening on" in line, line
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _vxlan_frames(pcap: bytes) -> set[tuple[str, str, int, int, str, str]]:
    """(outer source, outer destination, UDP port, VNI, inner source, inner destination)
    of each IPv4- or IPv6-in-VXLAN frame (IPv4 outside) of an Ethernet pcap file."""
    magic, _, _, _, _, _, link = struct.unpack("<IHHiIII", pcap[:24])
    assert magic in (0xA1B2C3D4, 0xA1B23C4D) and link == 1, "little-endian Ethernet pcap"
    out, at = set(), 24
    while at + 16 <= len(pcap):
        length = struct.unpack("<IIII", pcap[at : at + 16])[2]
        f, at = pcap[at + 16 : at + 16 + length], at + 16 + length
        if f[12:14] != b"\x08\x00" or f[23] != socket.IPPROTO_UDP:
            continue
        udp = 14 + (f[14] & 0xF) * 4
        inner = udp + 8 + 8 + 14
        kind = f[inner - 2 : inner]
        if kind == b"\x08\x00":
            addrs = (
                socket.inet_ntoa(f[inner + 12 : inner + 16]),
                socket.inet_ntoa(f[inner + 16 : inner + 20]),
            )
        elif kind == b"\x86\xdd":
            v6 = socket.AF_INET6
            addrs = (
                socket.inet_ntop(v6, f[inner + 8 : inner + 24]),
                socket.inet_ntop(v6, f[inner + 24 : inner + 40]),
            )
        else:
            continue
        out.add(
            (
                socket.inet_ntoa(f[26:30]),
                socket.inet_ntoa(f[30:34]),
                int.from_bytes(f[udp + 2 : udp + 4], "big"),
                int.from_bytes(f[udp + 12 : udp + 15], "big"),
                *addrs,
            )
        )
    return out


def test_underlay_carries_the_source_identity_as_vni(
    cluster: ClusterHandle, tmp_path: Path
) -> None:
    n1, n2 = cluster.nodes[:2]
    with workload(cluster, "vni") as w:
        w.apply(
            w.namespace_doc(),
            w.pod("a", n1, {"app": "a"}, ports=(80,)),
            w.pod("b", n2, {"app": "b"}, ports=(80,)),
        )
        a, b = w.info("a"), w.info("b")
        assert a.identity != b.identity
        pcap = tmp_path / "underlay.pcap"
        with _tcpdump(cluster.state.bridge, pcap):
            assert w.probe("a", "b") and w.probe("b", "a")
        frames = _vxlan_frames(pcap.read_bytes())
        u1, u2 = cluster.node(n1).underlay_ip, cluster.node(n2).underlay_ip
        # The session cluster is dual stack: IPv6 crosses inside the same IPv4 underlay.
        assert a.ipv6 and b.ipv6, "pods of the session cluster have IPv6 addresses"
        for source, (origin, dest), identity in (
            (a.ip, (u1, u2), a.identity),
            (b.ip, (u2, u1), b.identity),
            (a.ipv6, (u1, u2), a.identity),
            (b.ipv6, (u2, u1), b.identity),
        ):
            tunnelled = {(o, d, p, v) for o, d, p, v, s, _ in frames if s == source}
            assert tunnelled == {(origin, dest, VXLAN_PORT, identity)}, (source, frames)


def _ip(netns: str, *args: str) -> str:
    res = subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, check=True)
    return res.stdout


def _ping(netns_path: str, ip: str, size: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net={netns_path}", "ping", "-M", "do", "-s", str(size), "-c1", "-W2", ip],
        capture_output=True,
        text=True,
    )


def test_pods_receive_full_size_packets_and_send_what_fits_the_tunnel(
    cluster: ClusterHandle,
) -> None:
    n1, n2 = cluster.nodes[:2]
    with workload(cluster, "mtu") as w:
        w.apply(
            w.namespace_doc(),
            w.pod("a", n1, {"app": "a"}, ports=(80,)),
            w.pod("b", n2, {"app": "b"}, ports=(80,)),
        )
        b = w.info("b")
        b_ns, a_ns = w.netns("b"), w.netns("a")
        assert re.search(r"\bmtu 1500\b", _ip(Path(b_ns).name, "link", "show", "eth0"))
        routes = _ip(Path(b_ns).name, "-4", "route").splitlines()
        assert any(r.startswith("default via 169.254.1.1 ") and "mtu 1450" in r for r in routes)
        assert any(r.startswith("169.254.1.1 ") and "mtu 1450" in r for r in routes), routes

        reassembled = snmp(b_ns)["Ip.ReasmReqds"]
        full = _ping(node_netns(cluster, n2), b.ip, 1472)  # 1500 bytes, DF, from its node
        assert full.returncode == 0, full.stdout + full.stderr
        assert snmp(b_ns)["Ip.ReasmReqds"] == reassembled, "it came in one piece"
        too_big = _ping(a_ns, b.ip, 1472)
        assert too_big.returncode != 0 and "mtu=1450" in too_big.stdout + too_big.stderr
        fits = _ping(a_ns, b.ip, 1422)  # 1450 bytes: the tunnel's inner MTU
        assert fits.returncode == 0, fits.stdout + fits.stderr


def test_large_cross_node_tcp_transfer_has_no_fragments_or_drops(
    cluster: ClusterHandle,
) -> None:
    n1, n2 = cluster.nodes[:2]
    with workload(cluster, "bulk") as w:
        w.apply(
            w.namespace_doc(),
            w.pod("a", n1, {"app": "a"}, ports=(80,)),
            w.pod("b", n2, {"app": "b"}, ports=(80,)),
            w.policy("to-b", ingress("b", "a", 80)),
        )
        where = [w.netns("a"), w.netns("b"), node_netns(cluster, n1), node_netns(cluster, n2)]
        overlay = {
            n: (node_netns(cluster, n), cluster.node(n).config.overlay_device) for n in (n1, n2)
        }

        def device_stats(node: str) -> dict[str, int]:
            path, device = overlay[node]
            with setns(path):
                return link_stats(device)

        frags = [{k: snmp(p)[k] for k in FRAG_COUNTERS} for p in where]
        links = {n: device_stats(n) for n in overlay}
        conn = PodConnection(w.netns("a"), w.info("b").ip, timeout=20.0)
        with ExitStack() as stack:
            monitors = {n: stack.enter_context(Monitor(cluster, n, "drop")) for n in overlay}
            moved = stack.enter_context(
                own_drops(cluster, monitors, {w.info("a").ip, w.info("b").ip})
            )
            try:
                conn.connect()
                assert conn.sock is not None
                conn.sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
                mss = conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
                assert conn.fetch("POST", "/upload", body=b"\0" * (32 << 20)) == 200
            finally:
                conn.close()
        assert moved == {n1: set(), n2: set()}, "no drop"
        assert mss <= 1450 - 40, "the pod's route MTU sets its MSS"
        assert [{k: snmp(p)[k] for k in FRAG_COUNTERS} for p in where] == frags
        for node, old in links.items():
            new = device_stats(node)
            assert {k: new[k] - old[k] for k in new if "err" in k or "drop" in k} == dict.fromkeys(
                ("rx_errors", "tx_errors", "rx_dropped", "tx_dropped"), 0
            ), node
            packets = new["rx_packets"] + new["tx_packets"] - old["rx_packets"] - old["tx_packets"]
            assert packets > 50, f"the transfer went through {node}'s VXLAN device (GRO packets)"


def test_tunnel_map_and_ipcache_show_remote_entries(cluster: ClusterHandle) -> None:
    with workload(cluster, "tun") as w:
        names = {f"p{i}": n for i, n in enumerate(cluster.nodes, 1)}
        w.apply(
            w.namespace_doc(), *(w.pod(p, n, {"app": p}, ports=(80,)) for p, n in names.items())
        )
        nodes = {n["name"]: n for n in cluster.get_nodes(None)}
        for node in cluster.nodes:
            tunnels = cluster.run(node, "bpf", "tunnel", "list", "-o", "json")
            assert tunnels.code == 0, tunnels.stderr
            assert all(n["ipv6-cidr"] for n in nodes.values()), "the cluster is dual stack"
            assert tunnels.json() == sorted(
                (
                    {"prefix": prefix, "node-ip": n["underlay-ip"]}
                    for name, n in nodes.items()
                    if name != node
                    for prefix in (n["pod-cidr"], n["ipv6-cidr"])
                ),
                key=lambda t: t["prefix"],
            ), node
            listed = cluster.run(node, "bpf", "ipcache", "list", "-o", "json")
            assert listed.code == 0, listed.stderr
            entries = {e["prefix"]: e for e in listed.json()}
            table = cluster.run(node, "bpf", "ipcache", "list").stdout
            for pod, owner in names.items():
                info = w.info(pod)
                endpoint = "" if owner == node else cluster.node(owner).underlay_ip
                entry = entries[f"{info.ip}/32"]
                assert (entry["identity"], entry["tunnel-endpoint"]) == (info.identity, endpoint)
                shown = endpoint or "-"
                assert re.search(
                    rf"^{re.escape(info.ip)}/32\s+{info.identity}\s+{shown}$", table, re.M
                )
