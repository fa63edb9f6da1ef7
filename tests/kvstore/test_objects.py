"""The cluster's objects in a real etcd: versioned batches, conflicts, the watcher."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import pytest

from cilia.cluster.etcd import EtcdServer
from cilia.k8s.manifests import Manifest, parse_manifest
from cilia.kvstore.client import Compare, Etcd, TxnOp, TxnResult, Watch, WatchEvent
from cilia.kvstore.objects import (
    ClusterObjects,
    ObjectConflict,
    ObjectWatcher,
    encode,
    object_key,
)
from tests.kvstore.conftest import wait_until

pytestmark = [pytest.mark.integration]


def pod(name: str, app: str = "web", namespace: str = "default") -> Manifest:
    return parse_manifest(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80}]}]},
        }
    )


def namespace(name: str, team: str = "a") -> Manifest:
    return parse_manifest(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"t": team}}}
    )


def policy(name: str, port: int) -> Manifest:
    return parse_manifest(
        {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name},
            "spec": {
                "endpointSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"toPorts": [{"ports": [{"port": str(port), "protocol": "TCP"}]}]}],
            },
        }
    )


def test_apply_creates_configures_and_leaves_unchanged_objects_alone(
    etcd: Etcd, prefix: str
) -> None:
    objects = ClusterObjects(etcd, root=prefix)
    first = objects.apply([namespace("prod"), pod("web")])
    assert first.actions == {"Namespace//prod": "created", "Pod/default/web": "created"}
    assert first.versions == {"Namespace//prod": first.revision, "Pod/default/web": first.revision}
    stored = etcd.get(object_key("Namespace//prod", prefix))
    assert stored is not None and stored.value == encode(namespace("prod"))

    again = objects.apply([namespace("prod"), pod("web")])
    assert again.actions == {"Namespace//prod": "unchanged", "Pod/default/web": "unchanged"}
    assert again.versions == first.versions
    assert again.revision == first.revision  # nothing was written

    third = objects.apply([namespace("prod", team="b"), pod("web")])
    assert third.actions == {"Namespace//prod": "configured", "Pod/default/web": "unchanged"}
    assert third.revision > first.revision
    assert third.versions["Pod/default/web"] == first.revision

    got = objects.get("Namespace//prod")
    assert got is not None and got[1] == third.revision
    assert got[0].metadata.labels == {"t": "b"}
    assert objects.get("Pod/default/nope") is None
    assert set(objects.list()) == {"Namespace//prod", "Pod/default/web"}
    assert set(objects.list("Pod")) == {"Pod/default/web"}


def test_expected_version_makes_one_of_two_concurrent_applies_win(
    etcd_server: EtcdServer, prefix: str
) -> None:
    setup = ClusterObjects(Etcd([etcd_server.url]), root=prefix)
    version = setup.apply([policy("p", 80)]).versions["CiliumNetworkPolicy/default/p"]
    clients = [ClusterObjects(Etcd([etcd_server.url]), root=prefix) for _ in range(2)]
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def apply(objects: ClusterObjects, port: int, extra: str) -> None:
        barrier.wait()
        try:
            objects.apply(
                [policy("p", port), pod(extra)], expected={"CiliumNetworkPolicy/default/p": version}
            )
            outcomes.append(f"won {port}")
        except ObjectConflict as exc:
            assert "ciliumnetworkpolicy/default/p was changed by someone else" in str(exc)
            outcomes.append(f"lost {port}")

    threads = [
        threading.Thread(target=apply, args=(clients[0], 81, "from-a")),
        threading.Thread(target=apply, args=(clients[1], 82, "from-b")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o.split()[0] for o in outcomes) == ["lost", "won"]
    winner = int(next(o for o in outcomes if o.startswith("won")).split()[1])
    stored = setup.list()
    assert stored["CiliumNetworkPolicy/default/p"][0] == policy("p", winner)
    # nothing of the loser's batch was written
    loser_pod = "Pod/default/from-b" if winner == 81 else "Pod/default/from-a"
    assert loser_pod not in stored and len(stored) == 2


class RacingEtcd(Etcd):
    """Lets another client change `key` right before this client's next write txn."""

    def __init__(self, endpoints: list[str], key: str, value: bytes) -> None:
        super().__init__(endpoints)
        self.rival = Etcd(endpoints)
        self.key, self.value = key, value
        self.raced = False

    def txn(
        self, compare: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp] = ()
    ) -> TxnResult:
        if compare and not self.raced:
            self.raced = True
            self.rival.put(self.key, self.value)
        return super().txn(compare, success, failure)


def test_a_batch_is_all_or_nothing_when_one_object_changed_concurrently(
    etcd_server: EtcdServer, prefix: str
) -> None:
    plain = ClusterObjects(Etcd([etcd_server.url]), root=prefix)
    plain.apply([pod("a"), pod("b")])
    before = plain.list()
    rival_value = encode(pod("b", app="rival"))
    racing = RacingEtcd([etcd_server.url], object_key("Pod/default/b", prefix), rival_value)
    objects = ClusterObjects(racing, root=prefix)
    with pytest.raises(ObjectConflict, match=r"^pod/default/b was changed by someone else"):
        objects.apply([pod("a", app="new"), pod("b", app="new"), pod("c"), namespace("x")])
    after = plain.list()
    assert set(after) == {"Pod/default/a", "Pod/default/b"}
    assert after["Pod/default/a"] == before["Pod/default/a"]
    assert after["Pod/default/b"][0] == pod("b", app="rival")


class RetriedEtcd(Etcd):
    """Applies each guarded write twice, as a client does when the first answer is lost."""

    def txn(
        self, compare: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp] = ()
    ) -> TxnResult:
        if compare and success:
            super().txn(compare, success, failure)
        return super().txn(compare, success, failure)


def test_a_write_applied_before_a_retry_is_not_a_conflict(
    etcd_server: EtcdServer, prefix: str
) -> None:
    objects = ClusterObjects(RetriedEtcd([etcd_server.url]), root=prefix)
    created = objects.apply([pod("a"), pod("b")])
    assert created.actions == {"Pod/default/a": "created", "Pod/default/b": "created"}
    got = objects.get("Pod/default/a")
    assert got is not None and got[1] == created.versions["Pod/default/a"]
    deleted = objects.delete(["Pod/default/a"])
    assert deleted.actions == {"Pod/default/a": "deleted"}
    assert set(objects.list()) == {"Pod/default/b"}


def test_stale_expected_version_and_must_not_exist_refuse_the_batch(
    etcd: Etcd, prefix: str
) -> None:
    objects = ClusterObjects(etcd, root=prefix)
    v1 = objects.apply([pod("a")]).revision
    objects.apply([pod("a", app="v2")])
    with pytest.raises(
        ObjectConflict, match=rf"^pod/default/a was changed by someone else .*expected {v1}\)"
    ):
        objects.apply([pod("a", app="v3"), pod("z")], expected={"Pod/default/a": v1})
    with pytest.raises(ObjectConflict, match=r"^pod/default/a already exists"):
        objects.apply([pod("a", app="v3")], expected={"Pod/default/a": 0})
    with pytest.raises(ObjectConflict, match=r"^pod/default/z no longer exists"):
        objects.apply([pod("z")], expected={"Pod/default/z": v1})
    assert set(objects.list()) == {"Pod/default/a"}
    assert objects.list()["Pod/default/a"][0] == pod("a", app="v2")


def test_batches_too_large_or_with_duplicates_are_refused(etcd: Etcd, prefix: str) -> None:
    objects = ClusterObjects(etcd, root=prefix, max_txn_ops=2)
    with pytest.raises(ValueError, match=r"3 objects at once.*at most 2"):
        objects.apply([pod("a"), pod("b"), pod("c")])
    with pytest.raises(ValueError, match="same object twice"):
        objects.apply([pod("a"), pod("a", app="x")])
    assert objects.list() == {}


def test_delete_is_guarded_and_reports_missing_objects(
    etcd_server: EtcdServer, prefix: str
) -> None:
    objects = ClusterObjects(Etcd([etcd_server.url]), root=prefix)
    objects.apply([pod("a"), pod("b")])
    result = objects.delete(["Pod/default/a", "Pod/default/gone"])
    assert result.actions == {"Pod/default/a": "deleted", "Pod/default/gone": "not found"}
    assert set(objects.list()) == {"Pod/default/b"}

    racing = RacingEtcd(
        [etcd_server.url], object_key("Pod/default/b", prefix), encode(pod("b", "x"))
    )
    with pytest.raises(ObjectConflict, match="pod/default/b was changed"):
        ClusterObjects(racing, root=prefix).delete(["Pod/default/b"])
    assert objects.list()["Pod/default/b"][0] == pod("b", "x")


class Recorder:
    """What an ObjectWatcher reported, as the agent would keep it."""

    def __init__(self) -> None:
        self.objects: dict[str, Manifest] = {}
        self.syncs = 0
        self.changes: list[tuple[set[str], set[str]]] = []

    def on_sync(self, objects: dict[str, Manifest], _revision: int) -> None:
        self.objects = dict(objects)
        self.syncs += 1

    def on_change(self, upserts: dict[str, Manifest], deletes: set[str], _revision: int) -> None:
        self.objects.update(upserts)
        for key in deletes:
            self.objects.pop(key, None)
        self.changes.append((set(upserts), deletes))


def test_watcher_sees_creates_updates_deletes_and_waits_for_a_revision(
    etcd: Etcd, prefix: str
) -> None:
    objects = ClusterObjects(etcd, root=prefix)
    objects.apply([namespace("prod")])
    seen = Recorder()
    watcher = ObjectWatcher(etcd, seen.on_sync, seen.on_change, root=prefix)
    watcher.start()
    try:
        assert wait_until(lambda: watcher.synced, 10.0)
        assert seen.objects == {"Namespace//prod": namespace("prod")}

        created = objects.apply([pod("a"), pod("b")])
        assert watcher.wait_for(created.revision, 5.0)
        assert set(seen.objects) == {"Namespace//prod", "Pod/default/a", "Pod/default/b"}
        assert seen.changes[-1] == ({"Pod/default/a", "Pod/default/b"}, set())  # one batch

        updated = objects.apply([pod("a", app="v2")])
        assert watcher.wait_for(updated.revision, 5.0)
        assert seen.objects["Pod/default/a"] == pod("a", app="v2")

        deleted = objects.delete(["Pod/default/b"])
        assert watcher.wait_for(deleted.revision, 5.0)
        assert "Pod/default/b" not in seen.objects

        # an undecodable value is skipped; the object keeps its last good version
        etcd.put(object_key("Pod/default/a", prefix), b"{not json")
        after = objects.apply([pod("c")])
        assert watcher.wait_for(after.revision, 5.0)
        assert seen.objects["Pod/default/a"] == pod("a", app="v2")
        assert "Pod/default/c" in seen.objects
        assert watcher.last_error == ""
        assert seen.syncs == 1
    finally:
        watcher.stop()


class CompactingEtcd(Etcd):
    """Before its first watch: writes objects, then compacts the history the watch needs."""

    def __init__(self, endpoints: list[str], late: Callable[[], int]) -> None:
        super().__init__(endpoints)
        self.late = late
        self.compacted = False

    def watch_prefix(
        self,
        prefix: str,
        start_revision: int,
        on_event: Callable[[list[WatchEvent]], None],
        on_lost: Callable[[str], None],
    ) -> Watch:
        if not self.compacted:
            self.compacted = True
            self.compact(self.late())
        return super().watch_prefix(prefix, start_revision, on_event, on_lost)


def test_watcher_resyncs_when_the_history_it_needs_was_compacted(
    etcd_server: EtcdServer, prefix: str
) -> None:
    objects = ClusterObjects(Etcd([etcd_server.url]), root=prefix)
    objects.apply([pod("a"), pod("b")])

    def late_changes() -> int:
        objects.delete(["Pod/default/a"])
        objects.apply([pod("b", app="v2")])
        return objects.apply([pod("c")]).revision

    seen = Recorder()
    watcher = ObjectWatcher(
        CompactingEtcd([etcd_server.url], late_changes),
        seen.on_sync,
        seen.on_change,
        root=prefix,
    )
    watcher.start()
    try:
        assert wait_until(lambda: seen.syncs == 2 and watcher.synced, 10.0)  # listed again
        assert seen.objects == {"Pod/default/b": pod("b", app="v2"), "Pod/default/c": pod("c")}
    finally:
        watcher.stop()
