"""Connection tracking with real flows: cut on deny, GC under a UDP flood, list and flush."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cilia.datapath.netns import socket_in_netns
from tests.integration.harness import Cilia, running_agent
from tests.integration.observe_helpers import (
    DS,
    PODS,
    RULE1,
    TF,
    XW,
    MonitorProc,
    http_get,
    pod_netns,
    send_udp,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]

CT_MAX = 4096


@pytest.fixture(scope="module")
def cilia(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cilia]:
    with running_agent(
        tmp_path_factory.mktemp("conntrack"),
        CILIA_CT_MAX_ENTRIES=str(CT_MAX),
        CILIA_CT_GC_INTERVAL="2",
        CILIA_CT_GC_NON_TCP_IDLE="1",
    ) as agent:
        agent.apply(PODS)
        yield agent


def ct(c: Cilia, target: str = "global") -> list[dict[str, Any]]:
    return list(c.run("bpf", "ct", "list", target, "-o", "json").json())


def ep(c: Cilia, pod: str) -> dict[str, Any]:
    return dict(c.client.get(f"/endpoint/{pod}"))


def collected(c: Cilia, since: float, what: str) -> dict[str, Any]:
    """Status of a GC run after `since` that left the table less than a quarter full.

    (Below a quarter, aggressive collection of idle non-TCP entries stops by design.)
    """

    def done() -> dict[str, Any] | None:
        s = dict(c.client.get("/status")["conntrack"])
        return s if (s["last-gc"] or 0) > since and s["entries"] < CT_MAX // 4 else None

    return dict(wait_until(done, what, timeout=60.0))


def test_established_flow_cut_by_policy_change(cilia: Cilia) -> None:
    c = cilia
    ds, xw = ep(c, DS), ep(c, XW)
    sock = socket_in_netns(pod_netns(c, XW), socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect((ds["ipv4"], 80))
        port = sock.getsockname()[1]
        assert http_get(sock, ds["ipv4"]).startswith(b"HTTP/1.1 200")

        def flow(target: str) -> list[dict[str, Any]]:
            return [r for r in ct(c, target) if r["source"] == f"{xw['ipv4']}:{port}"]

        entry = flow(DS)[0]
        assert entry["state"] == "established" and entry["direction"] == "ingress"
        assert entry["expires-in"] > 21000, "established TCP lives 21600 s"
        before = c.counters().get((133, "ingress"), 0)

        c.apply(RULE1)  # the alliance may no longer reach the deathstar
        sock.settimeout(1.5)
        with pytest.raises(TimeoutError):
            http_get(sock, ds["ipv4"])
        assert c.counters().get((133, "ingress"), 0) > before
        assert flow(DS) == [], "the denied flow's CT entry is removed"
        # Retransmissions keep being dropped: the flow does not come back as a reply.
        with pytest.raises(TimeoutError):
            sock.recv(100)
        assert flow(DS) == []
    finally:
        sock.close()
        c.delete(RULE1)


def test_udp_flood_does_not_exhaust_the_table(cilia: Cilia) -> None:
    c = cilia
    ds = ep(c, DS)
    drops_155 = c.counters().get((155, "egress"), 0) + c.counters().get((155, "ingress"), 0)
    # 4 waves of 1200 flows, each flow 2 entries (egress of the tiefighter, ingress of
    # the deathstar): 9600 entries in all, more than twice the table. A wave (2400)
    # on top of what a collection may leave (< 1024) still fits in the table.
    for wave in range(4):
        send_udp(c, TF, ds["ipv4"], 80, flows=1200)
        # Only a scan that started after the whole wave was sent counts: one that
        # started during a slow wave saw only part of it.
        status = collected(c, time.time(), f"GC to collect wave {wave}")
        assert status["max-entries"] == CT_MAX
    after = c.counters().get((155, "egress"), 0) + c.counters().get((155, "ingress"), 0)
    assert after == drops_155, "no flow was refused: GC kept up"
    gc = next(
        x
        for x in c.client.get("/status", all_controllers=True)["controller-list"]
        if x["name"] == "ct-gc"
    )
    assert gc["consecutive-failures"] == 0 and "idle non-TCP" in gc["last-result"]


def test_full_table_is_reported(cilia: Cilia) -> None:
    c = cilia
    ds = ep(c, DS)
    agent = MonitorProc(c, "-t", "agent", "-t", "drop")
    try:
        send_udp(c, TF, ds["ipv4"], 80, flows=3 * CT_MAX)
        sent = time.time()  # a scan started during the flood may be refilled after it
        drop = agent.wait_for(lambda e: e.get("reason") == 155, "a CT insertion drop")
        assert drop["reason-name"] == "CT: Map insertion failed"
        full = agent.wait_for(lambda e: e.get("subtype") == "ct-table-full", "the full report")
        assert full["max_entries"] == CT_MAX
        status = c.client.get("/status")["conntrack"]
        assert status["full-reports"] >= 1
        samples = c.client.get("/metrics")
        assert any(s["name"] == "cilia_conntrack_full_total" and s["value"] >= 1 for s in samples)
        # Aggressive GC frees the table again, and new flows pass.
        collected(c, sent, "GC to free the table")
        assert c.probe(TF, DS, 80, "UDP")
    finally:
        agent.stop()


def test_ct_list_and_flush(cilia: Cilia) -> None:
    c = cilia
    ds, tf = ep(c, DS), ep(c, TF)
    assert c.probe(TF, DS)
    rows = ct(c, TF)
    assert rows and all(r["endpoint"] == tf["id"] for r in rows)
    assert any(r["destination"] == f"{ds['ipv4']}:80" and r["protocol"] == "TCP" for r in rows)
    table = c.run("bpf", "ct", "list").stdout
    assert "EXPIRES-IN" in table and f"{ds['ipv4']}:80" in table
    out = c.run("bpf", "ct", "flush", TF).stdout
    assert out.startswith("Flushed ")
    assert ct(c, TF) == [] and ct(c, DS) != []
    c.run("bpf", "ct", "flush")
    assert ct(c) == []
