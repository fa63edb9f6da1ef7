"""Pod plumbing, pod processes and probes with real namespaces and packets."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from cilia.datapath.netns import delete_netns, netns_exists, netns_path
from cilia.datapath.pod_network import (
    PodNetwork,
    ensure_pod_network,
    interface_index,
    remove_pod_network,
)
from cilia.runtime.probe import probe
from cilia.runtime.processes import (
    ProcessRecord,
    process_alive,
    start_process,
    stop_process,
    wait_listening,
)

pytestmark = pytest.mark.integration


@dataclass
class Pods:
    """Creates test pods under the run prefix and removes all of them, pass or fail."""

    prefix: str
    tmp: Path
    subnet: str
    made: list[tuple[str, str, str]] = field(default_factory=list)
    procs: list[ProcessRecord] = field(default_factory=list)

    def names(self, n: int) -> tuple[str, str, str]:
        ns, dev, ip = f"cilia-test-{self.prefix}-{n}", f"{self.prefix}v{n}", f"{self.subnet}.{n}"
        self.made.append((ns, dev, ip))
        return ns, dev, ip

    def pod(self, n: int) -> PodNetwork:
        return ensure_pod_network(*self.names(n))

    def responder(self, pod: PodNetwork, tcp: int, udp: int) -> ProcessRecord:
        argv = [sys.executable, "-m", "cilia.runtime.responder", f"--pod=test/{pod.netns}"]
        argv += [f"--tcp={tcp}", f"--udp={udp}"]
        rec = start_process(netns_path(pod.netns), argv, str(self.tmp / f"{pod.netns}.log"))
        self.procs.append(rec)
        assert wait_listening(netns_path(pod.netns), [tcp], [udp], timeout=5.0)
        return rec

    def cleanup(self) -> None:
        for rec in self.procs:
            stop_process(rec)
        for ns, dev, ip in self.made:
            remove_pod_network(ns, dev, ip)
        with IPRoute() as ipr:  # sweep anything left under the prefix
            for link in ipr.link("dump"):
                if link.get("IFLA_IFNAME", "").startswith(self.prefix):
                    ipr.link("del", index=link["index"])
        for name in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
            if name.startswith(f"cilia-test-{self.prefix}"):
                delete_netns(name)


@pytest.fixture
def pods(run_prefix: str, tmp_path: Path) -> Iterator[Pods]:
    third = int(run_prefix[2:4], 16)
    p = Pods(run_prefix, tmp_path, f"10.253.{third}")
    try:
        yield p
    finally:
        p.cleanup()


def _route_dev(ip: str) -> int | None:
    with IPRoute() as ipr:
        for r in ipr.route("get", dst=ip, flags=0x2000):  # RTM_F_FIB_MATCH
            if r["dst_len"] == 32:
                return int(r.get("RTA_OIF"))
    return None


def test_tcp_and_udp_between_two_pods(pods: Pods) -> None:
    a, b = pods.pod(1), pods.pod(2)
    pods.responder(a, 8080, 5353)
    pods.responder(b, 8080, 5353)
    src_a, src_b = netns_path(a.netns), netns_path(b.netns)

    async def run() -> None:
        tcp = await probe(src_a, b.ipv4, 8080, "TCP", 2.0)
        assert (tcp.result, tcp.detail) == ("allowed", "HTTP/1.1 200 OK"), tcp
        udp = await probe(src_b, a.ipv4, 5353, "udp", 2.0)
        assert udp.result == "allowed", udp
        closed = await probe(src_a, b.ipv4, 8081, "TCP", 2.0)
        assert (closed.result, closed.detail) == ("denied", "refused"), closed
        closed_udp = await probe(src_a, b.ipv4, 5354, "UDP", 2.0)
        assert closed_udp.result == "denied", closed_udp
        ports = {"TCP": 8080, "UDP": 5353}
        many = await asyncio.gather(
            *(probe(src_a, b.ipv4, ports[p], p, 5.0) for p in ["TCP", "UDP"] * 100)
        )
        assert [r.result for r in many] == ["allowed"] * 200, [r for r in many if r.detail]

    asyncio.run(run())


def test_ensure_twice_reuses_everything(pods: Pods) -> None:
    first = pods.pod(1)
    again = ensure_pod_network(first.netns, first.host_ifname, first.ipv4)
    assert again == first
    assert PodNetwork.from_dict(first.to_dict()) == first
    assert interface_index(first.host_ifname) == first.host_ifindex
    assert _route_dev(first.ipv4) == first.host_ifindex


def test_failed_creation_leaves_nothing(pods: Pods) -> None:
    a = pods.pod(1)
    ns, dev, ip = pods.names(2)
    with pytest.raises(ValueError):
        ensure_pod_network(ns, dev, "10.253.0.300")
    with pytest.raises(FileExistsError):  # device name taken by pod 1
        ensure_pod_network(ns, a.host_ifname, ip)
    assert not netns_exists(ns)
    with pytest.raises(FileExistsError):  # address already routed to pod 1
        ensure_pod_network(ns, dev, a.ipv4)
    assert not netns_exists(ns)
    assert interface_index(dev) is None
    assert _route_dev(a.ipv4) == a.host_ifindex  # pod 1 untouched
    assert ensure_pod_network(a.netns, a.host_ifname, a.ipv4) == a


def test_teardown_leaves_nothing(pods: Pods) -> None:
    a = pods.pod(1)
    rec = pods.responder(a, 8080, 5353)
    assert process_alive(rec)
    assert ProcessRecord.from_dict(rec.to_dict()) == rec
    assert not process_alive(ProcessRecord(rec.pid, rec.start_time + 1, rec.argv))
    stop_process(rec)
    stop_process(rec)
    assert not process_alive(rec)
    remove_pod_network(a.netns, a.host_ifname, a.ipv4)
    remove_pod_network(a.netns, a.host_ifname, a.ipv4)
    assert not netns_exists(a.netns)
    assert interface_index(a.host_ifname) is None
    assert _route_dev(a.ipv4) is None
