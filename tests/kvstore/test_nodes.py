"""Node registry and pod-range claims in a real etcd: join, leave, restart, races."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterator

import pytest

from cilia.cluster.etcd import EtcdServer
from cilia.kvstore.client import Etcd
from cilia.kvstore.ipcache import IpcachePublisher, IpcacheWatcher, RemoteIp, ip_key
from cilia.kvstore.nodes import (
    NodeInfo,
    NodeRegistry,
    PodCidrError,
    claim_pod_cidr,
    node_key,
    pod_cidr_key,
)
from cilia.kvstore.session import NodeSession
from tests.kvstore.conftest import wait_until

pytestmark = [pytest.mark.integration]

CLUSTER = "10.208.0.0/16"


class Node:
    """One node's client, session and registry, stopped at the end of the test."""

    def __init__(
        self, url: str, root: str, name: str, underlay: str, ttl: int, keepalive: float
    ) -> None:
        self.etcd = Etcd([url])
        self.session = NodeSession(self.etcd, ttl, keepalive)
        self.session.start()
        self.root = root
        self.name = name
        self.underlay = underlay
        self.seen: list[dict[str, NodeInfo]] = []
        self.registry: NodeRegistry | None = None

    def claim(
        self, preferred: str | None = None, cluster: str = CLUSTER, prefix_len: int = 24
    ) -> str:
        return claim_pod_cidr(
            self.etcd, self.session, self.name, cluster, prefix_len, preferred, root=self.root
        )

    def join(self, heartbeat: float = 0.5) -> NodeRegistry:
        local = NodeInfo(name=self.name, underlay_ip=self.underlay, pod_cidr=self.claim())
        self.registry = NodeRegistry(
            self.etcd, self.session, local, heartbeat, self.seen.append, root=self.root
        )
        self.registry.start()
        return self.registry

    def close(self) -> None:
        if self.registry is not None:
            self.registry.stop()
        self.session.stop(revoke=True)
        self.etcd.close()


@pytest.fixture
def make_node(etcd_server: EtcdServer, prefix: str) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(
        name: str, underlay: str = "198.18.0.1", ttl: int = 30, keepalive: float = 1.0
    ) -> Node:
        node = Node(etcd_server.url, prefix, name, underlay, ttl, keepalive)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close()


def test_two_nodes_register_and_see_each_other(make_node: Callable[..., Node]) -> None:
    a, b = make_node("n1", "198.18.0.1"), make_node("n2", "198.18.0.2")
    ra, rb = a.join(), b.join()
    both = {"n1", "n2"}
    assert wait_until(lambda: set(ra.nodes()) == set(rb.nodes()) == both, 15.0)
    assert wait_until(
        lambda: bool(a.seen and b.seen) and set(a.seen[-1]) == set(b.seen[-1]) == both, 15.0
    )
    n2 = ra.nodes()["n2"]
    assert n2.underlay_ip == "198.18.0.2"
    assert n2.pod_cidr == rb.local.pod_cidr != ra.local.pod_cidr
    assert n2.health() == "ok"
    # heartbeats move forward without reporting a change
    calls, beat = len(a.seen), n2.heartbeat
    assert wait_until(lambda: ra.nodes()["n2"].heartbeat > beat, 15.0)
    assert len(a.seen) == calls


def test_five_nodes_claiming_at_once_never_overlap(make_node: Callable[..., Node]) -> None:
    nodes = [make_node(f"n{i}") for i in range(5)]
    barrier = threading.Barrier(len(nodes))
    claimed: dict[str, str] = {}

    def claim(node: Node) -> None:
        barrier.wait()
        claimed[node.name] = node.claim()

    threads = [threading.Thread(target=claim, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    nets = [ipaddress.IPv4Network(c) for c in claimed.values()]
    assert len(nets) == 5
    for i, x in enumerate(nets):
        assert x.subnet_of(ipaddress.IPv4Network(CLUSTER)) and x.prefixlen == 24
        assert not any(x.overlaps(y) for y in nets[i + 1 :])
    for name, cidr in claimed.items():
        kv = nodes[0].etcd.get(pod_cidr_key(cidr, nodes[0].root))
        assert kv is not None and kv.value == name.encode()
    assert sorted(claimed.values()) == [f"10.208.{i}.0/24" for i in range(5)]


def test_a_restarted_node_gets_its_range_back(make_node: Callable[..., Node]) -> None:
    first = make_node("n1")
    assert first.claim() == first.claim() == "10.208.0.0/24"  # claiming again keeps it
    make_node("n2").claim()
    mine = first.claim(preferred="10.208.7.0/24")
    assert mine == "10.208.7.0/24"
    # the earlier claim was released: one range per node
    assert first.etcd.get(pod_cidr_key("10.208.0.0/24", first.root)) is None

    # kill -9: the old lease still holds the key; the new agent re-attaches it
    first.session.stop(revoke=False)
    again = make_node("n1")
    assert again.claim(preferred=mine) == mine
    kv = again.etcd.get(pod_cidr_key(mine, again.root))
    assert kv is not None and kv.lease == again.session.lease

    # after the lease is gone the range is free, and still preferred
    again.session.stop(revoke=True)
    third = make_node("n1")
    assert third.claim(preferred=mine) == mine

    # a range another node owns is never taken; the node gets a free one
    other = make_node("n3")
    assert other.claim(preferred=mine) not in (mine, "10.208.1.0/24")


def test_an_exhausted_cluster_range_is_a_clear_error(make_node: Callable[..., Node]) -> None:
    small = "10.209.0.0/28"
    got = {make_node(f"n{i}").claim(cluster=small, prefix_len=30) for i in range(4)}
    assert len(got) == 4
    with pytest.raises(PodCidrError, match=r"10.209.0.0/28 has no free /30 left for node 'n9'"):
        make_node("n9").claim(cluster=small, prefix_len=30)


def test_lease_expiry_removes_node_range_and_ipcache_keys_everywhere(
    make_node: Callable[..., Node],
) -> None:
    survivor, doomed = (
        make_node("n1", "198.18.0.1"),
        make_node("n2", "198.18.0.2", ttl=3, keepalive=0.5),
    )
    watched: list[dict[str, RemoteIp]] = []
    ips = IpcacheWatcher(survivor.etcd, "n1", watched.append, root=survivor.root)
    ips.start()
    try:
        registry = survivor.join()
        doomed_registry = doomed.join(heartbeat=0.3)
        publisher = IpcachePublisher(
            doomed.etcd, doomed.session, "n2", "198.18.0.2", root=doomed.root
        )
        assert publisher.publish({"10.208.1.5": 300})
        assert wait_until(lambda: set(registry.nodes()) == {"n1", "n2"}, 15.0)
        assert wait_until(lambda: bool(watched) and "10.208.1.5" in watched[-1], 15.0)
        cidr = doomed_registry.local.pod_cidr

        # kill -9: the agent stops refreshing; nothing is deleted by it
        doomed_registry.stop()
        doomed.registry = None
        doomed.session.stop(revoke=False)
        assert wait_until(lambda: set(survivor.seen[-1]) == {"n1"}, 10.0)
        assert set(registry.nodes()) == {"n1"}
        assert wait_until(lambda: watched[-1] == {}, 15.0)
        etcd = survivor.etcd
        assert etcd.get(node_key("n2", survivor.root)) is None
        assert etcd.get(pod_cidr_key(cidr, survivor.root)) is None
        assert etcd.get(ip_key("10.208.1.5", survivor.root)) is None
    finally:
        ips.stop()


def test_a_new_lease_republishes_the_node_and_its_range(make_node: Callable[..., Node]) -> None:
    node = make_node("n1", keepalive=20.0)
    registry = node.join(heartbeat=20.0)
    old = node.session.lease
    node.etcd.revoke(old)  # as if etcd lost it: every key of the node vanishes
    node.session.lease_lost(old)
    assert wait_until(lambda: node.session.lease not in (0, old), 15.0)
    new = node.session.lease
    key, cidr_key = node_key("n1", node.root), pod_cidr_key(registry.local.pod_cidr, node.root)
    assert wait_until(lambda: (kv := node.etcd.get(key)) is not None and kv.lease == new, 15.0)
    kv = node.etcd.get(cidr_key)
    assert kv is not None and kv.lease == new and kv.value == b"n1"
    assert registry.error is None


def test_a_range_taken_while_the_lease_was_lost_is_reported(
    make_node: Callable[..., Node],
) -> None:
    node, thief = make_node("n1", keepalive=20.0), make_node("n2")
    registry = node.join(heartbeat=20.0)
    cidr = registry.local.pod_cidr
    old = node.session.lease
    node.etcd.revoke(old)
    assert thief.claim(preferred=cidr) == cidr
    node.session.lease_lost(old)
    assert wait_until(lambda: registry.error is not None, 15.0)
    assert registry.error is not None and cidr in registry.error
    kv = node.etcd.get(pod_cidr_key(cidr, node.root))
    assert kv is not None and kv.value == b"n2"
    # the node is still published (its pods keep working); the operator sees the error
    assert wait_until(lambda: node.etcd.get(node_key("n1", node.root)) is not None, 15.0)


def test_clean_leave_deletes_the_node_keys(make_node: Callable[..., Node]) -> None:
    watcher, leaving = make_node("n1"), make_node("n2")
    seen = watcher.join()
    registry = leaving.join()
    assert wait_until(lambda: set(seen.nodes()) == {"n1", "n2"}, 15.0)
    cidr = registry.local.pod_cidr
    registry.stop(leave=True)
    leaving.registry = None
    assert wait_until(lambda: set(seen.nodes()) == {"n1"}, 15.0)
    assert leaving.etcd.get(pod_cidr_key(cidr, leaving.root)) is None
    assert leaving.session.lease != 0  # the lease itself lives on until the session ends
