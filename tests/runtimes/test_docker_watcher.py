"""DockerWatcher against the session's real dockerd and the Cilia driver (fake owner):
labels arrive after the endpoint exists (init first), resync, daemon restart."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest

from cilia.runtime.docker import DockerWatcher, available, security_labels
from cilia.runtime.docker_plugin import endpoint_key
from tests.runtimes.docker_fixture import PluginNetwork, dockerd, plugin_network
from tests.runtimes.fake_owner import wait_for

__all__ = ["dockerd", "plugin_network"]

pytestmark = pytest.mark.integration


@pytest.fixture
def watcher(plugin_network: PluginNetwork) -> Iterator[DockerWatcher]:
    w = DockerWatcher(str(plugin_network.daemon.socket), resync_interval=0.5)
    w.start(plugin_network.owner)
    try:
        assert wait_for(lambda: w.health()["healthy"], timeout=15.0)
        yield w
    finally:
        w.stop()
        plugin_network.daemon.clean_containers()


def _labels_of(net: PluginNetwork, key: str) -> list[str] | None:
    patches = [p for k, p in net.owner.patches if k == key]
    return patches[-1].labels if patches else None


def _endpoint(net: PluginNetwork, name: str, **labels: str) -> str:
    with net.daemon.client() as client:
        c = client.containers.run(
            net.daemon.image,
            ["sleep", "600"],
            name=name,
            network=net.network,
            labels=labels,
            detach=True,
        )
        c.reload()
        return endpoint_key(c.attrs["NetworkSettings"]["Networks"][net.network]["EndpointID"])


def test_labels_arrive_after_init(plugin_network: PluginNetwork, watcher: DockerWatcher) -> None:
    net = plugin_network
    name = f"cilia-test-{secrets.token_hex(3)}"
    key = _endpoint(net, name, app="web", tier="front")
    put = next(r for r in net.owner.puts if f"container-id:{r.container_id}" == key)
    assert put.labels is None  # init identity until the watcher knows the labels
    assert wait_for(lambda: _labels_of(net, key) is not None, timeout=15.0)
    assert _labels_of(net, key) == ["container:app=web", "container:tier=front"]
    assert net.owner.views[key]["name"] == name
    count = len(net.owner.patches)
    time.sleep(1.2)  # resyncs of unchanged labels patch nothing
    assert watcher.resyncs >= 2 and len(net.owner.patches) == count
    assert watcher.health()["healthy"] is True


def test_resync_labels_running_containers(plugin_network: PluginNetwork) -> None:
    net = plugin_network
    key = _endpoint(net, f"cilia-test-{secrets.token_hex(3)}", app="db")
    late = DockerWatcher(str(net.daemon.socket), resync_interval=60)
    try:
        late.start(net.owner)  # started after the container: the first resync finds it
        assert wait_for(lambda: _labels_of(net, key) == ["container:app=db"], timeout=15.0)
    finally:
        late.stop()
        net.daemon.clean_containers()


def test_daemon_restart(plugin_network: PluginNetwork, watcher: DockerWatcher) -> None:
    net = plugin_network
    key = _endpoint(net, f"cilia-test-{secrets.token_hex(3)}", app="api")
    assert wait_for(lambda: _labels_of(net, key) == ["container:app=api"], timeout=15.0)
    net.daemon.restart()  # live restore: the container and its endpoint stay
    assert wait_for(lambda: watcher.health()["healthy"], timeout=30)
    assert key in net.owner.views and key not in net.owner.removed
    with net.daemon.client() as client:
        (c,) = client.containers.list(filters={"label": "app=api"})
        code, out = c.exec_run(["ping", "-c1", "-W3", net.owner.gateway])
        assert code == 0, out
    new = _endpoint(net, f"cilia-test-{secrets.token_hex(3)}", app="new")  # plugin still works
    assert wait_for(lambda: _labels_of(net, new) == ["container:app=new"], timeout=15.0)


def test_available(plugin_network: PluginNetwork, tmp_path: object) -> None:
    assert available(str(plugin_network.daemon.socket))
    assert not available(f"/run/cilia-test-{secrets.token_hex(3)}.sock")


def test_security_labels() -> None:
    assert security_labels({"b": "2", "a": ""}) == ["container:a=", "container:b=2"]
    assert security_labels(None) == []
