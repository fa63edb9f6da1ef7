"""Faults of a cluster, on a 2-node cluster of this module's own (they break it):
a node killed for good and back, agents killed under cross-node flows, a 30 s etcd
outage, a watch that lost its history, and two conflicting applies at once.

Every test leaves the cluster healthy (checked after each), and its pods and policies
deleted (`tests/cluster/workload.py`).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import etcd3gw
import httpx
import pytest

from cilia.cluster.etcd import EtcdServer
from cilia.cluster.lifecycle import etcd_server
from tests.cluster.harness import ClusterHandle, running_cluster
from tests.cluster.test_cluster_datapath import IDENTITIES, ingress
from tests.cluster.workload import (
    Doc,
    Flow,
    Workload,
    counters,
    eventually,
    grew,
    metric,
    reaches,
    workload,
)

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]

LEASE_TTL = 5
"""Short, so a dead node goes quickly; above an agent's restart time, so a restarted
agent takes its keys over before they expire."""
OUTAGE = 30.0
DROP_NO_TUNNEL = 160
CONFLICT = "was changed by someone else; re-apply"
OPERATIONS = "cilia_kvstore_operations_total"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHandle]:
    base = tmp_path_factory.mktemp("faults")
    with running_cluster(
        base / "c",
        "--nodes=2",
        f"--lease-ttl={LEASE_TTL}",
        "--lease-keepalive=1",
        logs=base / "logs",
    ) as handle:
        yield handle


@pytest.fixture(autouse=True)
def healthy_after(small: ClusterHandle) -> Iterator[None]:
    """Each test hands the cluster on whole: etcd and every agent up, every node's
    kvstore healthy and every node known to every node."""
    yield

    def whole() -> bool:
        if small.cluster("status").code != 0:
            return False
        for node in small.nodes:
            status = small.client(node).get("/status")["kvstore"]
            if not status["healthy"] or status["nodes"] != len(small.nodes):
                return False
        return True

    eventually(whole, "the cluster is whole again")


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP a process for the block (SIGCONT at the end, whatever happens)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def agent_pid(cluster: ClusterHandle, node: str) -> int:
    pid = cluster.node(node).agent_pid
    assert pid is not None
    return pid


@contextmanager
def etcd_stopped(cluster: ClusterHandle) -> Iterator[EtcdServer]:
    """etcd killed (-9) for the block, then started again on the same data."""
    server = etcd_server(cluster.state)
    assert server.stop(graceful=False), "etcd was running"
    try:
        yield server
    finally:
        server.start()
        assert cluster.state.etcd is not None
        cluster.state.etcd.pid = server.pid()
        cluster.state.save()


def _pairs(w: Workload, *policies: Doc) -> tuple[str, str]:
    """a and x1 on the first node, b and x2 on the second."""
    n1, n2 = w.cluster.nodes
    w.apply(
        w.namespace_doc(),
        w.pod("a", n1, {"app": "a"}),
        w.pod("x1", n1, {"app": "x"}),
        w.pod("b", n2, {"app": "b"}),
        w.pod("x2", n2, {"app": "x"}),
        *policies,
    )
    return n1, n2


def _both_ways(w: Workload) -> list[Doc]:
    """b accepts a, a accepts b, on port 80: x pods and port 81 are denied."""
    return [w.policy("to-b", ingress("b", "a", 80)), w.policy("to-a", ingress("a", "b", 80))]


def _enforced(w: Workload) -> None:
    """The verdicts of `_both_ways`, from both nodes."""
    assert w.probe("a", "b") and w.probe("b", "a")
    assert not w.probe("x1", "b") and not w.probe("x2", "a")
    assert not w.probe("a", "b", 81)


def _store(cluster: ClusterHandle, prefix: str) -> dict[str, str]:
    res = cluster.run(None, "kvstore", "get", "--recursive", prefix, "-o", "json")
    assert res.code == 0, res.stderr
    return {kv["key"]: kv["value"] for kv in res.json()}


def _tunnel_routes(cluster: ClusterHandle, node: str) -> list[str]:
    """`<range> mtu <mtu>` of the routes through a node's VXLAN device (its own traffic
    to other nodes' pods)."""
    state = cluster.node(node)
    res = subprocess.run(
        ["ip", "-n", state.netns, "-4", "route", "show", "dev", state.config.overlay_device],
        capture_output=True,
        text=True,
        check=True,
    )
    routes = [line.split() for line in res.stdout.splitlines()]
    return [f"{r[0]} mtu {r[r.index('mtu') + 1]}" for r in routes if "mtu" in r]


def test_node_killed_for_good_is_cleaned_out_then_joins_again(small: ClusterHandle) -> None:
    with workload(small, "leave") as w:
        n1, n2 = _pairs(w)
        a, b = w.info("a"), w.info("b")
        nodes = {n["name"]: n for n in small.get_nodes(n1)}
        assert [k for k in _store(small, IDENTITIES) if k.endswith(f"/{n2}")], "references"
        pod_netns = Path(w.netns("b"))

        small.kill_agent(n2)
        killed = time.monotonic()
        try:

            def cleaned_out() -> bool:
                listed = small.get_nodes(n1)
                tunnels = small.run(n1, "bpf", "tunnel", "list", "-o", "json").json()
                entries = small.run(n1, "bpf", "ipcache", "list", "-o", "json").json()
                return (
                    [n["name"] for n in listed] == [n1]
                    and tunnels == []
                    and f"{b.ip}/32" not in {e["prefix"] for e in entries}
                )

            eventually(cleaned_out, "node1 forgets node2", timeout=LEASE_TTL + 10)
            assert time.monotonic() - killed > LEASE_TTL - 1.5, "only once its lease expired"
            assert _tunnel_routes(small, n1) == [], "node1's own route to node2's pods went too"
            store = _store(small, "cilia/state/")
            assert not [k for k in store if k.endswith(f"/{n2}")], "node key and references"
            assert f"cilia/state/ip/v1/default/{b.ip}" not in store, "its pods' ipcache keys"
            before = counters(small, n1)
            assert not reaches(w.netns("a"), b.ip), "no tunnel to node2 any more"
            assert grew(before, counters(small, n1)) == {(DROP_NO_TUNNEL, "egress")}
            assert pod_netns.exists(), "node2's pod keeps running without its agent"
        finally:
            small.restart_agent(n2)

        def joined() -> bool:
            listed = {n["name"]: n for n in small.get_nodes(n1)}
            return n2 in listed and listed[n2]["pod-cidr"] == nodes[n2]["pod-cidr"]

        eventually(joined, "node2 joins again with its pod range")
        w.wait_applied(list(w.applied.values()))  # node1 maps b through node2 again
        assert _tunnel_routes(small, n1) == [f"{nodes[n2]['pod-cidr']} mtu 1450"]
        assert w.info("b") == b and w.info("a") == a
        assert w.probe("a", "b") and w.probe("b", "a")


def _identities(cluster: ClusterHandle) -> dict[str, object]:
    """Each node's identity list, and the store's id keys."""
    out: dict[str, object] = {
        node: cluster.run(node, "identity", "list", "-o", "json").json() for node in cluster.nodes
    }
    out["store"] = {k: v for k, v in _store(cluster, IDENTITIES).items() if "/id/" in k}
    return out


def _endpoints(cluster: ClusterHandle, node: str) -> list[tuple[object, ...]]:
    rows = cluster.run(node, "endpoint", "list", "-o", "json").json()
    keys = ("id", "pod", "identity", "ipv4", "interface", "ifindex", "state")
    return sorted(tuple(r[k] for k in keys) for r in rows)


def _same_endpoints(cluster: ClusterHandle, node: str, before: list[tuple[object, ...]]) -> bool:
    return _endpoints(cluster, node) == before


def test_agents_killed_and_restarted_under_cross_node_flows(small: ClusterHandle) -> None:
    with workload(small, "restart") as w:
        n1, n2 = _pairs(w, *_both_ways(w))
        a, b = w.info("a"), w.info("b")
        identities = _identities(small)
        endpoints = {n: _endpoints(small, n) for n in small.nodes}
        with Flow(w.netns("a"), b.ip) as forth, Flow(w.netns("b"), a.ip) as back:
            for node in (n2, n1):
                small.kill_agent(node)
                time.sleep(0.5)  # no agent: the pinned programs keep both flows
                small.restart_agent(node)
                time.sleep(0.5)
        forth.check(least=100)
        back.check(least=100)
        assert _identities(small) == identities, "no identity re-allocated or renumbered"
        for node in small.nodes:
            eventually(partial(_same_endpoints, small, node, endpoints[node]), f"{node} endpoints")
        _enforced(w)


def _kvstore_down(cluster: ClusterHandle, node: str) -> bool:
    res = cluster.run(node, "status", "-o", "json")
    return res.code == 0 and res.json()["kvstore"]["healthy"] is False


def _kvstore_up(cluster: ClusterHandle, node: str) -> bool:
    return bool(cluster.client(node).get("/status")["kvstore"]["healthy"])


def _pod_state(cluster: ClusterHandle, node: str, w: Workload, name: str) -> str:
    res = cluster.run(node, "get", "pod", name, "-n", w.namespace, "-o", "json")
    return str(res.json()["status"]["cilia"]["state"]) if res.code == 0 else ""


def test_etcd_outage_keeps_flows_and_policy_and_converges_after(small: ClusterHandle) -> None:
    with workload(small, "outage") as w:
        n1, n2 = _pairs(w, *_both_ways(w))
        a, b = w.info("a"), w.info("b")
        pids = {n: agent_pid(small, n) for n in small.nodes}
        failed = {n: metric(small, n, OPERATIONS, outcome="unavailable") for n in small.nodes}
        late = w.stamped(w.pod("late", n2, {"app": "late"}, ports=(80,)))
        with Flow(w.netns("a"), b.ip) as forth, Flow(w.netns("b"), a.ip) as back:
            with ExitStack() as outage:
                # node2 receives the new pod in its watch while etcd goes away: it
                # cannot allocate the pod's identity.
                with stopped(pids[n2]):
                    assert w.try_apply(late, node=n1).code == 0
                    outage.enter_context(etcd_stopped(small))
                began = time.monotonic()
                for node in small.nodes:
                    eventually(partial(_kvstore_down, small, node), f"{node} sees etcd down")
                eventually(
                    lambda: _pod_state(small, n2, w, "late") == "waiting-for-identity",
                    "the new pod waits for its identity",
                )
                _enforced(w)
                refused = w.try_apply([w.policy("during", ingress("b", "x", 80))], node=n2)
                assert refused.code == 1
                assert "kvstore unreachable, nothing applied" in refused.stderr, refused.stderr
                status = small.run(n1, "status")
                assert re.search(r"^KVStore:\s+Unreachable", status.stdout, re.M), status.stdout
                for node in small.nodes:
                    now = metric(small, node, OPERATIONS, outcome="unavailable")
                    assert now > failed[node], f"{node} counts the failed operations"
                time.sleep(max(0.0, OUTAGE - 5 - (time.monotonic() - began)))
                _enforced(w)
                assert _pod_state(small, n2, w, "late") == "waiting-for-identity"
                time.sleep(max(0.0, OUTAGE - (time.monotonic() - began)))
            for node in small.nodes:
                eventually(partial(_kvstore_up, small, node), f"{node} sees etcd back")
            w.wait_applied(late)
            time.sleep(0.5)
        forth.check(least=500)
        back.check(least=500)

        assert {n: agent_pid(small, n) for n in small.nodes} == pids, "no agent restarted"
        w.apply(
            w.pod("z", n1, {"app": "z"}, ports=(80,)),
            w.policy("to-b", ingress("b", "z", 80)),
            w.policy("to-a", ingress("a", "late", 80)),
        )
        assert w.probe("z", "b") and not w.probe("a", "b"), "node2 enforces the new rule"
        assert w.probe("late", "a") and not w.probe("b", "a"), "node1 enforces the new rule"


def _etcd_client(cluster: ClusterHandle) -> etcd3gw.Etcd3Client:
    parts = urlsplit(cluster.etcd_url)
    return etcd3gw.client(host=parts.hostname or "", port=parts.port or 2379, timeout=10)


def _kill_etcd_connections(cluster: ClusterHandle, node: str) -> None:
    """Abort (ss -K) every TCP connection of a node's namespace to etcd."""
    parts = urlsplit(cluster.etcd_node_url)
    netns = f"--net=/run/netns/{cluster.node(node).netns}"
    subprocess.run(
        ["nsenter", netns, "ss", "-K", "dst", parts.hostname or "", "dport", "=", f":{parts.port}"],
        capture_output=True,
        check=True,
    )


def test_watch_that_lost_its_history_resyncs(small: ClusterHandle) -> None:
    with workload(small, "compact") as w:
        old = w.policy("old", ingress("b", "x", 80))
        n1, n2 = _pairs(w, old)
        assert w.probe("x1", "b") and not w.probe("a", "b")
        log = Path(small.node(n2).config.run_dir) / "cilia.log"
        seen = log.stat().st_size
        new = w.stamped(w.policy("new", ingress("b", "a", 80)))
        filler = f"test/compact-{secrets.token_hex(3)}/"
        etcd = _etcd_client(small)
        try:
            with stopped(agent_pid(small, n2)):
                _kill_etcd_connections(small, n2)  # its watches are gone
                assert w.try_apply(new, node=n1).code == 0
                assert w.try_delete([old], node=n1).code == 0
                for i in range(300):
                    etcd.put(f"{filler}{i}", f"value {i}")
                revision = int(etcd.status()["header"]["revision"])
                compacted = httpx.post(
                    f"{small.etcd_url}/v3/kv/compaction",
                    json={"revision": revision, "physical": True},
                    timeout=10,
                )
                assert compacted.status_code == 200, compacted.text
                old_read = httpx.post(
                    f"{small.etcd_url}/v3/kv/range",
                    json={"key": "Y2lsaWE=", "revision": revision - 10},
                    timeout=10,
                )
                assert "compacted" in old_read.text, "history before the compaction is gone"
            w.wait_applied(new)
            w.wait_deleted([old])
            assert w.probe("a", "b") and not w.probe("x1", "b"), "node2 enforces what it missed"
        finally:
            etcd.delete_prefix(filler)
        resynced = log.read_bytes()[seen:].decode(errors="replace")
        assert re.search(r"cilia/objects/v1/: watch stream failed: .*resyncing", resynced)


def _waiting_on_agent(pid: int) -> bool:
    """Is a `cilia` command blocked in poll(), waiting for its agent's answer?"""
    try:
        return Path(f"/proc/{pid}/syscall").read_text().split()[0] == "7"
    except (OSError, IndexError):
        return False


def test_conflicting_applies_on_two_nodes_at_once(small: ClusterHandle, tmp_path: Path) -> None:
    with workload(small, "conflict") as w:
        n1, n2 = small.nodes
        w.apply(w.namespace_doc(), w.policy("p", ingress("b", "a", 80)))
        # One version per node of policy p, each with an object of its own.
        batches = {
            node: w.stamped(
                w.policy("p", ingress("b", "a", port)),
                w.policy(f"q-{node}", ingress("b", "x", port)),
            )
            for node, port in zip(small.nodes, (8001, 8002), strict=True)
        }
        for docs in batches.values():
            for doc in docs:
                w.applied[("CiliumNetworkPolicy", w.namespace, doc["metadata"]["name"])] = doc
        etcd_pid = etcd_server(small.state).pid()
        assert etcd_pid is not None
        procs: dict[str, subprocess.Popen[str]] = {}
        # etcd holds both reads until both applies wait for it: each reads the same
        # version of p, and only one transaction can commit on it.
        with stopped(etcd_pid):
            for node, docs in batches.items():
                manifest = tmp_path / f"{node}.yaml"
                manifest.write_text(w.text(docs))
                procs[node] = subprocess.Popen(
                    [sys.executable, "-m", "cilia.cli.main", "apply", "-f", str(manifest)],
                    env=small.env(node),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            eventually(
                lambda: all(_waiting_on_agent(p.pid) for p in procs.values()),
                "both applies wait for their agent",
            )
            time.sleep(1.0)  # the agents' reads reach etcd
        results = {node: (*p.communicate(timeout=60), p.returncode) for node, p in procs.items()}
        winners = [node for node, (_, _, code) in results.items() if code == 0]
        assert len(winners) == 1, results
        winner = winners[0]
        loser = n2 if winner == n1 else n1
        _, stderr, code = results[loser]
        assert code == 1 and f"ciliumnetworkpolicy/{w.namespace}/p {CONFLICT}" in stderr, results
        w.wait_applied(batches[winner])
        w.wait_deleted([batches[loser][1]])
        stored = _store(small, f"cilia/objects/v1/CiliumNetworkPolicy/{w.namespace}/")
        assert sorted(k.rsplit("/", 1)[1] for k in stored) == ["p", f"q-{winner}"]
        port = batches[winner][0]["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"]
        assert f'"port":"{port}"' in stored[f"cilia/objects/v1/CiliumNetworkPolicy/{w.namespace}/p"]
