"""HTTP L7 policy on real pods: transparent redirection to Envoy by the datapath."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cilia.datapath.netns import socket_in_netns
from cilia.datapath.proxy_device import proxy_device_name
from tests.integration.harness import Cilia, running_agent
from tests.integration.observe_helpers import MonitorProc

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]

PODS = """
apiVersion: v1
kind: Pod
metadata: {name: leia, namespace: default, labels: {app: leia}}
spec:
  serviceAccountName: leia
  containers: [{name: web, ports: [{containerPort: 80}, {containerPort: 81}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: luke, namespace: default, labels: {app: luke}}
spec:
  serviceAccountName: luke
  containers: [{name: web, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: han, namespace: default, labels: {app: han}}
spec:
  containers: [{name: web, ports: [{containerPort: 80}]}]
"""

SA_POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: k8s-svc-account, namespace: default}
spec:
  endpointSelector:
    matchLabels: {io.cilium.k8s.policy.serviceaccount: leia}
  ingress:
  - fromEndpoints:
    - matchLabels: {io.cilium.k8s.policy.serviceaccount: luke}
    toPorts:
    - ports: [{port: '80', protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/public$"}
        - {method: POST, path: "/v1/request-landing", headers: ["X-Has-Force: true"]}
"""

EGRESS_POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: han-out, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: han}}
  egress:
  - toEndpoints: [{matchLabels: {app: luke}}]
    toPorts:
    - ports: [{port: '80', protocol: TCP}]
      rules: {http: [{method: GET, path: "/docs/.*"}]}
"""


def http(
    c: Cilia,
    src: str,
    dst: str,
    requests: list[tuple[str, str, dict[str, str]]],
    port: int = 80,
    family: str = "ipv4",
) -> list[int | None]:
    """Send requests on one keep-alive connection from src (a pod, or "" for the node) to
    dst's `family` ("ipv4" or "ipv6") address; status codes (None: no connection)."""
    ip = c.client.request("GET", f"/endpoint/{dst}")[family]
    af = socket.AF_INET6 if family == "ipv6" else socket.AF_INET
    if src:
        netns = c.client.request("GET", f"/pods/{src}/netns")["netns"]
        sock = socket_in_netns(netns, af, socket.SOCK_STREAM)
    else:
        sock = socket.socket(af, socket.SOCK_STREAM)
    sock.settimeout(3)
    try:
        sock.connect((ip, port))
    except OSError:
        sock.close()
        return [None] * len(requests)
    codes: list[int | None] = []
    with sock, sock.makefile("rb") as f:
        for method, path, headers in requests:
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            host = f"[{ip}]" if af == socket.AF_INET6 else ip
            head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n"
            sock.sendall(f"{head}{extra}\r\n".encode())
            status = f.readline().split()
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = f.read(length)
            codes.append(int(status[1]))
            if codes[-1] == 403:
                assert body == b"Access denied", body
    return codes


@pytest.fixture(scope="module")
def cilia(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cilia]:
    with running_agent(tmp_path_factory.mktemp("l7")) as agent:
        agent.apply(PODS)
        yield agent


def test_service_account_http_policy(cilia: Cilia) -> None:
    c = cilia
    c.apply(SA_POLICY)
    monitor = MonitorProc(c, "-t", "l7")
    try:
        codes = http(
            c,
            "default/luke",
            "default/leia",
            [
                ("GET", "/public", {}),
                ("GET", "/public/x", {}),  # the path regex must match the whole path
                ("GET", "/private", {}),
                ("PUT", "/public", {}),
                ("POST", "/v1/request-landing", {"X-Has-Force": "true"}),
                ("POST", "/v1/request-landing", {}),
                ("GET", "/public", {}),  # the keep-alive connection is checked per request
            ],
        )
        assert codes == [200, 403, 403, 403, 200, 403, 200]
        denied = monitor.wait_for(
            lambda e: e.get("verdict") == "denied" and e.get("path") == "/private", "an L7 event"
        )
        leia = c.client.request("GET", "/endpoint/default/leia")
        luke = c.client.request("GET", "/endpoint/default/luke")
        assert (denied["src-identity"], denied["dst-identity"]) == (
            luke["identity"],
            leia["identity"],
        )
        assert denied["endpoint"] == leia["id"] and denied["method"] == "GET"
        samples = {
            s["name"]: s["value"]
            for s in c.client.request("GET", "/metrics")
            if s["name"].startswith("cilia_policy_l7_")
        }
        assert samples["cilia_policy_l7_denied_total"] >= 4
        assert samples["cilia_policy_l7_forwarded_total"] >= 3
        assert http(c, "default/han", "default/leia", [("GET", "/public", {})]) == [None]
        assert c.probe("default/luke", "default/leia", 81) is False, "port 81 is not allowed"
        status = c.run("status", "--all-redirects", "-o", "json").json()
        (redirect,) = status["redirect-list"]
        assert (redirect["direction"], redirect["port"], redirect["parser"]) == (
            "ingress",
            80,
            "http",
        )
    finally:
        monitor.stop()
        c.delete(SA_POLICY)
    assert http(c, "default/han", "default/leia", [("DELETE", "/x", {})]) == [200]
    assert c.run("status", "--all-redirects", "-o", "json").json()["redirect-list"] == []


def test_tracing_an_endpoint_keeps_its_l7_redirect(cilia: Cilia) -> None:
    """TraceNotification rewrites the endpoint's entries: the proxy ports must stay."""
    c = cilia
    c.apply(SA_POLICY)
    try:
        for enabled in ("true", "false"):
            c.run("endpoint", "config", "default/leia", f"TraceNotification={enabled}")
            requests: list[tuple[str, str, dict[str, str]]] = [
                ("GET", "/public", {}),
                ("GET", "/private", {}),
            ]
            assert http(c, "default/luke", "default/leia", requests) == [200, 403], enabled
    finally:
        c.delete(SA_POLICY)


def test_egress_http_policy(cilia: Cilia) -> None:
    c = cilia
    c.apply(EGRESS_POLICY)
    try:
        assert http(
            c,
            "default/han",
            "default/luke",
            [("GET", "/docs/index", {}), ("POST", "/docs/index", {}), ("GET", "/admin", {})],
        ) == [200, 403, 403]
        assert http(c, "default/han", "default/leia", [("GET", "/docs/x", {})]) == [None]
    finally:
        c.delete(EGRESS_POLICY)


LUKE_INGRESS = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: luke-in, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: luke}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: han}}]
    toPorts:
    - ports: [{port: '80', protocol: TCP}]
      rules: {http: [{path: "/docs/public.*"}, {method: DELETE}]}
"""


def test_egress_and_destination_ingress_rules_both_apply(cilia: Cilia) -> None:
    """han's egress proxy also enforces luke's ingress rules (one proxy sees the flow)."""
    c = cilia
    c.apply(EGRESS_POLICY)
    c.apply(LUKE_INGRESS)
    try:
        requests = [
            ("GET", "/docs/public/a", {}),  # both allow
            ("GET", "/docs/secret", {}),  # han's egress allows, luke's ingress refuses
            ("DELETE", "/x", {}),  # luke's ingress allows, han's egress refuses
        ]
        assert http(c, "default/han", "default/luke", requests) == [200, 403, 403]
        c.delete(EGRESS_POLICY)  # luke's own proxy now judges alone
        assert http(c, "default/han", "default/luke", requests) == [200, 403, 200]
        c.apply(EGRESS_POLICY)
        c.delete(LUKE_INGRESS)  # and back: han's egress rules alone
        assert http(c, "default/han", "default/luke", requests) == [200, 200, 403]
    finally:
        c.delete(EGRESS_POLICY)
        c.delete(LUKE_INGRESS)


HOST_POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: host-in, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: leia}}
  ingress:
  - fromEntities: [host]
    toPorts:
    - ports: [{port: '80', protocol: TCP}]
      rules: {http: [{method: GET, path: "/healthz"}]}
"""


def test_node_traffic_to_an_l7_port_goes_through_the_proxy(cilia: Cilia) -> None:
    """The node's own processes never cross a pod's tc ingress: their packets go round
    through the proxy device and meet the same rules."""
    c = cilia
    c.apply(HOST_POLICY)
    monitor = MonitorProc(c, "-t", "l7")
    try:
        requests: list[tuple[str, str, dict[str, str]]] = [
            ("GET", "/healthz", {}),
            ("GET", "/secret", {}),
            ("GET", "/healthz", {}),
        ]
        assert http(c, "", "default/leia", requests) == [200, 403, 200]
        denied = monitor.wait_for(lambda e: e.get("path") == "/secret", "the L7 event")
        assert denied["src-identity"] == 1 and denied["verdict"] == "denied"
        assert http(c, "default/luke", "default/leia", requests) == [None] * 3, "L3 still applies"
        # The proxy device is kernel state like any other: a controller repairs it.
        device = proxy_device_name(c.config.name_prefix)
        assert c.run("status", "-o", "json").json()["datapath"]["proxy-device"] == device
        subprocess.run(["ip", "link", "del", device], check=True)
        deadline = time.monotonic() + 30
        while http(c, "", "default/leia", requests[:1]) != [200]:
            assert time.monotonic() < deadline, f"{device} was not re-created"
            time.sleep(0.5)
    finally:
        monitor.stop()
        c.delete(HOST_POLICY)


def _time_wait(local: tuple[str, int], remote: tuple[str, int]) -> bool:
    """Whether the node holds a TCP socket local -> remote in TIME_WAIT."""

    def hexaddr(ip: str, port: int) -> str:
        return f"{socket.inet_aton(ip)[::-1].hex().upper()}:{port:04X}"

    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    want = (hexaddr(*local), hexaddr(*remote), "06")
    return any(tuple(row.split()[1:4]) == want for row in rows)


def test_a_new_connection_on_a_time_wait_tuple_reaches_the_proxy(cilia: Cilia) -> None:
    """Envoy closes first on `Connection: close`, so its side of the tuple stays in
    TIME_WAIT; a client reusing the source port must reach the proxy's listener, not
    the dead socket (which would only ACK its SYN and leave it in SYN-SENT)."""
    c = cilia
    c.apply(SA_POLICY)
    try:
        netns = c.client.request("GET", "/pods/default/luke/netns")["netns"]
        luke = c.client.request("GET", "/endpoint/default/luke")["ipv4"]
        leia = c.client.request("GET", "/endpoint/default/leia")["ipv4"]
        port = 40000 + int.from_bytes(os.urandom(2), "big") % 20000
        for attempt in range(2):
            sock = socket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM)
            with sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.settimeout(3)
                sock.bind((luke, port))
                sock.connect((leia, 80))
                sock.sendall(
                    f"GET /public HTTP/1.1\r\nHost: {leia}\r\nConnection: close\r\n\r\n".encode()
                )
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
            assert data.startswith(b"HTTP/1.1 200"), (attempt, data[:80])
            assert _time_wait((leia, 80), (luke, port)), "the proxy's side closed first"
    finally:
        c.delete(SA_POLICY)


def test_stopping_the_agent_stops_envoy(cilia: Cilia) -> None:
    c = cilia
    c.apply(SA_POLICY)
    envoy = subprocess.run(
        ["pgrep", "-f", f"{c.config.state_dir}/proxy/envoy"], capture_output=True, text=True
    ).stdout.split()
    assert len(envoy) == 1
    agent = int(c.config.pid_file.read_text())
    os.kill(agent, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{envoy[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (
        not Path(f"/proc/{envoy[0]}/cmdline").exists()
        or not Path(f"/proc/{envoy[0]}/cmdline").read_bytes()
    ), "SIGTERM stops the agent's Envoy"
    c.start()  # the restarted agent brings the redirect (and Envoy) back
    assert http(c, "default/luke", "default/leia", [("GET", "/public", {})]) == [200]
    c.delete(SA_POLICY)
