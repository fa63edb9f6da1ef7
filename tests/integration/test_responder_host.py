"""One responder host serves every built-in responder of a node: per-pod start and stop,
restarted (and the containers counted as restarted) when it dies, kept across an agent
restart, stopped by `cilia down`."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cilia.datapath.netns import socket_in_netns
from tests.integration.harness import Cilia, answering_pod, eventually, running_agent

pytestmark = pytest.mark.integration

PODS = ("web-a", "web-b", "web-c")


def _pod(name: str) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: web}}}}
spec:
  containers:
  - {{name: http, ports: [{{containerPort: 80}}, {{containerPort: 53, protocol: UDP}}]}}
"""


CLIENT = """
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default}
spec:
  containers: [{name: c, command: [sleep, "600"]}]
"""


@pytest.fixture(scope="module")
def cilia(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cilia]:
    with running_agent(tmp_path_factory.mktemp("responders")) as agent:
        agent.apply("---\n".join([CLIENT, *(_pod(n) for n in PODS)]))
        yield agent


def _processes(cilia: Cilia, module: str) -> list[int]:
    """PIDs of this agent's processes running `python -m MODULE`."""
    marker = f"CILIA_NAME_PREFIX={cilia.config.name_prefix}\0".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if marker in environ and module.encode() in argv:
            found.append(int(pid))
    return found


def _client_netns(cilia: Cilia) -> str:
    return str(cilia.client.request("GET", "/pods/default/client/netns")["netns"])


def _http_pod(cilia: Cilia, name: str) -> str | None:
    """The pod named in the HTTP answer of `name`'s port 80 (None: no answer)."""
    ip = cilia.client.request("GET", f"/endpoint/default/{name}")["ipv4"]
    return answering_pod(_client_netns(cilia), ip, 80)


def _udp_echo(cilia: Cilia, name: str) -> bool:
    ip = cilia.client.request("GET", f"/endpoint/default/{name}")["ipv4"]
    with socket_in_netns(_client_netns(cilia), socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(b"ping", (ip, 53))
        try:
            return s.recv(64) == b"ping"
        except OSError:
            return False


def _restarts(cilia: Cilia, name: str) -> int:
    rows = cilia.client.request("GET", "/objects/pods")
    return int(next(r for r in rows if r["name"] == name)["restarts"])


def test_one_process_serves_every_pod(cilia: Cilia) -> None:
    assert len(_processes(cilia, "cilia.runtime.responders")) == 1
    assert _processes(cilia, "cilia.runtime.responder") == []
    for name in PODS:
        assert _http_pod(cilia, name) == f"default/{name}"
        assert _udp_echo(cilia, name)


def _sockets(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(os.readlink(fds / fd).startswith("socket:") for fd in os.listdir(fds))


def test_deleting_a_pod_closes_only_its_sockets(cilia: Cilia) -> None:
    (host,) = _processes(cilia, "cilia.runtime.responders")
    before = _sockets(host)
    cilia.delete(_pod("web-c"))
    try:
        assert _sockets(host) == before - 2  # its TCP listener and UDP socket
        assert _http_pod(cilia, "web-a") == "default/web-a"
        assert _http_pod(cilia, "web-b") == "default/web-b"
        assert _processes(cilia, "cilia.runtime.responders") == [host]
    finally:
        cilia.apply(_pod("web-c"))
    assert _http_pod(cilia, "web-c") == "default/web-c"
    assert _sockets(host) == before


TWINS = """
apiVersion: v1
kind: Pod
metadata: {name: twins, namespace: default}
spec:
  containers:
  - {name: one, ports: [{containerPort: 80}]}
  - {name: two, ports: [{containerPort: 80}]}
"""


def test_a_port_taken_twice_refuses_the_pod_and_leaves_no_socket(cilia: Cilia) -> None:
    (host,) = _processes(cilia, "cilia.runtime.responders")
    before = _sockets(host)
    res = cilia.apply(TWINS, check=False)
    assert res.code == 1
    assert "pod default/twins: container two: built-in responder:" in res.stderr
    assert "Address already in use" in res.stderr
    assert all(row["name"] != "twins" for row in cilia.client.request("GET", "/objects/pods"))
    assert _sockets(host) == before, "container one's listener was closed again"
    assert _http_pod(cilia, "web-a") == "default/web-a"


def test_a_killed_host_is_restarted_and_its_containers_counted(cilia: Cilia) -> None:
    (host,) = _processes(cilia, "cilia.runtime.responders")
    before = {name: _restarts(cilia, name) for name in PODS}
    os.kill(host, signal.SIGKILL)
    assert eventually(lambda: all(_http_pod(cilia, n) == f"default/{n}" for n in PODS), 15.0)
    (again,) = _processes(cilia, "cilia.runtime.responders")
    assert again != host
    assert eventually(lambda: all(_restarts(cilia, n) == before[n] + 1 for n in PODS), 15.0)
    assert _restarts(cilia, "client") == 0


def test_the_host_outlives_an_agent_restart(cilia: Cilia) -> None:
    (host,) = _processes(cilia, "cilia.runtime.responders")
    before = {name: _restarts(cilia, name) for name in PODS}
    os.kill(int(cilia.config.pid_file.read_text()), signal.SIGTERM)
    assert eventually(lambda: not cilia.config.socket_path.exists(), 20.0)
    cilia.start()
    assert _processes(cilia, "cilia.runtime.responders") == [host]
    for name in PODS:
        assert _http_pod(cilia, name) == f"default/{name}"
    time.sleep(2.5)  # two controller rounds: nothing is restarted
    assert {name: _restarts(cilia, name) for name in PODS} == before


def test_down_stops_the_host(tmp_path: Path) -> None:
    c = Cilia(tmp_path)
    try:
        c.start()
        c.apply(_pod("solo"))
        assert len(_processes(c, "cilia.runtime.responders")) == 1
        os.kill(int(c.config.pid_file.read_text()), signal.SIGKILL)
    finally:
        left = c.stop()
    assert left == []
    assert _processes(c, "cilia.runtime.responders") == []
