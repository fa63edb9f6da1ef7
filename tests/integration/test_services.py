"""Services on one node: ClusterIPs load-balanced in the datapath at the client's veth,
Endpoints maintained from the ready pods a selector picks, policy on the backend, the
CLI and REST views, and bad input refused whole."""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import Iterator

import pytest

from cilia.datapath.netns import socket_in_netns
from tests.integration.harness import Cilia, eventually, running_agent

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]

BACKENDS = ("web-a", "web-b", "web-c")


def backend(name: str, app: str = "web") -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}
spec:
  containers:
  - name: http
    ports: [{{name: http, containerPort: 8080}}, {{containerPort: 53, protocol: UDP}}]
"""


def client(name: str) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{role: {name}}}}}
spec:
  containers: [{{name: c, command: [sleep, "600"]}}]
"""


SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, protocol: UDP}
"""

EMPTY = """
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: default}
spec:
  selector: {app: nobody}
  ports: [{port: 80}]
"""


@pytest.fixture(scope="module")
def cilia(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cilia]:
    with running_agent(tmp_path_factory.mktemp("services")) as agent:
        pods = [*(backend(n) for n in BACKENDS), client("client"), client("blocked")]
        agent.apply("---\n".join([*pods, SERVICE, EMPTY]))
        assert eventually(lambda: len(_service(agent, "web")["backends"]) == 3, 20)
        yield agent


def _service(cilia: Cilia, name: str) -> dict[str, object]:
    rows = cilia.client.request("GET", "/objects/services")
    row = next(r for r in rows if r["name"] == name)
    return dict(row) | {"clusterIP": row["object"]["spec"].get("clusterIP")}


def _vip(cilia: Cilia, name: str = "web") -> str:
    return str(_service(cilia, name)["clusterIP"])


def _netns(cilia: Cilia, pod: str) -> str:
    return str(cilia.client.request("GET", f"/pods/default/{pod}/netns")["netns"])


def http_get(cilia: Cilia, pod: str, ip: str, port: int = 80, timeout: float = 2) -> str | None:
    """The pod that answered an HTTP request from `pod` to ip:port (None: no answer)."""
    try:
        with socket_in_netns(_netns(cilia, pod), socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect((ip, port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return None
    return str(json.loads(data.partition(b"\r\n\r\n")[2])["pod"])


def test_clusterip_is_assigned_from_the_service_range(cilia: Cilia) -> None:
    vip = _vip(cilia)
    assert vip.startswith("10.96.")
    rows = cilia.run("get", "services").stdout
    assert "ClusterIP" in rows and vip in rows and "80/TCP,53/UDP" in rows


def test_requests_spread_over_every_backend(cilia: Cilia) -> None:
    seen = Counter(http_get(cilia, "client", _vip(cilia)) for _ in range(30))
    assert None not in seen
    assert set(seen) == {f"default/{n}" for n in BACKENDS}


def test_a_flow_keeps_its_backend(cilia: Cilia) -> None:
    vip = _vip(cilia)
    with socket_in_netns(_netns(cilia, "client"), socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect((vip, 80))
        answers = set()
        for _ in range(10):
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            rest = s.recv(4096).partition(b"\r\n\r\n")
            answers.add(json.loads(rest[2])["pod"])
        assert s.getpeername() == (vip, 80)  # the client only ever sees the VIP
    assert len(answers) == 1


def test_udp_service_answers_from_the_vip_and_stays_on_one_backend(cilia: Cilia) -> None:
    vip = _vip(cilia)
    with socket_in_netns(_netns(cilia, "client"), socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for i in range(5):
            s.sendto(b"ping%d" % i, (vip, 53))
            data, peer = s.recvfrom(64)
            assert (data, peer) == (b"ping%d" % i, (vip, 53))
        port = s.getsockname()[1]
    ct = cilia.client.request("GET", "/bpf/ct")
    flows = [r for r in ct if r["protocol"] == "UDP" and r["source"].endswith(f":{port}")]
    service = [r for r in flows if r["direction"] == "service"]
    translated = [r for r in flows if r["direction"] == "egress"]
    assert len(service) == 1 and service[0]["destination"] == f"{vip}:53"
    assert len(translated) == 1 and translated[0]["destination"] != f"{vip}:53"


def test_a_service_without_backends_drops_158(cilia: Cilia) -> None:
    vip = _vip(cilia, "nobody")
    before = cilia.counters().get((158, "egress"), 0)
    assert http_get(cilia, "client", vip, timeout=0.5) is None
    assert cilia.counters().get((158, "egress"), 0) > before


POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-from-client, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {role: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"""


def test_policy_decides_on_the_backend_after_translation(cilia: Cilia) -> None:
    cilia.apply(POLICY)
    try:
        vip = _vip(cilia)
        # Allowed on the backend's port 8080 (not the service port 80): translated first.
        assert {http_get(cilia, "client", vip) for _ in range(10)} - {None}
        assert all(http_get(cilia, "blocked", vip, timeout=0.5) is None for _ in range(6))
        trace = cilia.run(
            "policy",
            "trace",
            "--src-k8s-pod",
            "default:blocked",
            "--dst-service",
            "default/web",
            "--dport",
            "80",
            check=False,
        )
        assert trace.code == 1 and "Final verdict: DENIED" in trace.stdout
        trace = cilia.run(
            "policy",
            "trace",
            "--src-k8s-pod",
            "default:client",
            "--dst-service",
            "default/web",
            "--dport",
            "80",
        )
        assert "Final verdict: ALLOWED" in trace.stdout
    finally:
        cilia.delete(POLICY)


def test_a_removed_backend_leaves_the_service_and_others_keep_their_flows(cilia: Cilia) -> None:
    vip = _vip(cilia)
    with socket_in_netns(_netns(cilia, "client"), socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect((vip, 80))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        kept = json.loads(s.recv(4096).partition(b"\r\n\r\n")[2])["pod"]
        gone = next(n for n in BACKENDS if f"default/{n}" != kept)
        cilia.delete(backend(gone))
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # the established flow goes on
            assert json.loads(s.recv(4096).partition(b"\r\n\r\n")[2])["pod"] == kept
            seen = {http_get(cilia, "client", vip) for _ in range(20)}
            assert f"default/{gone}" not in seen and None not in seen
        finally:
            cilia.apply(backend(gone))
    assert eventually(lambda: len(_service(cilia, "web")["backends"]) == 3, 20)


def test_cli_and_rest_views(cilia: Cilia) -> None:
    vip = _vip(cilia)
    rows = cilia.client.request("GET", "/service")
    web = [r for r in rows if r["service"] == "default/web"]
    assert {r["frontend"] for r in web} == {f"{vip}:80", f"{vip}:53"}
    assert all(len(r["backends"]) == 3 for r in web)
    out = cilia.run("service", "list").stdout
    assert f"{vip}:80" in out and "=> " in out
    lb = json.loads(cilia.run("bpf", "lb", "list", "-o", "json").stdout)
    entry = next(e for e in lb if e["frontend"] == f"{vip}:80")
    assert len(entry["backends"]) == 3 and entry["id"] in {r["id"] for r in web}
    one = cilia.client.request("GET", f"/service/{entry['id']}")
    assert one["frontend"] == f"{vip}:80"
