"""The Cilia libnetwork driver against the session's real dockerd, with a fake owner:
Docker's calls become endpoint and IPAM calls, the container starts with its address
and routes in place, and stop/rm leaves nothing."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import docker.types
import pytest

from cilia.runtime.docker_plugin import DockerNetworkPlugin, PluginError, static_routes
from tests.runtimes.docker_fixture import PluginNetwork, dockerd, plugin_network

__all__ = ["dockerd", "plugin_network"]

pytestmark = pytest.mark.integration


def _name() -> str:
    return f"cilia-test-{secrets.token_hex(3)}"


def test_container_gets_address_routes_and_endpoint(plugin_network: PluginNetwork) -> None:
    net, owner = plugin_network, plugin_network.owner
    before = len(owner.puts)
    script = f"ip -o -4 addr show dev eth0; ip route; ping -c1 -W3 {owner.gateway}"
    with net.daemon.client() as client:
        container = client.containers.run(
            net.daemon.image,
            ["sleep", "600"],
            name=_name(),
            network=net.network,
            labels={"app": "web"},
            detach=True,
        )
        try:
            code, output = container.exec_run(["sh", "-c", script])
            assert isinstance(output, bytes)
            out = output.decode()
            assert code == 0, out
            container.reload()
            settings = container.attrs["NetworkSettings"]
            attached = settings["Networks"][net.network]
            eid, ip = attached["EndpointID"], attached["IPAddress"]
            assert attached["Gateway"] == owner.gateway
            req = owner.puts[before]
            assert req.container_id == f"docker:{eid}"
            assert (req.runtime, req.ipv4, req.labels) == ("docker", ip, None)
            assert req.netns == settings["SandboxKey"]
            assert f"eth0    inet {ip}/32" in out, out
            assert f"default via {owner.gateway} dev eth0" in out, out
            assert "1 packets received" in out, out  # ARP and ICMP through the host veth
            host_dev = owner.views[f"container-id:docker:{eid}"]["interface"]
            assert Path(f"/sys/class/net/{host_dev}").exists()
            assert not Path(f"/sys/class/net/{req.interface_name}").exists()  # moved in
            container.stop(timeout=1)  # a stopped container holds no endpoint
            assert owner.removed[-1] == f"container-id:docker:{eid}"
            assert ip in owner.released and ip in owner.addresses
            assert owner.devices() == [] and not owner.views
            container.start()  # started again: a new endpoint
            container.reload()
            assert container.attrs["NetworkSettings"]["Networks"][net.network]["EndpointID"]
            assert len(owner.views) == 1
        finally:
            container.remove(force=True)
    assert owner.devices() == [] and not owner.views


def test_join_failure_leaves_nothing(plugin_network: PluginNetwork) -> None:
    net, owner = plugin_network, plugin_network.owner
    owner.fail = "agent refuses"
    free = sorted(owner.addresses)
    try:
        with net.daemon.client() as client:
            with pytest.raises(docker.errors.APIError, match="agent refuses"):
                client.containers.run(
                    net.daemon.image, ["true"], name=_name(), network=net.network, remove=True
                )
            for c in client.containers.list(all=True, filters={"network": net.network}):
                c.remove(force=True)
    finally:
        owner.fail = ""
    assert sorted(owner.addresses) == free
    assert owner.devices() == [] and not owner.views


def test_network_needs_the_cilia_ipam(plugin_network: PluginNetwork) -> None:
    name = plugin_network.plugin.name
    with plugin_network.daemon.client() as client:
        with pytest.raises(docker.errors.APIError, match="--ipam-driver"):
            client.networks.create(_name(), driver=name)
        with pytest.raises(docker.errors.APIError, match="no --subnet"):
            pool = docker.types.IPAMPool(subnet="10.99.0.0/24")
            client.networks.create(
                _name(), driver=name, ipam=docker.types.IPAMConfig(driver=name, pool_configs=[pool])
            )
        with pytest.raises(docker.errors.APIError, match="IPv6 is off in the cilia agent"):
            client.networks.create(
                _name(), driver=name, ipam=docker.types.IPAMConfig(driver=name), enable_ipv6=True
            )
        names = {n.name for n in client.networks.list()}
    assert names == {"none", "host", plugin_network.network}


@pytest.fixture
def spare_plugin(plugin_network: PluginNetwork, tmp_path: Path) -> Iterator[DockerNetworkPlugin]:
    plugin = DockerNetworkPlugin(
        plugin_network.owner, "p" + secrets.token_hex(3), tmp_path, gateway="10.0.0.1"
    )
    try:
        yield plugin
    finally:
        plugin.stop()


def test_socket_life_cycle(spare_plugin: DockerNetworkPlugin, tmp_path: Path) -> None:
    assert spare_plugin.health()["healthy"] is False
    stale = socket.socket(socket.AF_UNIX)  # a crashed agent's socket: nobody accepts
    stale.bind(str(spare_plugin.socket_path))
    stale.close()
    spare_plugin.start()
    health = spare_plugin.health()
    assert health["healthy"] is True, health
    assert health["endpoint"] == str(tmp_path / f"{spare_plugin.name}.sock")
    twin = DockerNetworkPlugin(spare_plugin.owner, spare_plugin.name, tmp_path, gateway="x")
    with pytest.raises(PluginError, match="another process"):
        twin.start()
    spare_plugin.stop()
    assert not spare_plugin.socket_path.exists()
    assert spare_plugin.health()["healthy"] is False


def test_static_routes() -> None:
    routes = [
        {"dst": "10.0.0.1/32"},
        {"dst": "0.0.0.0/0", "gw": "10.0.0.1"},
        {"dst": "10.9.0.0/16", "gw": "10.0.0.1"},
    ]
    assert static_routes(routes, "10.0.0.1") == [
        {"Destination": "10.0.0.1/32", "RouteType": 1},
        {"Destination": "10.9.0.0/16", "RouteType": 0, "NextHop": "10.0.0.1"},
    ]
    routes6 = [{"dst": "::/0", "gw": "fe80::1"}, {"dst": "fd00::1"}]
    assert static_routes(routes + routes6, "10.0.0.1", "fe80::1")[2:] == [
        {"Destination": "fd00::1/128", "RouteType": 1},
    ]


def test_unknown_calls_and_bad_bodies(spare_plugin: DockerNetworkPlugin) -> None:
    assert spare_plugin.handle("/NetworkDriver.AllocateNetwork", {})[0] == 404
    status, answer = spare_plugin.handle("/NetworkDriver.Join", {"EndpointID": "e" * 64})
    assert status == 400 and "not created through this driver" in answer["Err"]
    assert spare_plugin.handle("/Plugin.Activate", {}) == (
        200,
        {"Implements": ["NetworkDriver", "IpamDriver"]},
    )
