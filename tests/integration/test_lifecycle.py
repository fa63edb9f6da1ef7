"""Agent life cycle: bad input, failed pods, restart without disruption, clean teardown."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cilia.agent.cleanup import agent_processes
from cilia.datapath.netns import socket_in_netns
from cilia.runtime.probe import probe
from tests.integration.harness import Cilia, leftovers, running_agent
from tests.integration.test_enforcement import DS, RULE1, STARWARS, TF, XW

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]


@pytest.fixture
def cilia(tmp_path: Path) -> Iterator[Cilia]:
    with running_agent(tmp_path) as agent:
        yield agent


BAD_DOCS = {
    "port 0": ('  toPorts: [{ports: [{port: "0"}]}]', "port"),
    "port too big": ('  toPorts: [{ports: [{port: "70000"}]}]', "port"),
    "unknown protocol": ('  toPorts: [{ports: [{port: "80", protocol: ICMP}]}]', "protocol"),
    "bad operator": ("  fromEndpoints: [{matchExpressions: [{key: a, operator: Is}]}]", "operator"),
    "bad cidr": ('  fromCIDR: ["10.0.0.0/33"]', "fromCIDR"),
    "unknown field": ("  fromPods: [{}]", "fromPods"),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCS))
def test_bad_policy_in_a_file_refuses_the_whole_file(cilia: Cilia, case: str) -> None:
    member, field = BAD_DOCS[case]
    text = (
        STARWARS
        + f"""---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: bad, namespace: default}}
spec:
  endpointSelector: {{}}
  ingress:
  - {member.strip()}
"""
    )
    res = cilia.apply(text, check=False)
    assert res.code == 1
    assert "document 4 (CiliumNetworkPolicy default/bad)" in res.stderr, res.stderr
    assert field in res.stderr, res.stderr
    assert cilia.run("get", "pods", "-A", "-o", "json").json()["items"] == []
    assert cilia.client.request("GET", "/policy")["rules"] == []


def test_wrong_api_version_and_kind_are_refused(cilia: Cilia) -> None:
    res = cilia.apply(
        "apiVersion: cilium.io/v1\nkind: CiliumNetworkPolicy\n"
        "metadata: {name: p}\nspec: {endpointSelector: {}}\n",
        check=False,
    )
    assert res.code == 1 and "apiVersion" in res.stderr
    res = cilia.apply("apiVersion: v1\nkind: Deployment\nmetadata: {name: d}\n", check=False)
    assert res.code == 1 and "kind" in res.stderr and "Deployment" in res.stderr


def test_second_file_bad_means_first_file_not_applied(cilia: Cilia, tmp_path: Path) -> None:
    good, bad = tmp_path / "a.yaml", tmp_path / "b.yaml"
    good.write_text(STARWARS)
    bad.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
        "spec: {containers: [{name: c, ports: [{containerPort: 0}]}]}\n"
    )
    res = cilia.run("apply", "-f", str(good), "-f", str(bad), check=False)
    assert res.code == 1 and "containerPort" in res.stderr
    assert cilia.run("get", "pods", "-A", "-o", "json").json()["items"] == []


def test_refused_policy_import_changes_no_map(cilia: Cilia, tmp_path: Path) -> None:
    cilia.apply(STARWARS + "---\n" + RULE1)
    before = cilia.client.request("GET", "/bpf/policy")
    revision = cilia.client.request("GET", "/policy")["revision"]
    rules = tmp_path / "bad.yaml"
    rules.write_text("""
- endpointSelector: {matchLabels: {class: xwing}}
  egress: [{toEndpoints: [{}]}]
- endpointSelector: {}
  ingress: [{fromEndpoints: [{}], fromCIDRSet: [{cidr: 10.0.0.0/8}]}]
""")
    res = cilia.run("policy", "import", str(rules), check=False)
    assert res.code == 1
    assert "Combining FromEndpoints and FromCIDRSet is not supported yet" in res.stderr
    assert "[1]" in res.stderr, "the error names the rule"
    assert cilia.client.request("GET", "/bpf/policy") == before
    assert cilia.client.request("GET", "/policy")["revision"] == revision
    assert cilia.run("policy", "validate", str(rules), check=False).code == 1


def test_failed_pod_leaves_nothing_behind(cilia: Cilia) -> None:
    res = cilia.apply(
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: broken, namespace: default}
        spec:
          containers: [{name: c, command: [/nonexistent/bin], ports: [{containerPort: 80}]}]
    """,
        check=False,
    )
    assert res.code == 1
    assert "pod default/broken: container c: cannot run '/nonexistent/bin'" in res.stderr
    assert "No such file or directory" in res.stderr and "Traceback" not in res.stderr
    assert cilia.run("get", "pods", "-A", "-o", "json").json()["items"] == []
    assert cilia.client.request("GET", "/endpoint") == []
    netns = f"{cilia.config.name_prefix}_default_broken"
    assert not Path(f"/run/netns/{netns}").exists()
    from cilia.agent.endpoint import host_ifname

    assert not Path(
        f"/sys/class/net/{host_ifname(cilia.config.name_prefix, 'default', 'broken')}"
    ).exists()


def test_exec_runs_inside_the_pod(cilia: Cilia) -> None:
    cilia.apply(STARWARS)
    ip = cilia.client.request("GET", f"/endpoint/{XW}")["ipv4"]
    out = cilia.run("exec", XW, "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
    assert f"{ip}/32" in out


def _http_get(sock: socket.socket) -> bool:
    sock.sendall(b"GET /tick HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return False
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
    )
    while len(body) < length:
        body += sock.recv(4096)
    return head.startswith(b"HTTP/1.1 200")


def test_restart_keeps_flows_and_enforcement(cilia: Cilia) -> None:
    cilia.apply(STARWARS + "---\n" + RULE1)
    tf_netns = cilia.client.request("GET", f"/pods/{TF}/netns")["netns"]
    xw_netns = cilia.client.request("GET", f"/pods/{XW}/netns")["netns"]
    ds = cilia.client.request("GET", f"/endpoint/{DS}")
    sock = socket_in_netns(tf_netns, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(2)
    sock.connect((ds["ipv4"], 80))
    assert _http_get(sock)

    stop = threading.Event()
    outcomes: list[bool] = []

    def traffic() -> None:
        while not stop.is_set():
            try:
                outcomes.append(_http_get(sock))
            except OSError:
                outcomes.append(False)
            time.sleep(0.01)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        pid = int(cilia.config.pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
        # No agent: the pinned programs and maps keep enforcing.
        assert asyncio.run(probe(xw_netns, ds["ipv4"], 80, "TCP", 0.6)).result == "denied"
        assert asyncio.run(probe(tf_netns, ds["ipv4"], 80, "TCP", 0.6)).result == "allowed"
        cilia.start()
        assert not cilia.probe(XW, DS) and cilia.probe(TF, DS)
        time.sleep(0.3)
    finally:
        stop.set()
        worker.join()
        sock.close()
    assert outcomes and all(outcomes), f"{outcomes.count(False)} of {len(outcomes)} failed"
    after = cilia.client.request("GET", f"/endpoint/{DS}")
    assert after["ifindex"] == ds["ifindex"], "the device was reused, not re-created"
    assert after["identity"] == ds["identity"]


def test_down_after_a_crash_removes_everything(tmp_path: Path) -> None:
    c = Cilia(tmp_path)
    try:
        c.start()
        c.apply(STARWARS + "---\n" + RULE1)
        devices = c.devices()
        assert len(devices) == 3
        os.kill(int(c.config.pid_file.read_text()), signal.SIGKILL)
    finally:
        left = c.stop()
    assert left == []
    assert all(not Path(f"/sys/class/net/{d}").exists() for d in devices)


SLEEPER = """
apiVersion: v1
kind: Pod
metadata: {name: sleeper, namespace: default}
spec:
  containers: [{name: c, command: [sleep, "600"]}]
"""


def test_down_spares_a_shells_other_children(tmp_path: Path) -> None:
    """A shell that exported CILIA_NAME_PREFIX keeps its other processes: `cilia down`
    stops only what the agent started."""
    c = Cilia(tmp_path)
    bystander = subprocess.Popen(["sleep", "600"], env=c.env)
    try:
        c.start()
        c.apply(SLEEPER)
        started = agent_processes(c.config)
        assert [argv for _, argv in started] == ["sleep 600"], started  # the pod's only
        c.run("down")
        assert bystander.poll() is None, "cilia down killed a process it did not start"
        bystander.kill()
        bystander.wait()
        assert leftovers(c.config, set()) == []  # the pod's sleep went with the agent
    finally:
        if bystander.poll() is None:
            bystander.kill()
            bystander.wait()
        c.stop()
