"""Docker containers on the Cilia network of a real agent: address, identity (init until
the watcher brings the labels), policy shared with local pods, real traffic both ways,
a daemon restart under running containers, and nothing left after stop and rm.

The agent itself serves the driver (a per-run plugin name) and runs the watcher:
`--container-runtime docker` with the test daemon's socket.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
import docker.models.containers
import docker.types
import pytest

from cilia.cli.client import ApiError
from cilia.identity.reserved import INIT
from cilia.runtime.docker_plugin import endpoint_key
from cilia.runtime.owner import IPV6_OFF
from cilia.runtime.probe import probe
from tests.integration.harness import Cilia, running_agent
from tests.runtimes.docker_fixture import DockerDaemon, dockerd
from tests.runtimes.fake_owner import wait_for

__all__ = ["dockerd"]

pytestmark = pytest.mark.integration

PODS = """
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {role: client}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: default, labels: {role: server}}
spec: {containers: [{name: s, ports: [{containerPort: 80}]}]}
"""

POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {"container:app": web}}
  ingress:
    - fromEndpoints:
        - matchLabels: {role: client}
        - matchLabels: {"container:role": client}
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""


@dataclass
class DockerOnAgent:
    daemon: DockerDaemon
    agent: Cilia
    network: str

    def run(self, name: str, **labels: str) -> docker.models.containers.Container:
        """A container serving HTTP on port 80 on the Cilia network."""
        with self.daemon.client() as client:
            c = client.containers.run(
                self.daemon.image,
                ["httpd", "-f", "-p", "80", "-h", "/tmp"],
                name=f"cilia-test-{secrets.token_hex(3)}-{name}",
                network=self.network,
                labels=labels,
                detach=True,
            )
        c.reload()
        return c

    def key(self, c: docker.models.containers.Container) -> str:
        return endpoint_key(c.attrs["NetworkSettings"]["Networks"][self.network]["EndpointID"])

    def view(self, key: str) -> dict[str, Any]:
        view: dict[str, Any] = self.agent.client.request("GET", f"/endpoint/{key}")
        return view

    def reaches(self, src: str, dst_ip: str) -> bool:
        """TCP to port 80 from the namespace at *src* gets an HTTP answer."""
        return asyncio.run(probe(src, dst_ip, 80, "TCP", 1.0)).result == "allowed"

    def pod(self, name: str) -> tuple[str, str]:
        """(netns path, address) of a local pod."""
        netns = self.agent.client.request("GET", f"/pods/default/{name}/netns")["netns"]
        view = self.agent.client.request("GET", f"/endpoint/default/{name}")
        return str(netns), str(view["ipv4"])


@pytest.fixture(scope="module")
def on_agent(
    dockerd: DockerDaemon, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DockerOnAgent]:
    name = f"ca{secrets.token_hex(3)}"
    env = {
        "CILIA_CONTAINER_RUNTIME": '["docker"]',
        "CILIA_CONTAINER_RUNTIME_ENDPOINT": json.dumps({"docker": str(dockerd.socket)}),
        "CILIA_DOCKER_PLUGIN_NAME": name,
    }
    with running_agent(tmp_path_factory.mktemp("agent"), **env) as agent:
        try:
            with dockerd.client() as client:
                client.networks.create(name, driver=name, ipam=docker.types.IPAMConfig(driver=name))
            yield DockerOnAgent(dockerd, agent, name)
        finally:
            dockerd.clean()


def test_containers_and_pods_under_one_policy(on_agent: DockerOnAgent) -> None:
    env = on_agent
    env.agent.apply(PODS)
    env.agent.apply(POLICY)
    web = env.run("web", app="web")
    other = env.run("other", app="other")
    dclient = env.run("client", role="client")
    web_key = env.key(web)
    first = env.view(web_key)
    assert first["runtime"] == "docker"
    web_ip = web.attrs["NetworkSettings"]["Networks"][env.network]["IPAddress"]
    assert first["ipv4"] == web_ip
    assert first["addressing"]["gateway"] == env.agent.config.host_router_ip
    other_ns = other.attrs["NetworkSettings"]["SandboxKey"]

    def watcher_healthy() -> bool:
        lines = env.agent.client.request("GET", "/status")["container-runtimes"]
        return all(line["healthy"] for line in lines) and len(lines) == 2

    assert watcher_healthy()
    assert wait_for(lambda: env.view(web_key)["identity"] != INIT, timeout=20.0)
    view = env.view(web_key)
    assert "container:app=web" in view["labels"], view
    assert view["pod"] == f"docker/{web.name}"
    assert wait_for(lambda: env.view(env.key(dclient))["identity"] != INIT, timeout=20.0)
    assert wait_for(lambda: env.view(env.key(other))["identity"] != INIT, timeout=20.0)

    client_ns, _ = env.pod("client")
    server_ns, server_ip = env.pod("server")
    dclient_ns = dclient.attrs["NetworkSettings"]["SandboxKey"]
    web_ns = web.attrs["NetworkSettings"]["SandboxKey"]
    assert env.reaches(client_ns, web_ip)  # local pod -> container: allowed
    assert env.reaches(dclient_ns, web_ip)  # container -> container: allowed
    assert wait_for(
        lambda: not env.reaches(other_ns, web_ip), timeout=20.0
    )  # denied since its labels came
    assert env.reaches(web_ns, server_ip)  # container -> local pod
    assert env.reaches(server_ns, web_ip) is False  # pod not role=client: denied

    # The daemon restarts under running containers (live restore): flows go on,
    # the endpoints stay, the watcher reconnects.
    env.daemon.restart()
    assert wait_for(watcher_healthy, timeout=30)
    assert env.reaches(client_ns, web_ip)
    assert not env.reaches(other_ns, web_ip)
    assert env.view(web_key)["identity"] == view["identity"]

    devices = {env.view(env.key(c))["interface"] for c in (web, other, dclient)}
    web.stop(timeout=1)
    assert not any(
        v["container-id"] == web_key.split(":", 1)[1]
        for v in env.agent.client.request("GET", "/endpoint")
    )
    for c in (web, other, dclient):
        c.remove(force=True)
    views = env.agent.client.request("GET", "/endpoint")
    assert {v["runtime"] for v in views} == {"local"}
    assert not any(Path(f"/sys/class/net/{d}").exists() for d in devices)
    env.agent.delete(POLICY)
    env.agent.delete(PODS)


def test_ipv6_network_needs_ipv6_in_the_agent(on_agent: DockerOnAgent) -> None:
    name, network = f"cilia-test-{secrets.token_hex(3)}", on_agent.network
    with on_agent.daemon.client() as client:
        with pytest.raises(docker.errors.APIError, match=re.escape(IPV6_OFF)):
            client.networks.create(
                name, driver=network, ipam=docker.types.IPAMConfig(driver=network), enable_ipv6=True
            )
        assert name not in {n.name for n in client.networks.list()}
    with pytest.raises(ApiError, match=re.escape(IPV6_OFF)):
        on_agent.agent.client.request("POST", "/ipam", params={"family": "ipv6"})
