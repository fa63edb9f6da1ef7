"""The Reflector: list, watch, resync after compaction or an outage."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cilia.cluster.etcd import EtcdServer
from cilia.kvstore import Etcd, KeyValue, Reflector
from tests.kvstore.conftest import wait_until

pytestmark = [pytest.mark.integration]


class Mirror:
    """Applies a reflector's callbacks to a dict, as a consumer would."""

    def __init__(self) -> None:
        self.state: dict[str, bytes] = {}
        self.syncs: list[dict[str, KeyValue]] = []
        self.deleted: list[str] = []

    def on_sync(self, snapshot: dict[str, KeyValue]) -> None:
        self.syncs.append(snapshot)
        self.deleted += sorted(set(self.state) - set(snapshot))
        self.state = {k: kv.value for k, kv in snapshot.items()}

    def on_change(self, upserts: dict[str, KeyValue], deletes: set[str], revision: int) -> None:
        assert all(kv.mod_revision <= revision for kv in upserts.values())
        for key in deletes:
            self.state.pop(key, None)
            self.deleted.append(key)
        self.state.update({k: kv.value for k, kv in upserts.items()})


@pytest.fixture
def mirror() -> Mirror:
    return Mirror()


@pytest.fixture
def reflector(etcd: Etcd, prefix: str, mirror: Mirror) -> Iterator[Reflector]:
    r = Reflector(etcd, prefix, mirror.on_sync, mirror.on_change)
    yield r
    r.stop()


def test_sync_then_changes(etcd: Etcd, prefix: str, mirror: Mirror, reflector: Reflector) -> None:
    etcd.put(prefix + "a", b"1")
    reflector.start()
    assert reflector.wait_synced(5)
    assert mirror.state == {prefix + "a": b"1"}
    revision = etcd.put(prefix + "b", b"2")
    assert reflector.wait_for(revision, 5)
    assert mirror.state == {prefix + "a": b"1", prefix + "b": b"2"}
    etcd.delete(prefix + "a")
    revision = etcd.put(prefix + "b", b"3")
    assert reflector.wait_for(revision, 5)
    assert mirror.state == {prefix + "b": b"3"}
    assert reflector.revision >= revision and reflector.synced and not reflector.last_error


def test_wait_for_a_revision_written_elsewhere(
    etcd: Etcd, prefix: str, mirror: Mirror, reflector: Reflector
) -> None:
    reflector.start()
    assert reflector.wait_synced(5)
    outside = prefix[:-1] + "-outside"
    try:
        revision = etcd.put(outside, b"x")
        assert reflector.wait_for(revision, 5)  # nothing under the prefix changed up to it
        assert not reflector.wait_for(revision + 1000, 0.5)
    finally:
        etcd.delete(outside)


def test_resync_after_compaction(etcd: Etcd, prefix: str, mirror: Mirror) -> None:
    """Between the first listing and its watch, keys change and history is compacted:
    the watch cannot start, the reflector lists again and the snapshot drops the key
    deleted meanwhile."""
    etcd.put(prefix + "gone", b"1")
    etcd.put(prefix + "kept", b"1")
    sabotaged: list[int] = []

    def on_sync(snapshot: dict[str, KeyValue]) -> None:
        mirror.on_sync(snapshot)
        if not sabotaged:
            etcd.delete(prefix + "gone")
            revision = etcd.put(prefix + "new", b"2")
            etcd.compact(revision)
            sabotaged.append(revision)

    reflector = Reflector(etcd, prefix, on_sync, mirror.on_change, retry_min=0.05)
    reflector.start()
    try:
        assert wait_until(lambda: len(mirror.syncs) == 2, 5)
        assert mirror.state == {prefix + "kept": b"1", prefix + "new": b"2"}
        assert mirror.deleted == [prefix + "gone"]
        revision = etcd.put(prefix + "after", b"3")
        assert reflector.wait_for(revision, 5)
        assert prefix + "after" in mirror.state
        assert len(mirror.syncs) == 2
    finally:
        reflector.stop()


def test_outage_backs_off_and_converges(private_server: EtcdServer, mirror: Mirror) -> None:
    outcomes: list[tuple[str, str]] = []
    client = Etcd([private_server.url], timeout=1.0, on_operation=lambda *o: outcomes.append(o))
    prefix = "cilia-test-outage/"
    client.put(prefix + "a", b"1")
    reflector = Reflector(client, prefix, mirror.on_sync, mirror.on_change, retry_max=1.0)
    reflector.start()
    try:
        assert reflector.wait_synced(5)
        private_server.stop()
        assert wait_until(lambda: not reflector.synced, 10)
        before = len(outcomes)
        wait_until(lambda: False, 3.0)
        attempts = [o for o in outcomes[before:] if o[1] == "unavailable"]
        assert 1 <= len(attempts) <= 8, attempts  # bounded backoff, no busy loop
        assert "unreachable" in reflector.last_error
        private_server.start()
        assert reflector.wait_synced(10)
        revision = client.put(prefix + "b", b"2")
        assert reflector.wait_for(revision, 5)
        assert mirror.state == {prefix + "a": b"1", prefix + "b": b"2"}
    finally:
        reflector.stop()
        client.close()
