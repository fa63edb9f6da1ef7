"""Dual stack on real packets: pods with IPv4 and IPv6, policy in both families,
neighbour discovery, the IPv6 source check, extension headers and fragments (packets
built with scapy inside a pod)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cilia.datapath.netns import socket_in_netns
from cilia.runtime.probe import probe as run_probe
from tests.integration.cni_tool import cni, plugin_conf, sandbox, sandboxes
from tests.integration.harness import Cilia, eventually, running_agent
from tests.integration.harness import ready_endpoints as ready
from tests.integration.observe_helpers import MonitorProc, http_get

__all__ = ["sandboxes"]
pytestmark = [pytest.mark.integration, pytest.mark.toolchain]

DROP_INVALID_SIP, DROP_POLICY, DROP_INVALID = 132, 133, 134
DROP_INVALID_EXTHDR, DROP_FRAG_NOSUPPORT = 156, 157

PODS = """
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  containers: [{name: s, ports: [{containerPort: 80}, {containerPort: 81}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
spec:
  containers: [{name: s, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: default, labels: {app: other}}
spec:
  containers: [{name: s, ports: [{containerPort: 80}]}]
"""

WEB_80_FROM_CLIENT = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-80, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""


@pytest.fixture(scope="module")
def dual(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cilia]:
    """One dual-stack agent with three pods, for the whole module."""
    with running_agent(tmp_path_factory.mktemp("ipv6"), dual_stack=True) as c:
        c.apply(PODS)
        assert eventually(lambda: len(ready(c)) == 3, 30), c.run("endpoint", "list").stdout
        yield c


def probe(c: Cilia, src: str, dst: str, port: int, family: str) -> bool:
    res = c.client.request(
        "POST",
        "/probe",
        json={
            "source": f"default/{src}",
            "destination": f"default/{dst}",
            "port": port,
            "protocol": "TCP",
            "timeout": 0.6,
            "family": family,
        },
    )
    return bool(res["result"] == "allowed")


def in_pod(c: Cilia, pod: str, script: str, timeout: float = 30) -> str:
    """Run a Python script (scapy imported as *) in a pod's network namespace."""
    netns = Path(ready(c)[pod]["netns"])
    code = "from scapy.all import *\nconf.verb = 0\n" + textwrap.dedent(script)
    proc = subprocess.run(
        ["nsenter", f"--net={netns}", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def gateway_mac(c: Cilia, pod: str) -> str:
    """The MAC a pod's packets to its gateway go to (the host side of its veth)."""
    return str(c.run("endpoint", "get", f"default/{pod}").json()["addressing"]["host-mac"])


def drops(c: Cilia) -> dict[tuple[int, str], int]:
    return {k: v for k, v in c.counters().items() if k[0] != 0}


def grew(before: dict[tuple[int, str], int], after: dict[tuple[int, str], int]) -> set[int]:
    return {k[0] for k, v in after.items() if v > before.get(k, 0)}


@pytest.fixture
def web_80(dual: Cilia) -> Iterator[Cilia]:
    dual.apply(WEB_80_FROM_CLIENT)
    yield dual
    dual.delete(WEB_80_FROM_CLIENT)


def test_every_pod_is_dual_stack_and_shown_so(dual: Cilia) -> None:
    eps = ready(dual)
    prefix = dual.config.ipv6_range.split("::")[0]
    assert all(e["ipv6"].startswith(prefix + "::") for e in eps.values()), eps
    assert len({e["ipv6"] for e in eps.values()}) == 3
    addrs = subprocess.run(
        ["nsenter", f"--net={eps['web']['netns']}", "ip", "-6", "-o", "addr", "show", "eth0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(row for row in addrs.splitlines() if eps["web"]["ipv6"] in row)
    assert "/128" in line and "tentative" not in line, "no DAD delay: usable at once"
    listing = dual.run("endpoint", "list").stdout
    assert "IPV6" in listing and eps["web"]["ipv6"] in listing
    ipcache = {r["prefix"]: r["identity"] for r in dual.client.request("GET", "/bpf/ipcache")}
    assert ipcache[f"{eps['web']['ipv6']}/128"] == eps["web"]["identity"]
    assert ipcache[f"{dual.config.host_router_ipv6}/128"] == 1
    pod = dual.run("get", "pod", "web", "-o", "json").json()
    assert [a["ip"] for a in pod["status"]["podIPs"]] == [eps["web"]["ipv4"], eps["web"]["ipv6"]]
    out = dual.run("endpoint", "get", eps["web"]["ipv6"]).json()
    assert out["id"] == eps["web"]["id"]
    assert f"Pod IPv6 range:     {dual.config.ipv6_range}" in dual.run("status").stdout


def test_policy_means_the_same_in_both_families(web_80: Cilia) -> None:
    c = web_80
    for family in ("4", "6"):
        assert probe(c, "client", "web", 80, family), f"IPv{family}: client may reach web:80"
        assert not probe(c, "client", "web", 81, family), f"IPv{family}: port 81 is not allowed"
        assert not probe(c, "other", "web", 80, family), f"IPv{family}: other is not allowed"
    res = c.client.request(
        "POST",
        "/probe/matrix",
        json={"ports": [80, 81], "protocols": ["TCP"], "timeout": 0.6, "family": "both"},
    )
    table: dict[int, dict[tuple[str, str, int], str]] = {4: {}, 6: {}}
    for r in res["results"]:
        table[r["family"]][(r["from"], r["to"], r["port"])] = r["result"]
    assert table[4] == table[6] and len(table[4]) == 18
    assert table[6][("default/client", "default/web", 80)] == "allowed"
    assert table[6][("default/other", "default/web", 80)] == "denied"
    out = c.run("probe", "default/other", "default/web", "--family", "both", check=False)
    assert out.code == 1 and "IPv6" in out.stdout and "denied" in out.stdout


def test_conntrack_and_monitor_show_ipv6(web_80: Cilia) -> None:
    c = web_80
    eps = ready(c)
    web, other = eps["web"], eps["other"]
    assert probe(c, "client", "web", 80, "6")
    rows = c.client.request("GET", "/bpf/ct")
    assert any(r["destination"] == f"[{web['ipv6']}]:80" for r in rows), rows
    mon = MonitorProc(c, "-t", "drop")
    try:
        assert not probe(c, "other", "web", 80, "6")
        ev = mon.wait_for(lambda e: e.get("family") == "IPv6", "an IPv6 drop")
    finally:
        mon.stop()
    assert (ev["reason"], ev["src-ip"], ev["dst-ip"]) == (DROP_POLICY, other["ipv6"], web["ipv6"])
    assert (ev["src-identity"], ev["dst-identity"]) == (other["identity"], web["identity"])
    assert f"[{web['ipv6']}]:80" in ev["summary"] and ev["protocol"] == "TCP"


def test_the_gateway_is_resolved_by_neighbour_discovery(dual: Cilia) -> None:
    """Without the permanent neighbour the pod asks for its gateway: the datapath
    answers with the router MAC (the host side of the pod's veth)."""
    eps = ready(dual)
    netns = eps["client"]["netns"]
    host_mac = gateway_mac(dual, "client")
    neigh_cmd = ["nsenter", f"--net={netns}", "ip", "-6", "neigh"]
    subprocess.run([*neigh_cmd, "del", "fe80::1", "dev", "eth0"], check=True)
    try:
        assert probe(dual, "client", "web", 80, "6")
        neigh = subprocess.run(
            ["nsenter", f"--net={netns}", "ip", "-6", "neigh", "show", "fe80::1"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert host_mac in neigh and "PERMANENT" not in neigh, neigh
        # Any other address the pod asks for is answered the same way.
        mac = in_pod(dual, "client", "print(getmacbyip6('fd00:dead::1'))").strip()
        assert mac == host_mac
    finally:
        entry = ["fe80::1", "lladdr", host_mac, "dev", "eth0", "nud", "permanent"]
        subprocess.run([*neigh_cmd, "replace", *entry], check=True)


def test_a_spoofed_ipv6_source_is_dropped(dual: Cilia) -> None:
    eps = ready(dual)
    before = drops(dual)
    answer = in_pod(
        dual,
        "client",
        f"""
        p = IPv6(src="{eps["other"]["ipv6"]}", dst="{eps["web"]["ipv6"]}")/TCP(dport=80, flags="S")
        print(sr1(p, timeout=1) is None)
        """,
    )
    assert answer.strip() == "True"
    assert DROP_INVALID_SIP in grew(before, drops(dual))


SYN = 'TCP(sport=RandShort(), dport={port}, flags="S")'


def syn_ack(c: Cilia, headers: str, port: int = 80) -> bool:
    """Whether web answers a SYN from client sent with these extension headers (the
    answer is sniffed: scapy does not pair every chain with its reply)."""
    web = ready(c)["web"]["ipv6"]
    out = in_pod(
        c,
        "client",
        f"""
        def is_answer(p):
            return p.haslayer(TCP) and p[IPv6].src == "{web}" and p[TCP].flags == "SA"
        sniffer = AsyncSniffer(iface="eth0", lfilter=is_answer, count=1)
        sniffer.start()
        time.sleep(0.3)
        send(IPv6(dst="{web}")/{headers}{SYN.format(port=port)})
        sniffer.join(timeout=2)
        if sniffer.running:
            sniffer.stop()
        print(len(sniffer.results or []) == 1)
        """,
    )
    return out.strip() == "True"


@pytest.mark.parametrize(
    "headers",
    [
        "",
        "IPv6ExtHdrHopByHop()/",
        "IPv6ExtHdrHopByHop()/IPv6ExtHdrDestOpt()/",
        "IPv6ExtHdrDestOpt()/IPv6ExtHdrRouting(segleft=0, addresses=[])/IPv6ExtHdrDestOpt()/",
        "IPv6ExtHdrFragment(offset=0, m=0)/",
    ],
    ids=["none", "hop-by-hop", "hop-by-hop+destination", "dest+routing+dest", "atomic-fragment"],
)
def test_allowed_extension_header_chains_reach_the_server(web_80: Cilia, headers: str) -> None:
    before = drops(web_80)
    assert syn_ack(web_80, headers), (before, drops(web_80))


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ("IPv6ExtHdrDestOpt()/IPv6ExtHdrHopByHop()/", DROP_INVALID_EXTHDR),
        ("IPv6ExtHdrDestOpt()/" * 9, DROP_INVALID_EXTHDR),
        ('IPv6ExtHdrRouting(segleft=1, addresses=["fd00:dead::1"])/', DROP_INVALID_EXTHDR),
        ("IPv6ExtHdrDestOpt(nh=253)/Raw(b'x' * 8)/", DROP_INVALID_EXTHDR),
        ("IPv6ExtHdrDestOpt(nh=59)/", DROP_INVALID_EXTHDR),
        ("IPv6ExtHdrFragment(offset=0, m=1)/", DROP_FRAG_NOSUPPORT),
    ],
    ids=[
        "hop-by-hop-not-first",
        "too-long",
        "segments-left",
        "unknown",
        "no-next-header",
        "first-fragment",
    ],
)
def test_bad_extension_header_chains_are_dropped(web_80: Cilia, headers: str, reason: int) -> None:
    before = drops(web_80)
    assert not syn_ack(web_80, headers)
    assert reason in grew(before, drops(web_80))


def test_an_ipv4_mapped_destination_is_invalid(web_80: Cilia) -> None:
    """::ffff:a.b.c.d on the wire would alias the IPv4 entries of the maps: 134."""
    c = web_80
    eps = ready(c)
    client, web = eps["client"]["ipv6"], eps["web"]["ipv4"]
    before = drops(c)
    frame = f'Ether(dst="{gateway_mac(c, "client")}")/IPv6(src="{client}", dst="::ffff:{web}")'
    in_pod(c, "client", f'sendp({frame}/{SYN.format(port=80)}, iface="eth0")')
    assert DROP_INVALID in grew(before, drops(c))


def test_a_fragment_cannot_smuggle_a_denied_port(web_80: Cilia) -> None:
    """A SYN to the denied port 81 split into fragments: every fragment is dropped
    (157), none reaches the pod to be reassembled; port 81 stays closed either way."""
    c = web_80
    web = ready(c)["web"]["ipv6"]
    before = drops(c)
    out = in_pod(
        c,
        "client",
        f"""
        syn = IPv6(dst="{web}")/IPv6ExtHdrFragment()/{SYN.format(port=81)}/Raw(b"x" * 200)
        frags = fragment6(syn, 120)
        answers = [sr1(f, timeout=0.5) for f in frags]
        print(len(frags), all(a is None for a in answers))
        """,
    )
    count, none_answered = out.split()
    assert int(count) >= 2 and none_answered == "True"
    after = drops(c)
    assert after.get((DROP_FRAG_NOSUPPORT, "egress"), 0) - before.get(
        (DROP_FRAG_NOSUPPORT, "egress"), 0
    ) >= int(count)
    assert not probe(c, "client", "web", 81, "6")


CLIENT_INGRESS_FROM_NOBODY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-closed, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  ingress: [{fromEndpoints: [{matchLabels: {app: nobody}}]}]
"""


ERRORS = {
    "6": ("IPv6", "ICMPv6PacketTooBig(mtu=1280)"),
    "4": ("IP", "ICMP(type=3, code=4, nexthopmtu=1280)"),
}


@pytest.mark.parametrize("family", ["6", "4"])
def test_an_icmp_error_passes_only_for_a_tracked_connection(dual: Cilia, family: str) -> None:
    """Packet too big (fragmentation needed for IPv4) from web to a client that takes
    nothing from web: it passes when it quotes the client's own flow to web (path MTU
    discovery under any policy), and is dropped (133) when it quotes no flow."""
    eps = ready(dual)
    key = "ipv6" if family == "6" else "ipv4"
    client, web = eps["client"][key], eps["web"][key]
    ip, error = ERRORS[family]
    dual.apply(CLIENT_INGRESS_FROM_NOBODY)
    try:
        flow = f'{ip}(src="{client}", dst="{web}")/UDP(sport=5555, dport=80)/b"ping"'
        ether = f'Ether(dst="{gateway_mac(dual, "client")}")'
        in_pod(dual, "client", f'sendp({ether}/{flow}, iface="eth0")')

        def too_big(sport: int) -> set[int]:
            before = drops(dual)
            quoted = f'{ip}(src="{client}", dst="{web}")/UDP(sport={sport}, dport=80)/b"ping"'
            frame = f'Ether(dst="{gateway_mac(dual, "web")}")/{ip}(src="{web}", dst="{client}")'
            in_pod(dual, "web", f'sendp({frame}/{error}/{quoted}, iface="eth0")')
            return grew(before, drops(dual))

        assert too_big(5555) == set(), "the error of a tracked flow passes"
        assert DROP_POLICY in too_big(6666), "an error quoting no flow is policy's"
    finally:
        dual.delete(CLIENT_INGRESS_FROM_NOBODY)


def test_ipv6_survives_an_agent_restart(dual: Cilia) -> None:
    before = {name: e["ipv6"] for name, e in ready(dual).items()}
    os.kill(int(dual.config.pid_file.read_text()), signal.SIGTERM)
    assert eventually(lambda: not dual.config.socket_path.exists(), 20.0)
    dual.start()
    assert eventually(lambda: len(ready(dual)) == 3, 30)
    assert {name: e["ipv6"] for name, e in ready(dual).items()} == before
    assert probe(dual, "client", "web", 80, "6")


def test_a_cni_container_is_dual_stack(dual: Cilia, sandboxes: list[str]) -> None:
    conf = plugin_conf(dual.config.socket_path)
    netns, cid = sandbox(sandboxes), f"v6-{dual.tag}"
    code, res = cni("ADD", conf, cid, netns)
    assert code == 0, res
    try:
        addresses = [ip["address"] for ip in res["ips"]]
        assert len(addresses) == 2 and addresses[1].endswith("/128"), res
        assert {"dst": "::/0", "gw": "fe80::1"} in res["routes"], res["routes"]
        web = ready(dual)["web"]["ipv6"]
        assert asyncio.run(run_probe(netns, web, 80, "TCP", 1.0)).result == "allowed"
        assert cni("CHECK", {**conf, "prevResult": res}, cid, netns)[0] == 0
    finally:
        assert cni("DEL", conf, cid, netns)[0] == 0


def test_an_ipv6_flow_cut_by_policy_loses_its_ct_entry(web_80: Cilia) -> None:
    """Established TCP over IPv6 lives 21600 s; once policy denies it, the next packet
    is dropped (133) and its CT entry removed, so it cannot come back as a reply."""
    c = web_80
    eps = ready(c)
    client, web = eps["client"], eps["web"]
    sock = socket_in_netns(client["netns"], socket.AF_INET6, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect((web["ipv6"], 80))
        source = f"[{client['ipv6']}]:{sock.getsockname()[1]}"
        assert http_get(sock, web["ipv6"]).startswith(b"HTTP/1.1 200")

        def flow() -> list[dict[str, Any]]:
            rows = c.client.request("GET", "/bpf/ct", params={"endpoint": web["id"]})
            return [r for r in rows if r["source"] == source]

        [entry] = flow()
        assert entry["state"] == "established" and entry["expires-in"] > 21000
        before = drops(c)
        c.delete(WEB_80_FROM_CLIENT)
        c.apply(WEB_80_FROM_CLIENT.replace("app: client", "app: nobody"))
        sock.settimeout(1.5)
        with pytest.raises(TimeoutError):
            http_get(sock, web["ipv6"])
        assert DROP_POLICY in grew(before, drops(c))
        assert flow() == [], "the denied flow's CT entry is removed"
    finally:
        sock.close()
        c.delete(WEB_80_FROM_CLIENT.replace("app: client", "app: nobody"))
        c.apply(WEB_80_FROM_CLIENT)  # the fixture deletes it
