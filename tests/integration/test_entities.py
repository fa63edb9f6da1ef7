"""Entities with their real meaning on real packets: host, world, masqueraded outside
traffic, the legacy host-allows-world option, init identities, service accounts,
policy trace, CNP status and validation."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from cilia.datapath.external import Outside
from cilia.runtime.probe import probe
from cilia.runtime.processes import start_process, stop_process, wait_listening
from tests.integration.harness import Cilia

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]

HOST_NETNS = "/proc/self/ns/net"

PODS = """
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  serviceAccountName: web-sa
  containers: [{name: s, ports: [{containerPort: 80}, {containerPort: 80, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
spec:
  serviceAccountName: client-sa
  containers: [{name: s, ports: [{containerPort: 80}]}]
"""


def cnp(name: str, ingress: str) -> str:
    return f"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: {name}, namespace: default, annotations: {{owner: team-a}}}}
spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  ingress: {ingress}
"""


class Edge:
    """An agent with pods, an outside namespace (with a responder) and a SNAT rule."""

    def __init__(self, cilia: Cilia) -> None:
        self.cilia = cilia
        n = int(cilia.tag[:2], 16)
        self.outside = Outside(
            f"{cilia.config.name_prefix}-outside",
            f"co{cilia.tag}",
            f"198.19.{n}.1",
            f"198.19.{n}.2",
        )
        self.comment = f"{cilia.config.name_prefix}-snat"

    def start(self) -> None:
        self.cilia.start()
        self.outside.create()
        self.cilia.apply(PODS)
        self.web_ip = self.cilia.client.request("GET", "/endpoint/default/web")["ipv4"]
        argv = [sys.executable, "-m", "cilia.runtime.responder", "--pod", "out", "--tcp", "80"]
        self.responder = start_process(self.outside.path, argv, Path(self.cilia.tmp) / "out.log")
        assert wait_listening(self.outside.path, tcp=[80], timeout=10)

    def stop(self) -> list[str]:
        stop_process(self.responder)
        self.outside.snat(self.cilia.config.pod_cidr, self.comment, on=False)
        self.outside.remove()
        return self.cilia.stop()

    def reach(self, src: str, dst_ip: str | None = None, port: int = 80) -> bool:
        """TCP probe from `host`, `outside` or `snat` (outside, masqueraded) to web."""
        self.outside.snat(self.cilia.config.pod_cidr, self.comment, on=src == "snat")
        path = HOST_NETNS if src == "host" else self.outside.path
        res = asyncio.run(probe(path, dst_ip or self.web_ip, port, "TCP", 0.8))
        return res.result == "allowed"


def _edge(
    tmp: Path,
    env: dict[str, str],
    settings: Callable[[Cilia], dict[str, str]] | None = None,
    manifest: str = "",
) -> Iterator[Edge]:
    """An Edge with `env` and the `settings` made from its agent (named after it), and
    `manifest` applied after the pods; on exit nothing may be left behind."""
    c = Cilia(tmp)
    c.configure(env | (settings(c) if settings else {}))
    edge = Edge(c)
    try:
        edge.start()
        if manifest:
            c.apply(manifest)
        yield edge
    finally:
        left = edge.stop()
        assert left == [], f"left behind: {left}"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    yield from _edge(tmp_path_factory.mktemp("edge"), {})


@pytest.fixture
def clean(edge: Edge) -> Iterator[Edge]:
    try:
        yield edge
    finally:
        for item in edge.cilia.client.request("GET", "/objects/policies"):
            edge.cilia.run("delete", "-f", "-", input=yaml.safe_dump(item["object"]))
        edge.cilia.apply(PODS)


def test_host_is_the_node_only_and_masqueraded_outside_is_world(clean: Edge) -> None:
    e = clean
    assert e.reach("host") and e.reach("outside") and e.reach("snat"), "no policy: all allowed"
    e.cilia.apply(cnp("host-only", "[{fromEntities: [host]}]"))
    assert e.reach("host"), "the node's own processes are host"
    assert not e.reach("outside"), "the outside is world, not host"
    assert not e.reach("snat"), "outside traffic SNATed to a node address is not host"
    e.cilia.apply(cnp("host-only", "[{fromEntities: [world]}]"))
    assert e.reach("outside") and e.reach("snat")
    assert not e.reach("host")


def test_cidr_denial_reports_cidr_reason(clean: Edge) -> None:
    e = clean
    net = e.outside.outside_ip.rsplit(".", 1)[0]
    e.cilia.apply(cnp("cidr", f"[{{fromCIDRSet: [{{cidr: {net}.0/24, except: [{net}.0/30]}}]}}]"))
    before = e.cilia.counters().get((162, "ingress"), 0)
    assert not e.reach("outside")
    assert e.cilia.counters().get((162, "ingress"), 0) > before


def test_legacy_option_host_allows_world(tmp_path: Path) -> None:
    for e in _edge(tmp_path, {"CILIA_LEGACY_HOST_ALLOWS_WORLD": "true"}):
        e.cilia.apply(cnp("host-only", "[{fromEntities: [host]}]"))
        assert e.reach("host") and e.reach("outside") and e.reach("snat")


def test_service_account_selector(clean: Edge) -> None:
    c = clean.cilia
    c.apply(
        cnp(
            "sa",
            "[{fromEndpoints: [{matchLabels: {io.cilium.k8s.policy.serviceaccount: client-sa}}]}]",
        )
    )
    assert c.probe("default/client", "default/web")
    assert not clean.reach("host")
    c.apply(
        cnp("sa", "[{fromEndpoints: [{matchLabels: {io.cilium.k8s.policy.serviceaccount: x}}]}]")
    )
    assert not c.probe("default/client", "default/web"), "another account is required now"


def test_policy_trace_matches_packets(clean: Edge) -> None:
    c = clean.cilia
    c.apply(
        cnp(
            "l4",
            "[{fromEndpoints: [{matchLabels: {app: client}}], "
            "toPorts: [{ports: [{port: '80', protocol: TCP}]}]}]",
        )
    )
    ok = c.run(
        "policy",
        "trace",
        "--src-k8s-pod",
        "default:client",
        "--dst-k8s-pod",
        "default:web",
        "--dport",
        "80/TCP",
        check=False,
    )
    assert ok.code == 0 and ok.stdout.rstrip().endswith("Final verdict: ALLOWED"), ok.stdout
    assert "selects the destination" in ok.stdout
    denied = c.run(
        "policy",
        "trace",
        "--src-endpoint",
        "default/client",
        "--dst-endpoint",
        "default/web",
        "--dport",
        "80/UDP",
        "-v",
        check=False,
    )
    assert denied.code == 1 and "Final verdict: DENIED" in denied.stdout
    assert not c.probe("default/client", "default/web", 80, "UDP")
    by_labels = c.run(
        "policy",
        "trace",
        "-s",
        "k8s:app=client",
        "-s",
        "k8s:io.kubernetes.pod.namespace=default",
        "-d",
        "k8s:app=web",
        "--dport",
        "80",
        check=False,
    )
    assert "Final verdict: ALLOWED" in by_labels.stdout, by_labels.stdout
    world = c.run(
        "policy",
        "trace",
        "--src-identity",
        "2",
        "--dst-endpoint",
        "default/web",
        "--dport",
        "80",
        check=False,
    )
    assert world.code == 1 and "Final verdict: DENIED" in world.stdout
    assert not clean.reach("outside")


def test_cnp_status_per_node(clean: Edge) -> None:
    c = clean.cilia
    c.apply(cnp("status", "[{fromEntities: [cluster]}]"))
    obj = yaml.safe_load(c.run("get", "cnp", "status", "-o", "yaml").stdout)
    nodes = obj["status"]["nodes"]
    node = nodes[c.config.node_name]
    assert node["ok"] is True and node["enforcing"] is True and node["error"] == ""
    assert node["localPolicyRevision"] >= 1 and node["lastUpdated"]
    assert node["annotations"] == {"owner": "team-a"}


def test_init_identity_until_labels_are_released(clean: Edge) -> None:
    c = clean.cilia
    c.apply("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: init-allow, namespace: default}
        specs:
          - endpointSelector: {matchLabels: {"reserved:init": ""}}
            egress:
              - toEntities: [all]
                toPorts: [{ports: [{port: "80", protocol: UDP}]}]
        ---
        apiVersion: v1
        kind: Pod
        metadata:
          name: booting
          namespace: default
          labels: {app: booting}
          annotations: {cilia.io/init-labels: hold}
        spec: {containers: [{name: s, ports: [{containerPort: 80}]}]}
    """)
    try:
        ep = c.client.request("GET", "/endpoint/default/booting")
        assert ep["identity"] == 5 and ep["labels"] == ["reserved:init"]
        assert c.probe("default/booting", "default/web", 80, "UDP"), "init policy grants 80/UDP"
        assert not c.probe("default/booting", "default/web", 80, "TCP"), "and nothing else"
        out = c.run("endpoint", "labels", "default/booting", "--add", "k8s:tier=front").stdout
        after = c.client.request("GET", "/endpoint/default/booting")
        assert after["identity"] not in (0, 5) and after["ifindex"] == ep["ifindex"], out
        assert "k8s:app=booting" in after["labels"] and "k8s:tier=front" in after["labels"]
        assert c.probe("default/booting", "default/web", 80, "TCP"), "real identity: no policy"
    finally:
        c.run("delete", "pod", "default/booting")


def test_policy_delete_by_labels_exactly(clean: Edge, tmp_path: Path) -> None:
    c = clean.cilia
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump(
            [
                {
                    "endpointSelector": {"matchLabels": {"app": "web"}},
                    "ingress": [{}],
                    "labels": ["unspec:team=a", "unspec:env=prod"],
                },
                {
                    "endpointSelector": {"matchLabels": {"app": "web"}},
                    "ingress": [{}],
                    "labels": ["unspec:team=a"],
                    "description": "kept",
                },
            ]
        )
    )
    c.run("policy", "import", str(rules))
    out = c.run("policy", "delete", "unspec:team=a", "unspec:env=prod").stdout
    assert "Deleted 1 rules" in out
    left = c.run("policy", "get").json()["rules"]
    assert [r.get("description") for r in left] == ["kept"]
    c.run("policy", "delete", "--all")


def test_validation_wording_and_nothing_applied(clean: Edge, tmp_path: Path) -> None:
    c = clean.cilia
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            [
                {"endpointSelector": {}, "ingress": [{}]},
                {
                    "endpointSelector": {},
                    "ingress": [{"fromEndpoints": [{}], "fromCIDRSet": [{"cidr": "10.0.0.0/8"}]}],
                },
            ]
        )
    )
    res = c.run("policy", "validate", str(bad), check=False)
    assert res.code == 1
    assert "Combining FromEndpoints and FromCIDRSet is not supported yet" in res.stderr
    assert c.run("policy", "import", str(bad), check=False).code == 1
    assert c.run("policy", "get").json()["rules"] == []


def test_allow_localhost_always(tmp_path: Path) -> None:
    """`--allow-localhost=always` (CILIA_ALLOW_LOCALHOST): the node reaches pods whatever
    the policy; other peers still need an allowance."""
    for e in _edge(tmp_path, {"CILIA_ALLOW_LOCALHOST": "always"}):
        e.cilia.apply(cnp("world-only", "[{fromEntities: [world]}]"))
        assert e.reach("host") and e.reach("outside")
        e.cilia.apply(cnp("world-only", "[{fromEndpoints: [{matchLabels: {app: none}}]}]"))
        assert e.reach("host") and not e.reach("outside")
        out = e.cilia.run(
            "policy",
            "trace",
            "-s",
            "reserved:host",
            "--dst-k8s-pod",
            "default:web",
            "--dport",
            "80",
        ).stdout
        assert "allow-localhost=always" in out and "Final verdict: ALLOWED" in out
