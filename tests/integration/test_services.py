"""Services on one node: ClusterIPs load-balanced in the datapath at the client's veth,
Endpoints maintained from the ready pods a selector picks, policy on the backend, the
CLI and REST views, and bad input refused whole."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cilia.datapath.layout import LbKey, LbService
from cilia.datapath.maps import BpfMap, addr
from cilia.datapath.netns import socket_in_netns
from tests.integration.harness import Cilia, answering_pod, eventually, running_agent
from tests.integration.observe_helpers import MonitorProc

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]

BACKENDS = ("web-a", "web-b", "web-c")


def backend(name: str, ready_flag: Path | None = None) -> str:
    """A backend of the web service; with `ready_flag`, ready while that file exists
    (checked every second)."""
    probe = (
        f"""
    readinessProbe:
      exec: {{command: [test, -f, "{ready_flag}"]}}
      periodSeconds: 1
      failureThreshold: 1"""
        if ready_flag
        else ""
    )
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: web}}}}
spec:
  containers:
  - name: http
    ports: [{{name: http, containerPort: 8080}}, {{containerPort: 53, protocol: UDP}}]{probe}
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
    # NodePort services of this module get no node device: only their ClusterIP.
    nowhere = {"CILIA_NODEPORT_DEVICES": '["cilia-nowhere"]'}
    with running_agent(tmp_path_factory.mktemp("services"), **nowhere) as agent:
        pods = [*(backend(n) for n in BACKENDS), client("client"), client("blocked")]
        agent.apply("---\n".join([*pods, SERVICE, EMPTY]))
        assert eventually(lambda: len(_service(agent, "web")["backends"]) == 3, 20)
        yield agent


def _service(cilia: Cilia, name: str) -> dict[str, Any]:
    rows = cilia.client.request("GET", "/objects/services")
    row = next(r for r in rows if r["name"] == name)
    return dict(row) | {"clusterIP": row["object"]["spec"].get("clusterIP")}


def _vip(cilia: Cilia, name: str = "web") -> str:
    return str(_service(cilia, name)["clusterIP"])


def _netns(cilia: Cilia, pod: str) -> str:
    return str(cilia.client.request("GET", f"/pods/default/{pod}/netns")["netns"])


def http_get(cilia: Cilia, pod: str, ip: str, port: int = 80, timeout: float = 2) -> str | None:
    """The pod that answered an HTTP request from `pod` to ip:port (None: no answer)."""
    return answering_pod(_netns(cilia, pod), ip, port, timeout)


def test_clusterip_is_assigned_from_the_service_range(cilia: Cilia) -> None:
    vip = _vip(cilia)
    assert ipaddress.ip_address(vip) in ipaddress.ip_network(cilia.config.service_cidr)
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
    with pytest.raises(PermissionError), socket.create_connection((vip, 80), timeout=1):
        pass  # the node's own connect is refused by its socket hook
    trace = cilia.run(
        "policy",
        "trace",
        "--src-k8s-pod",
        "default:client",
        "--dst-service",
        "default/nobody",
        "--dport",
        "80",
        check=False,
    )
    assert trace.code == 1 and "no ready backend: dropped (158)" in trace.stdout


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


L7_POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-l7, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {role: client}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules: {http: [{method: GET, path: "/public$"}]}
"""


def http_status(cilia: Cilia, pod: str, ip: str, path: str) -> tuple[int, str]:
    """(status, Server-side body start) of one GET from `pod` to ip:80."""
    with socket_in_netns(_netns(cilia, pod), socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect((ip, 80))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def test_l7_rules_of_the_backends_apply_through_the_clusterip(cilia: Cilia) -> None:
    cilia.apply(L7_POLICY)
    try:
        vip = _vip(cilia)
        assert eventually(lambda: http_status(cilia, "client", vip, "/public")[0] == 200, 20)
        status, body = http_status(cilia, "client", vip, "/private")
        assert status == 403 and "Access denied" in body
    finally:
        cilia.delete(L7_POLICY)


def test_backends_removed_and_added_leave_established_flows_alone(cilia: Cilia) -> None:
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
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # and after a backend is added
        assert json.loads(s.recv(4096).partition(b"\r\n\r\n")[2])["pod"] == kept


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
    status = cilia.run("status").stdout
    assert "Services:           3 frontends (0 NodePort on none)" in status, status


def test_monitor_names_the_drop_of_a_service_without_backends(cilia: Cilia) -> None:
    mon = MonitorProc(cilia, "-t", "drop")
    try:
        vip = _vip(cilia, "nobody")
        http_get(cilia, "client", vip, timeout=0.5)
        event = mon.wait_for(lambda e: e["reason"] == 158, "a 158 drop")
        assert event["reason-name"] == "Service backend not found"
        assert (event["dst-ip"], event["dst-port"]) == (vip, 80)
    finally:
        mon.stop()


def _backend_count(cilia: Cilia) -> int:
    rows = cilia.client.request("GET", "/service")
    return len(next(r for r in rows if r["frontend"] == f"{_vip(cilia)}:80")["backends"])


def test_backends_follow_readiness(cilia: Cilia, tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    flag.touch()
    cilia.apply(backend("web-d", flag))
    try:
        assert eventually(lambda: _backend_count(cilia) == 4, 20), "a ready pod is a backend"
        flag.unlink()
        assert eventually(lambda: _backend_count(cilia) == 3, 20), "unready: out of the service"
        assert "default/web-d" not in {http_get(cilia, "client", _vip(cilia)) for _ in range(20)}
        flag.touch()
        assert eventually(lambda: _backend_count(cilia) == 4, 20), "ready again: back in"
    finally:
        cilia.delete(backend("web-d", flag))
    assert eventually(lambda: _backend_count(cilia) == 3, 20), "a deleted pod leaves the service"


def test_the_flows_of_a_backend_that_leaves_end(cilia: Cilia, tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    flag.touch()
    cilia.apply(backend("web-e", flag))
    try:
        assert eventually(lambda: _backend_count(cilia) == 4, 20)
        vip, request = _vip(cilia), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        netns = _netns(cilia, "client")
        for _ in range(40):  # a connection the load balancer gave to web-e
            s = socket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(1)
            s.connect((vip, 80))
            s.sendall(request)
            if json.loads(s.recv(4096).partition(b"\r\n\r\n")[2])["pod"] == "default/web-e":
                break
            s.close()
        else:
            pytest.fail("no connection went to web-e")
        with s:
            flag.unlink()  # web-e runs on, but leaves the service
            assert eventually(lambda: _backend_count(cilia) == 3, 20)
            with pytest.raises(OSError):
                s.sendall(request)
                if not s.recv(4096):
                    raise ConnectionResetError("closed")
    finally:
        cilia.delete(backend("web-e", flag))


HANDWRITTEN = """
apiVersion: v1
kind: Service
metadata: {name: by-hand, namespace: default}
spec: {ports: [{name: http, port: 9090}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: by-hand, namespace: default}
subsets: [{addresses: [{ip: IP_A}, {ip: IP_B}], ports: [{name: http, port: 8080}]}]
"""


def test_a_service_without_selector_balances_over_its_handwritten_endpoints(
    cilia: Cilia,
) -> None:
    ips = {n: cilia.client.request("GET", f"/endpoint/default/{n}")["ipv4"] for n in BACKENDS}
    manifest = HANDWRITTEN.replace("IP_A", ips["web-a"]).replace("IP_B", ips["web-b"])
    cilia.apply(manifest)
    try:
        vip = _vip(cilia, "by-hand")
        seen = {http_get(cilia, "client", vip, 9090) for _ in range(20)}
        assert seen == {"default/web-a", "default/web-b"}
    finally:
        cilia.delete(manifest)


def bad(spec: str, name: str = "bad") -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {spec}
---
apiVersion: v1
kind: Pod
metadata: {{name: with-bad-service, namespace: default}}
spec:
  containers: [{{name: c, command: [sleep, "600"]}}]
"""


TAKEN_NODE_PORT = """
apiVersion: v1
kind: Service
metadata: {name: holder, namespace: default}
spec: {type: NodePort, selector: {app: web}, ports: [{port: 81, targetPort: 8080, nodePort: 30999}]}
"""


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        ("{ports: [{port: 70000}]}", "spec.ports[0].port", "65535"),
        ("{ports: [{port: 80, protocol: SCTP}]}", "spec.ports[0].protocol", "TCP"),
        (
            "{ports: [{name: a, port: 80}, {name: a, port: 81}]}",
            "spec.ports[1].name",
            "duplicate",
        ),
        (
            "{ports: [{name: a, port: 80}, {name: b, port: 80}]}",
            "spec.ports[1]",
            "duplicate",
        ),
        ("{clusterIP: 192.168.7.7, ports: [{port: 80}]}", "spec.clusterIP", "range"),
        ("{clusterIP: TAKEN, ports: [{port: 80}]}", "spec.clusterIP", "already"),
        ("{type: NodePort, ports: [{port: 80, nodePort: 20000}]}", "nodePort", "range"),
        ("{type: NodePort, ports: [{port: 80, nodePort: 30999}]}", "nodePort", "already"),
    ],
)
def test_bad_services_are_refused_whole(cilia: Cilia, spec: str, field: str, reason: str) -> None:
    cilia.apply(TAKEN_NODE_PORT)
    try:
        before = cilia.client.request("GET", "/bpf/lb")
        res = cilia.apply(bad(spec.replace("TAKEN", _vip(cilia))), check=False)
        assert res.code != 0
        assert field in res.stderr and reason in res.stderr, res.stderr
        assert "bad" in res.stderr, "the error names the service"
        assert cilia.client.request("GET", "/bpf/lb") == before, "nothing programmed"
        pods = {p["name"] for p in cilia.client.request("GET", "/objects/pods")}
        assert "with-bad-service" not in pods, "nothing of the request applied"
    finally:
        cilia.delete(TAKEN_NODE_PORT)


def test_drift_in_the_lb_maps_is_repaired(cilia: Cilia) -> None:
    vip, before = _vip(cilia), cilia.client.request("GET", "/bpf/lb")
    services = BpfMap(f"{cilia.config.bpf_dir}/maps/cilia_lb_services", LbKey, LbService)
    try:
        real = LbKey(addr(vip), socket.htons(80), socket.IPPROTO_TCP, 0)
        foreign = LbKey(addr("10.96.255.254"), socket.htons(80), socket.IPPROTO_TCP, 0)
        assert services.delete(real)
        services.update(foreign, LbService(999, 0, 0))
        assert eventually(lambda: cilia.client.request("GET", "/bpf/lb") == before, 15)
        assert http_get(cilia, "client", vip) is not None
    finally:
        services.close()


def test_services_and_their_flows_survive_an_agent_restart(cilia: Cilia) -> None:
    vip, before = _vip(cilia), cilia.client.request("GET", "/bpf/lb")
    with socket_in_netns(_netns(cilia, "client"), socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect((vip, 80))
        request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        s.sendall(request)
        first = json.loads(s.recv(4096).partition(b"\r\n\r\n")[2])["pod"]
        os.kill(int(cilia.config.pid_file.read_text()), signal.SIGTERM)
        assert eventually(lambda: not cilia.config.socket_path.exists(), 20.0)
        s.sendall(request)  # no agent: the datapath goes on
        assert json.loads(s.recv(4096).partition(b"\r\n\r\n")[2])["pod"] == first
        cilia.start()
        s.sendall(request)
        assert json.loads(s.recv(4096).partition(b"\r\n\r\n")[2])["pod"] == first
    assert _vip(cilia) == vip
    assert cilia.client.request("GET", "/bpf/lb") == before, "the same ids and slots"


def test_deleting_a_service_removes_its_entries_and_ends_its_flows(cilia: Cilia) -> None:
    vip = _vip(cilia)
    with socket_in_netns(_netns(cilia, "client"), socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        s.connect((vip, 80))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(4096)
        cilia.delete(SERVICE)
        try:
            lb = cilia.client.request("GET", "/bpf/lb")
            assert not [e for e in lb if e["frontend"].startswith(f"{vip}:")]
            ct = cilia.client.request("GET", "/bpf/ct")
            ids = {e["id"] for e in lb}
            assert all(r.get("service-id") in ids for r in ct if "service-id" in r)
            with pytest.raises(OSError):  # the flow ended with its service
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                if not s.recv(4096):
                    raise ConnectionResetError("closed")
        finally:
            cilia.apply(SERVICE)
    assert eventually(lambda: _backend_count(cilia) == 3, 20)
