"""Identity-based L3/L4 enforcement on real pods with real packets."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cilia.datapath.maps import PolicyMap
from cilia.datapath.netns import socket_in_netns
from tests.integration.harness import Cilia, running_agent

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]

STARWARS = """
apiVersion: v1
kind: Pod
metadata: {name: deathstar, namespace: default, labels: {org: empire, class: deathstar}}
spec:
  containers:
    - name: srv
      ports: [{containerPort: 80}, {containerPort: 81}, {containerPort: 80, protocol: UDP}]
---
apiVersion: v1
kind: Pod
metadata: {name: tiefighter, namespace: default, labels: {org: empire, class: tiefighter}}
spec:
  containers: [{name: srv, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: xwing, namespace: default, labels: {org: alliance, class: xwing}}
spec:
  containers: [{name: srv, ports: [{containerPort: 80}]}]
"""

RULE1 = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1, namespace: default}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
    - fromEndpoints: [{matchLabels: {org: empire}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""

DS, TF, XW = "default/deathstar", "default/tiefighter", "default/xwing"


@pytest.fixture(scope="module")
def cilia(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cilia]:
    with running_agent(tmp_path_factory.mktemp("agent")) as agent:
        yield agent


@pytest.fixture
def starwars(cilia: Cilia) -> Iterator[Cilia]:
    cilia.apply(STARWARS)
    try:
        yield cilia
    finally:
        cilia.reset()


def test_cnp_l3_l4_ingress_added_and_removed_live(starwars: Cilia) -> None:
    c = starwars
    assert c.probe(XW, DS) and c.probe(TF, DS, 81)
    before = c.counters()
    c.apply(RULE1)
    assert c.probe(TF, DS, 80)
    assert not c.probe(XW, DS, 80), "L3: alliance must not reach the deathstar"
    assert not c.probe(TF, DS, 81), "L4: only port 80 is allowed"
    assert not c.probe(TF, DS, 80, "UDP"), "L4: only TCP is allowed"
    assert c.probe(DS, XW), "egress of the deathstar is not enforced"
    after = c.counters()
    assert after.get((133, "ingress"), 0) > before.get((133, "ingress"), 0)
    assert after.get((159, "ingress"), 0) > before.get((159, "ingress"), 0)
    ep = c.client.request("GET", f"/endpoint/{DS}")
    assert ep["ingress-enforcement"] and not ep["egress-enforcement"]

    c.delete(RULE1)
    assert c.probe(XW, DS) and c.probe(TF, DS, 81)


def test_cnp_egress_to_endpoints(starwars: Cilia) -> None:
    c = starwars
    c.apply("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: xwing-out, namespace: default}
        specs:
          - endpointSelector: {matchLabels: {class: xwing}}
            egress:
              - toEndpoints: [{matchExpressions: [{key: class, operator: In, values: [deathstar]}]}]
                toPorts: [{ports: [{port: "81", protocol: ANY}]}]
    """)
    assert c.probe(XW, DS, 81)
    assert not c.probe(XW, DS, 80)
    assert not c.probe(XW, TF, 80)
    assert c.probe(TF, XW, 80), "replies of allowed ingress flows pass egress enforcement"


def test_network_policy_namespace_and_pod_selector(cilia: Cilia) -> None:
    c = cilia
    try:
        c.apply("""
            apiVersion: v1
            kind: Namespace
            metadata: {name: x, labels: {team: a}}
            ---
            apiVersion: v1
            kind: Namespace
            metadata: {name: y, labels: {team: b}}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: server, namespace: x, labels: {role: server}}
            spec: {containers: [{name: s, ports: [{containerPort: 80},
                                                  {containerPort: 80, protocol: UDP}]}]}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: client, namespace: x, labels: {role: client}}
            spec: {containers: [{name: s, ports: [{containerPort: 80}]}]}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: client, namespace: y, labels: {role: client}}
            spec: {containers: [{name: s, ports: [{containerPort: 80}]}]}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: other, namespace: y, labels: {role: other}}
            spec: {containers: [{name: s, ports: [{containerPort: 80}]}]}
            ---
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: server-in, namespace: x}
            spec:
              podSelector: {matchLabels: {role: server}}
              ingress:
                - from:
                    - namespaceSelector: {matchLabels: {team: b}}
                      podSelector: {matchLabels: {role: client}}
                  ports: [{port: 80, protocol: TCP}]
        """)
        assert c.probe("y/client", "x/server"), "team=b namespace AND role=client"
        assert not c.probe("x/client", "x/server"), "role=client but namespace team=a"
        assert not c.probe("y/other", "x/server"), "namespace team=b but role=other"
        assert not c.probe("y/client", "x/server", 80, "UDP"), "only TCP is allowed"
        assert c.probe("x/server", "y/other"), "egress is not restricted"
    finally:
        c.reset()


def test_label_change_takes_effect_on_running_pod(starwars: Cilia) -> None:
    c = starwars
    c.apply(RULE1)
    assert not c.probe(XW, DS)
    ifindex = c.client.request("GET", f"/endpoint/{XW}")["ifindex"]
    old_identity = c.client.request("GET", f"/endpoint/{XW}")["identity"]
    result = c.apply(STARWARS.replace("org: alliance", "org: empire"))
    assert "pod/default/xwing configured" in result.stdout
    ep = c.client.request("GET", f"/endpoint/{XW}")
    assert ep["identity"] != old_identity and ep["ifindex"] == ifindex
    assert c.probe(XW, DS)


def test_apply_twice_changes_nothing(starwars: Cilia) -> None:
    c = starwars
    before = c.client.request("GET", "/endpoint")
    out = c.apply(STARWARS).stdout
    assert out.count("unchanged") == 3, out
    assert c.client.request("GET", "/endpoint") == before


def test_policy_import_get_delete_by_labels(starwars: Cilia, tmp_path: Path) -> None:
    c = starwars
    rules = tmp_path / "rules.json"
    rules.write_text("""[{
        "endpointSelector": {"matchLabels": {"class": "deathstar"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"org": "empire"}}]}],
        "labels": ["unspec:demo=l3"]
    }]""")
    rev0 = c.client.request("GET", "/policy")["revision"]
    out = c.run("policy", "import", str(rules)).stdout
    assert out.strip() == f"Revision: {rev0 + 1}"
    assert not c.probe(XW, DS) and c.probe(TF, DS, 81)
    rules_now = c.run("policy", "get").json()["rules"]
    assert len(rules_now) == 1
    out = c.run("policy", "delete", "unspec:demo=l3").stdout
    assert "Deleted 1 rules" in out
    assert c.probe(XW, DS)


def test_spoofed_source_is_dropped(starwars: Cilia) -> None:
    c = starwars
    netns = c.client.request("GET", f"/pods/{XW.replace('/', '/')}/netns")["netns"]
    ds_ip = c.client.request("GET", f"/endpoint/{DS}")["ipv4"]
    spoofed = c.config.pod_cidr.rsplit(".", 1)[0] + ".250"
    subprocess.run(
        ["ip", "-n", Path(netns).name, "addr", "add", f"{spoofed}/32", "dev", "eth0"], check=True
    )
    before = c.counters().get((132, "egress"), 0)
    for src, expect in ((spoofed, False), (None, True)):
        sock = socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if src:
                sock.bind((src, 0))
            sock.settimeout(0.5)
            sock.sendto(b"ping", (ds_ip, 80))
            try:
                got = sock.recv(100) == b"ping"
            except TimeoutError:
                got = False
            assert got is expect, f"source {src or 'own address'}"
        finally:
            sock.close()
    assert c.counters().get((132, "egress"), 0) > before


def test_ipv6_is_dropped(starwars: Cilia) -> None:
    c = starwars
    netns = Path(c.client.request("GET", f"/pods/{XW}/netns")["netns"]).name
    before = c.counters().get((139, "egress"), 0)
    # The host answers a multicast echo on the veth unless the datapath drops it.
    ping = subprocess.run(
        ["ip", "netns", "exec", netns, "ping", "-6", "-c", "1", "-W", "1", "ff02::1%eth0"],
        capture_output=True,
        text=True,
    )
    assert ping.returncode != 0, ping.stdout
    assert c.counters().get((139, "egress"), 0) > before


def test_matrix_of_nine_pods_finishes_in_seconds(cilia: Cilia) -> None:
    c = cilia
    docs = []
    for ns in ("x", "y", "z"):
        docs.append(f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}")
        for pod in ("a", "b", "c"):
            docs.append(
                f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}, "
                f"labels: {{pod: {pod}}}}}\nspec: {{containers: [{{name: s, ports: ["
                "{containerPort: 80}, {containerPort: 81}, {containerPort: 80, protocol: UDP}, "
                "{containerPort: 81, protocol: UDP}]}]}"
            )
    try:
        c.apply("\n---\n".join(docs))
        c.apply("""
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: deny-in, namespace: x}
            spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}
        """)
        started = time.monotonic()
        table = c.matrix([80, 81], ["TCP", "UDP"])
        elapsed = time.monotonic() - started
        assert len(table) == 9 * 9 * 2 * 2
        denied = {k for k, ok in table.items() if not ok}
        expected = {
            (s, "x/a", p, pr)
            for s in {k[0] for k in table}
            if s != "x/a"
            for p in (80, 81)
            for pr in ("TCP", "UDP")
        }
        assert denied == expected
        assert elapsed < 15, f"matrix took {elapsed:.1f}s"
        out = c.run("probe", "--matrix", "--ports", "80", "--namespaces", "x").stdout
        assert "9 probes" in out and "2 denied" in out
    finally:
        c.reset()


def test_controllers_repair_policy_map_drift(starwars: Cilia) -> None:
    c = starwars
    c.apply(RULE1)
    before = c.client.request("GET", "/bpf/policy")
    ds = c.client.request("GET", f"/endpoint/{DS}")
    xw = c.client.request("GET", f"/endpoint/{XW}")
    tf = c.client.request("GET", f"/endpoint/{TF}")
    entry = next(
        e
        for e in before
        if e["endpoint"] == ds["id"] and e["port"] == 80 and e["identity"] == tf["identity"]
    )
    policy = PolicyMap(f"{c.config.bpf_dir}/maps/cilia_policy")
    try:
        # Someone else removes an allowance and adds one for the alliance.
        policy.remove((ds["id"], 0, entry["identity"], 80, entry["protocol"]))
        policy.put((ds["id"], 0, xw["identity"], 0, 0))
        assert c.probe(XW, DS) and not c.probe(TF, DS)
        deadline = time.monotonic() + 30
        while c.client.request("GET", "/bpf/policy") != before:
            assert time.monotonic() < deadline, "drift was not repaired"
            time.sleep(0.2)
    finally:
        policy.close()
    assert c.probe(TF, DS) and not c.probe(XW, DS)
