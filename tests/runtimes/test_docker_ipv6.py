"""Docker containers on a dual-stack agent: a network made with `--ipv6` gives each
container an IPv6 address of the agent's range next to its IPv4 one, policy holds for
both families on real packets, an agent restart keeps them, and removing the
containers leaves no IPv6 route; a network without `--ipv6` stays IPv4 only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import secrets
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker.models.containers
import docker.types
import pytest
from pyroute2 import IPRoute

from cilia.datapath.pod_network import GATEWAY_IPV6
from cilia.identity.reserved import INIT
from cilia.runtime.docker_plugin import endpoint_key
from cilia.runtime.probe import probe
from tests.integration.harness import Cilia, running_agent
from tests.runtimes.docker_fixture import DockerDaemon, dockerd
from tests.runtimes.fake_owner import wait_for

__all__ = ["dockerd"]

pytestmark = pytest.mark.integration

PODS = """
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: default, labels: {role: server}}
spec: {containers: [{name: s, ports: [{containerPort: 80}, {containerPort: 81}]}]}
"""

POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: default}
spec:
  endpointSelector: {matchLabels: {role: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {"container:role": client}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""


@dataclass
class DualStack:
    daemon: DockerDaemon
    agent: Cilia
    network: str
    """Made with --ipv6."""
    network4: str
    """Made without."""

    def run(self, network: str, role: str) -> docker.models.containers.Container:
        """A container serving HTTP on port 80."""
        with self.daemon.client() as client:
            c = client.containers.run(
                self.daemon.image,
                ["httpd", "-f", "-p", "80", "-h", "/tmp"],
                name=f"cilia-test-{secrets.token_hex(3)}-{role}",
                network=network,
                labels={"role": role},
                detach=True,
            )
        c.reload()
        return c

    def view(self, c: docker.models.containers.Container, network: str) -> dict[str, Any]:
        eid = c.attrs["NetworkSettings"]["Networks"][network]["EndpointID"]
        view: dict[str, Any] = self.agent.client.request("GET", f"/endpoint/{endpoint_key(eid)}")
        return view


def _reaches(src: str, dst: str, port: int = 80) -> bool:
    return asyncio.run(probe(src, dst, port, "TCP", 1.0)).result == "allowed"


def _netns(c: docker.models.containers.Container) -> str:
    return str(c.attrs["NetworkSettings"]["SandboxKey"])


def _routes6_to(ips: set[str]) -> list[str]:
    """The host's IPv6 routes (any table) to one of *ips*."""
    with IPRoute() as ipr:
        dsts = [r.get("RTA_DST") for r in ipr.route("dump", family=socket.AF_INET6)]
    return [d for d in dsts if d in ips]


@pytest.fixture(scope="module")
def dual(dockerd: DockerDaemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DualStack]:
    name = f"c6{secrets.token_hex(3)}"
    env = {
        "CILIA_CONTAINER_RUNTIME": '["docker"]',
        "CILIA_CONTAINER_RUNTIME_ENDPOINT": json.dumps({"docker": str(dockerd.socket)}),
        "CILIA_DOCKER_PLUGIN_NAME": name,
    }
    with running_agent(tmp_path_factory.mktemp("agent"), dual_stack=True, **env) as agent:
        try:
            ipam = docker.types.IPAMConfig(driver=name)
            with dockerd.client() as client:
                client.networks.create(name, driver=name, ipam=ipam, enable_ipv6=True)
                client.networks.create(f"{name}-4", driver=name, ipam=ipam)
            yield DualStack(dockerd, agent, name, f"{name}-4")
        finally:
            dockerd.clean()


def test_containers_get_ipv6_and_policy_holds_for_both_families(dual: DualStack) -> None:
    agent = dual.agent
    agent.apply(PODS)
    agent.apply(POLICY)
    containers = {role: dual.run(dual.network, role) for role in ("client", "other")}
    views = {role: dual.view(c, dual.network) for role, c in containers.items()}
    for role, c in containers.items():
        attached = c.attrs["NetworkSettings"]["Networks"][dual.network]
        view = views[role]
        assert view["ipv6"] and attached["GlobalIPv6Address"] == view["ipv6"], attached
        assert attached["IPAddress"] == view["ipv4"]
        assert ipaddress.ip_address(view["ipv6"]) in ipaddress.ip_network(agent.config.ipv6_range)
        assert attached["IPv6Gateway"] == GATEWAY_IPV6
        key = c.attrs["NetworkSettings"]["Networks"][dual.network]["EndpointID"]
        assert wait_for(
            lambda k=key: (
                agent.client.request("GET", f"/endpoint/{endpoint_key(k)}")["identity"] != INIT
            ),
            timeout=20.0,
        )
    server = agent.client.request("GET", "/endpoint/default/server")
    server_ns = agent.client.request("GET", "/pods/default/server/netns")["netns"]
    families = (server["ipv4"], server["ipv6"])

    def verdicts() -> dict[tuple[str, str, int], bool]:
        return {
            (role, ip, port): _reaches(_netns(c), ip, port)
            for role, c in containers.items()
            for ip in families
            for port in (80, 81)
        }

    want = {(role, ip, port): role == "client" and port == 80 for role, ip, port in verdicts()}
    assert wait_for(lambda: verdicts() == want, timeout=20.0), verdicts()
    for view in views.values():  # the pod reaches the containers over IPv6 too
        assert _reaches(server_ns, view["ipv6"])

    # The agent killed and started again: the containers keep their IPv6 and verdicts.
    os.kill(int(agent.config.pid_file.read_text()), signal.SIGKILL)
    agent.start()
    assert {role: dual.view(c, dual.network)["ipv6"] for role, c in containers.items()} == {
        role: v["ipv6"] for role, v in views.items()
    }
    assert verdicts() == want
    assert _reaches(server_ns, views["client"]["ipv6"])
    late = dual.run(dual.network, "late")  # the restarted agent knows which are taken
    taken = {v["ipv6"] for v in views.values()}
    assert dual.view(late, dual.network)["ipv6"] not in taken | {""}
    late.remove(force=True)

    ips6 = {v["ipv6"] for v in views.values()}
    assert len(_routes6_to(ips6)) == 2
    for c in containers.values():
        c.remove(force=True)
    assert _routes6_to(ips6) == []
    agent.delete(POLICY)
    agent.delete(PODS)


def test_network_without_ipv6_stays_ipv4(dual: DualStack) -> None:
    c = dual.run(dual.network4, "plain")
    try:
        attached = c.attrs["NetworkSettings"]["Networks"][dual.network4]
        view = dual.view(c, dual.network4)
        assert attached["IPAddress"] == view["ipv4"]
        assert (attached["GlobalIPv6Address"], view["ipv6"]) == ("", "")
    finally:
        c.remove(force=True)
