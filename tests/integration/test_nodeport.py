"""NodePort on one node: reachable on the node's address from the outside namespace
(world, also when SNATed to a node address on the way in), from the node itself as
host (its sockets are load-balanced), the legacy option keeping its meaning, and a
deleted service leaving no map entry, device program or socket hook behind."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cilia.datapath.netns import socket_in_netns
from tests.integration.harness import Cilia
from tests.integration.test_entities import HOST_NETNS, PODS, Edge, _edge, cnp

pytestmark = [pytest.mark.integration, pytest.mark.toolchain]

NODE_PORT = 30080

SERVICE = f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports:
  - {{name: http, port: 8080, targetPort: 80, nodePort: {NODE_PORT}}}
  - {{name: echo, port: 8081, targetPort: 80, protocol: UDP, nodePort: {NODE_PORT + 1}}}
"""


def _nodeport_edge(tmp: Path, env: dict[str, str]) -> Iterator[Edge]:
    # Only the outside's device gets the NodePort programs (not the machine's own).
    def devices(c: Cilia) -> dict[str, str]:
        return {"CILIA_NODEPORT_DEVICES": json.dumps([f"co{c.tag}"])}

    yield from _edge(tmp, env, devices, SERVICE)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    yield from _nodeport_edge(tmp_path_factory.mktemp("nodeport"), {})


@pytest.fixture
def clean(edge: Edge) -> Iterator[Edge]:
    try:
        yield edge
    finally:
        edge.cilia.run("delete", "-f", "-", input=cnp("np", "[]"), check=False)
        edge.cilia.apply(PODS + "---" + SERVICE)


def _vip(e: Edge) -> str:
    rows = e.cilia.client.request("GET", "/objects/services")
    return str(rows[0]["object"]["spec"]["clusterIP"])


def node_port(e: Edge, src: str) -> bool:
    return e.reach(src, e.outside.host_ip, NODE_PORT)


def test_node_port_reaches_the_backend_from_everywhere_without_policy(clean: Edge) -> None:
    e = clean
    assert node_port(e, "outside") and node_port(e, "snat") and node_port(e, "host")
    assert e.reach("host", _vip(e), 8080), "the node reaches the ClusterIP too"
    assert not e.reach("outside", e.outside.host_ip, NODE_PORT + 1), "only the node port"


def udp_echo(netns: str, ip: str, port: int) -> tuple[str, int] | None:
    """Where the echo of one datagram from `netns` to ip:port came from (None: none),
    from an unconnected socket, so the node's own answers go through recvmsg."""
    with socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        s.sendto(b"ping", (ip, port))
        try:
            data, peer = s.recvfrom(64)
        except OSError:
            return None
    return (str(peer[0]), int(peer[1])) if data == b"ping" else None


def test_a_udp_node_port_answers_from_the_node_port(clean: Edge) -> None:
    e = clean
    frontend = (e.outside.host_ip, NODE_PORT + 1)
    assert udp_echo(e.outside.path, *frontend) == frontend, "from the outside"
    assert udp_echo(HOST_NETNS, *frontend) == frontend, "from the node (socket hooks)"
    e.cilia.apply(cnp("np", "[{fromEntities: [host]}]"))
    assert udp_echo(e.outside.path, *frontend) is None, "the outside is world"
    assert udp_echo(HOST_NETNS, *frontend) == frontend


def test_outside_is_world_and_the_node_is_host(clean: Edge) -> None:
    e = clean
    e.cilia.apply(cnp("np", "[{fromEntities: [world]}]"))
    assert node_port(e, "outside"), "outside traffic through the node port is world"
    assert node_port(e, "snat"), "also when SNATed to a node address on the way in"
    assert not node_port(e, "host"), "the node's own health check is host, not world"
    e.cilia.apply(cnp("np", "[{fromEntities: [host]}]"))
    assert node_port(e, "host")
    assert not node_port(e, "outside") and not node_port(e, "snat")


def test_views_show_the_node_port(clean: Edge) -> None:
    e = clean
    lb = e.cilia.client.request("GET", "/bpf/lb")
    node = next(r for r in lb if r["frontend"] == f"{e.outside.host_ip}:{NODE_PORT}")
    assert node["flags"] == "nodeport" and len(node["backends"]) == 1
    listed = e.cilia.run("get", "services").stdout
    assert f"8080:{NODE_PORT}/TCP,8081:{NODE_PORT + 1}/UDP" in listed, listed
    rows = e.cilia.client.request("GET", "/service")
    assert {r["type"] for r in rows} == {"ClusterIP", "NodePort"}


def test_deleting_the_service_removes_everything_it_owned(clean: Edge) -> None:
    e = clean
    pins = Path(e.cilia.config.bpf_dir) / "links"
    assert any((pins / "netdev").iterdir()) and any((pins / "cgroup").iterdir())
    e.cilia.delete(SERVICE)
    assert e.cilia.client.request("GET", "/bpf/lb") == []
    assert not any((pins / "netdev").iterdir()) and not any((pins / "cgroup").iterdir())
    assert not node_port(e, "outside") and not node_port(e, "host")


def test_legacy_host_allows_world_keeps_its_meaning(tmp_path: Path) -> None:
    for e in _nodeport_edge(tmp_path, {"CILIA_LEGACY_HOST_ALLOWS_WORLD": "true"}):
        e.cilia.apply(cnp("np", "[{fromEntities: [host]}]"))
        assert node_port(e, "host") and node_port(e, "outside") and node_port(e, "snat")
