"""The CRI client and CriWatcher against containerd's CRI plugin (runtime.v1).

The sandboxes here share the node's network (NamespaceMode NODE): the CNI path with a
real agent is in the end-to-end tests. cri-o serves the same API but is not
installable on this machine.
"""

from __future__ import annotations

import secrets

from cilia.runtime import cri
from cilia.runtime.cri import CriWatcher
from tests.runtimes.containerd_fixture import Containerd
from tests.runtimes.fake_owner import FakeOwner, wait_for


def _sandbox(containerd: Containerd, client: cri.CriClient, name: str, ns: str) -> str:
    return client.run_sandbox(
        name,
        ns,
        uid=secrets.token_hex(8),
        labels={"app": "web", "io.kubernetes.pod.name": name},
        network="node",
        cgroup_parent=containerd.cgroup_parent,
    )


def test_sandbox_life_cycle(containerd: Containerd) -> None:
    tag = secrets.token_hex(3)
    assert cri.available(containerd.socket)
    assert not cri.available(str(containerd.base / "nothing.sock"))
    with containerd.cri() as client:
        name, version = client.version()
        assert name == "containerd" and version.startswith("1.")
        sid = _sandbox(containerd, client, f"web-{tag}", f"ns-{tag}")
        try:
            status = client.sandbox_status(sid)
            assert status is not None and status.ready
            assert (status.name, status.namespace) == (f"web-{tag}", f"ns-{tag}")
            assert status.labels["app"] == "web"
            assert sid in {s.id for s in client.list_sandboxes()}
            assert cri.security_labels(status) == [
                "k8s:app=web",
                f"k8s:io.kubernetes.pod.namespace=ns-{tag}",
            ]
            client.stop_sandbox(sid)
            status = client.sandbox_status(sid)
            assert status is not None and not status.ready
        finally:
            client.stop_sandbox(sid)
            client.remove_sandbox(sid)
        assert client.sandbox_status(sid) is None
        assert client.sandbox_status("no-such-sandbox") is None


def test_watcher_labels_sandbox_endpoints(containerd: Containerd) -> None:
    tag = secrets.token_hex(3)
    owner = FakeOwner()
    watcher = CriWatcher(containerd.socket, poll_interval=0.1)
    with containerd.cri() as client:
        sid = _sandbox(containerd, client, f"db-{tag}", f"ns-{tag}")
        try:
            owner.add(sid)
            owner.add(f"{containerd.namespace}-plain-{tag}")  # a ctr container: no sandbox
            watcher.start(owner)
            key = f"container-id:{sid}"
            assert wait_for(lambda: owner.last_patch(key) is not None)
            patch = owner.last_patch(key)
            assert patch is not None
            assert patch.labels == ["k8s:app=web", f"k8s:io.kubernetes.pod.namespace=ns-{tag}"]
            assert (patch.namespace, patch.name) == (f"ns-{tag}", f"db-{tag}")
            assert wait_for(lambda: watcher.health()["healthy"])
            assert [k for k, _ in owner.patches] == [key]  # once, and only the sandbox
        finally:
            watcher.stop()
            client.stop_sandbox(sid)
            client.remove_sandbox(sid)
