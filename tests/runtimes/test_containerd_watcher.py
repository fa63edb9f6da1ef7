"""ContainerdWatcher against the real private containerd, with a recording fake owner."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from cilia.runtime.containerd import ContainerdWatcher
from tests.runtimes.containerd_fixture import Containerd
from tests.runtimes.fake_owner import FakeOwner, wait_for


@pytest.fixture
def watched(containerd: Containerd) -> Iterator[tuple[ContainerdWatcher, FakeOwner]]:
    owner = FakeOwner()
    watcher = ContainerdWatcher(containerd.socket, [containerd.namespace], resync_interval=60.0)
    try:
        yield watcher, owner
    finally:
        watcher.stop()


def _run(containerd: Containerd, cid: str, *labels: str) -> None:
    args = [a for label in labels for a in ("--label", label)]
    containerd.ctr("run", "-d", *args, containerd.image, cid)


def _labels(owner: FakeOwner, key: str) -> list[str] | None:
    patch = owner.last_patch(key)
    return None if patch is None else patch.labels


def test_labels_at_start_change_and_removal(
    containerd: Containerd, watched: tuple[ContainerdWatcher, FakeOwner]
) -> None:
    watcher, owner = watched
    tag = secrets.token_hex(3)
    early, late = f"early-{tag}", f"late-{tag}"
    key = f"container-id:{containerd.namespace}-{late}"
    try:
        _run(containerd, early, "app=old")  # before the watcher: found by its first list
        owner.add(f"{containerd.namespace}-{early}")
        owner.add(f"{containerd.namespace}-other-{tag}")  # no such container: removed
        owner.add(f"{containerd.namespace}-{tag}-docker", runtime="docker")  # not ours
        watcher.start(owner)
        early_key = f"container-id:{containerd.namespace}-{early}"
        assert wait_for(lambda: _labels(owner, early_key) == ["container:app=old"])
        assert wait_for(lambda: f"container-id:{containerd.namespace}-other-{tag}" in owner.removed)
        assert wait_for(lambda: watcher.health()["healthy"])

        # as `ctr run --cni`: container, then its endpoint (CNI ADD), then the task starts
        containerd.ctr(
            "containers",
            "create",
            "--label",
            "app=web",
            "--label",
            "tier=front",
            containerd.image,
            late,
        )
        owner.add(f"{containerd.namespace}-{late}")
        containerd.ctr("tasks", "start", "-d", late)
        assert wait_for(
            lambda: _labels(owner, key) == ["container:app=web", "container:tier=front"]
        )
        patch = owner.last_patch(key)
        assert patch is not None and patch.name == late

        containerd.ctr("containers", "label", late, "app=db")  # the update event
        assert wait_for(lambda: _labels(owner, key) == ["container:app=db", "container:tier=front"])

        containerd.ctr("tasks", "kill", "-s", "SIGKILL", late)  # exit: its netns is gone
        assert wait_for(lambda: key in owner.removed)
        assert f"{containerd.namespace}-{tag}-docker" in {
            v["container-id"] for v in owner.endpoint_views()
        }
    finally:
        for cid in (early, late):
            containerd.remove_container(cid)


def test_daemon_restart(
    containerd: Containerd, watched: tuple[ContainerdWatcher, FakeOwner]
) -> None:
    watcher, owner = watched
    tag = secrets.token_hex(3)
    before, after = f"before-{tag}", f"after-{tag}"
    try:
        _run(containerd, before, "app=web")
        owner.add(f"{containerd.namespace}-{before}")
        watcher.start(owner)
        assert wait_for(lambda: watcher.health()["healthy"])
        containerd.stop()
        assert wait_for(lambda: not watcher.health()["healthy"])
        containerd.start()
        assert wait_for(lambda: watcher.health()["healthy"], timeout=15)
        owner.add(f"{containerd.namespace}-{after}")
        _run(containerd, after, "app=new")
        key = f"container-id:{containerd.namespace}-{after}"
        assert wait_for(lambda: _labels(owner, key) == ["container:app=new"])
        # the container that ran across the restart keeps its endpoint and labels
        assert f"container-id:{containerd.namespace}-{before}" not in owner.removed
        assert _labels(owner, f"container-id:{containerd.namespace}-{before}") == [
            "container:app=web"
        ]
    finally:
        if containerd.proc is None:
            containerd.start()
        for cid in (before, after):
            containerd.remove_container(cid)
