"""Cluster identities through a real etcd: several nodes, each with its own lease."""

from __future__ import annotations

import threading
import time

import pytest

from cilia.identity import HOST, MIN_ALLOCATED
from cilia.kvstore import Etcd
from cilia.kvstore.keys import IdentityKeys, encode_labels
from cilia.labels import Labels
from tests.kvstore.conftest import Nodes, wait_until

pytestmark = [pytest.mark.integration]


def labels(*items: str) -> Labels:
    return Labels.parse(items)


WEB = labels("k8s:app=web", "k8s:io.kubernetes.pod.namespace=default")
DB = labels("k8s:app=db", "k8s:io.kubernetes.pod.namespace=default")


def references(etcd: Etcd, keys: IdentityKeys, lbls: Labels) -> dict[str, int]:
    kvs, _ = etcd.list_prefix(keys.references(encode_labels(lbls)))
    return {kv.key.rsplit("/", 1)[1]: int(kv.value) for kv in kvs}


def test_equal_labels_equal_ids_on_every_node(etcd: Etcd, nodes: Nodes) -> None:
    a, b, c = nodes("a"), nodes("b"), nodes("c")
    web = a.identities.allocate(WEB)
    assert web >= MIN_ALLOCATED
    assert b.identities.allocate(WEB) == web == c.identities.allocate(WEB)
    db = c.identities.allocate(DB)
    assert db != web and a.identities.allocate(DB) == db
    keys = a.identities.keys
    master = etcd.get(keys.master(web))
    assert master is not None and master.value == encode_labels(WEB).encode()
    assert master.lease == 0
    assert references(etcd, keys, WEB) == {"a": web, "b": web, "c": web}
    ref = etcd.get(keys.reference(encode_labels(WEB), "b"))
    assert ref is not None and ref.lease == b.session.lease
    assert wait_until(lambda: b.identities.labels_of(db) == DB, 5)  # learnt from the watch
    assert b.identities.lookup(DB) == db and b.identities.refcount(db) == 0
    assert (db, DB) in b.identities.items() and len(b.identities) == 2


def test_reserved_identities_never_enter_the_store(etcd: Etcd, nodes: Nodes) -> None:
    a = nodes("a")
    host = labels("reserved:host")
    assert a.identities.allocate(host) == HOST
    assert a.identities.lookup(host) == HOST and a.identities.labels_of(HOST) == host
    assert etcd.list_prefix(nodes.prefix)[0] == []


def test_concurrent_allocation_of_the_same_labels_gives_one_id(etcd: Etcd, nodes: Nodes) -> None:
    members = [nodes(f"n{i}") for i in range(3)]
    sets = [labels(f"k8s:app=race-{i}") for i in range(15)]
    results: dict[tuple[int, int], int] = {}
    barrier = threading.Barrier(len(members))

    def run(index: int) -> None:
        for j, lbls in enumerate(sets):
            barrier.wait()
            results[index, j] = members[index].identities.allocate(lbls)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(members))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == len(members) * len(sets)
    ids = [{results[i, j] for i in range(len(members))} for j in range(len(sets))]
    assert all(len(s) == 1 for s in ids), ids
    assert len({next(iter(s)) for s in ids}) == len(sets)
    masters, _ = etcd.list_prefix(members[0].identities.keys.id_prefix)
    assert len(masters) == len(sets)  # no duplicate master left behind


def test_release_keeps_an_id_another_node_references(etcd: Etcd, nodes: Nodes) -> None:
    a, b = nodes("a"), nodes("b")
    ident = a.identities.allocate(WEB)
    assert a.identities.allocate(WEB) == ident and a.identities.refcount(ident) == 2
    assert b.identities.allocate(WEB) == ident
    assert not a.identities.release(ident)  # one reference left on a
    assert set(references(etcd, a.identities.keys, WEB)) == {"a", "b"}
    assert a.identities.release(ident)
    assert references(etcd, a.identities.keys, WEB) == {"b": ident}
    assert not a.identities.release(ident)  # not held any more
    assert a.identities.gc() == 0
    assert b.identities.allocate(WEB) == ident and a.identities.allocate(WEB) == ident


def test_gc_removes_unreferenced_ids_only(etcd: Etcd, nodes: Nodes) -> None:
    a, b = nodes("a"), nodes("b")
    web, db = a.identities.allocate(WEB), b.identities.allocate(DB)
    keys = a.identities.keys
    stale = labels("k8s:app=stale")
    etcd.put(keys.master(60000), encode_labels(stale).encode())  # a leftover nobody uses
    etcd.put(keys.master(60001), encode_labels(DB).encode())  # a duplicate id of DB
    assert a.identities.gc() == 2
    assert etcd.get(keys.master(60000)) is None and etcd.get(keys.master(60001)) is None
    assert etcd.get(keys.master(web)) is not None and etcd.get(keys.master(db)) is not None
    assert b.identities.release(db)
    assert b.identities.gc() == 1
    assert etcd.get(keys.master(db)) is None
    assert wait_until(lambda: a.identities.labels_of(db) is None, 5)


def test_lease_expiry_removes_references_then_gc_the_master(etcd: Etcd, nodes: Nodes) -> None:
    a, short = nodes("a"), nodes("short", ttl=2, keepalive=0.5)
    ident = short.identities.allocate(DB)
    keep = a.identities.allocate(WEB)
    short.stop(revoke=False)  # as after kill -9: no keepalive, no revoke
    keys = a.identities.keys
    assert references(etcd, keys, DB) == {"short": ident}
    assert wait_until(lambda: not references(etcd, keys, DB), 6)
    assert a.identities.gc() == 1
    assert etcd.get(keys.master(ident)) is None
    assert etcd.get(keys.master(keep)) is not None


def test_wiped_store_is_republished(etcd: Etcd, nodes: Nodes) -> None:
    a, b = nodes("a"), nodes("b")
    web, db = a.identities.allocate(WEB), b.identities.allocate(DB)
    a.identities.allocate(DB)
    keys = a.identities.keys
    etcd.delete_prefix(nodes.prefix)  # the store loses every identity key

    def restored() -> bool:
        return references(etcd, keys, WEB) == {"a": web} and references(etcd, keys, DB) == {
            "a": db,
            "b": db,
        }

    # The watch saw the masters vanish (or come back re-created).
    assert wait_until(restored, 30), (
        references(etcd, keys, WEB),
        references(etcd, keys, DB),
        [(kv.key, kv.value) for kv in etcd.list_prefix(nodes.prefix)[0]],
    )
    for ident, lbls in ((web, WEB), (db, DB)):
        master = etcd.get(keys.master(ident))
        assert master is not None and master.value == encode_labels(lbls).encode()
    assert a.identities.republish() == {} and b.identities.republish() == {}


def test_a_wipe_and_recreation_seen_as_one_change_is_republished(etcd: Etcd, nodes: Nodes) -> None:
    """Node b's watch gets the wipe and a's re-creation of the master in one batch (its
    callback is held up meanwhile, so the queued events coalesce into an upsert with
    the same labels): b must still notice that its reference went with the wipe."""
    a, b = nodes("a"), nodes("b")
    db = b.identities.allocate(DB)
    assert a.identities.allocate(DB) == db
    keys = a.identities.keys
    with b.identities._lock:  # b's watch callback waits for this lock
        etcd.put(keys.master(60000), encode_labels(labels("k8s:app=other")).encode())
        time.sleep(0.3)  # b's watch thread is now blocked in its callback
        etcd.delete_prefix(nodes.prefix)
        assert wait_until(lambda: references(etcd, keys, DB) == {"a": db}, 10)
    assert wait_until(lambda: references(etcd, keys, DB) == {"a": db, "b": db}, 10), references(
        etcd, keys, DB
    )


def test_new_lease_republishes_references(etcd: Etcd, nodes: Nodes) -> None:
    a = nodes("a", keepalive=0.3)
    ident = a.identities.allocate(WEB)
    old = a.session.lease
    etcd.revoke(old)  # every key of the node vanishes, as after a long outage
    keys = a.identities.keys
    assert wait_until(lambda: references(etcd, keys, WEB) == {"a": ident}, 10)
    ref = etcd.get(keys.reference(encode_labels(WEB), "a"))
    assert ref is not None and ref.lease == a.session.lease != old


def test_restore_after_restart_keeps_ids(etcd: Etcd, nodes: Nodes) -> None:
    first = nodes("a")
    web = first.identities.allocate(WEB)
    first.identities.allocate(WEB)
    db = first.identities.allocate(DB)
    taken = first.identities.allocate(labels("k8s:app=taken"))
    held = first.identities.held()
    assert held == {web: (WEB, 2), db: (DB, 1), taken: (labels("k8s:app=taken"), 1)}
    first.stop(revoke=True)  # its references vanish; masters stay (no lease)
    keys = first.identities.keys
    etcd.delete(keys.master(db))  # lost meanwhile but still free: re-created with its id
    etcd.put(keys.master(taken), encode_labels(labels("k8s:app=other")).encode())
    again = nodes("a")
    remaps = again.identities.restore(held)
    assert set(remaps) == {taken} and remaps[taken] not in (web, db, taken)
    assert again.identities.lookup(WEB) == web and again.identities.refcount(web) == 2
    assert again.identities.lookup(DB) == db
    assert references(etcd, keys, WEB) == {"a": web} and references(etcd, keys, DB) == {"a": db}
    master = etcd.get(keys.master(db))
    assert master is not None and master.value == encode_labels(DB).encode()
    assert again.identities.held()[remaps[taken]] == (labels("k8s:app=taken"), 1)


def test_release_and_allocate_never_interleave(etcd: Etcd, nodes: Nodes) -> None:
    """Threads allocate and release the same labels while another node collects
    garbage: whenever a thread holds a reference, the node's key exists and the id keeps
    its master (the reference leaked ids when a release overtook an allocate)."""
    a, collector = nodes("a"), nodes("collector")
    keys = a.identities.keys
    ref_key = keys.reference(encode_labels(WEB), "a")
    failures: list[str] = []
    ids: set[int] = set()
    stop = threading.Event()

    def churn() -> None:
        for _ in range(40):
            ident = a.identities.allocate(WEB)
            ids.add(ident)
            if etcd.get(ref_key) is None:
                failures.append("reference missing while held")
            master = etcd.get(keys.master(ident))
            if master is None or master.value != encode_labels(WEB).encode():
                failures.append(f"master of {ident} missing while held")
            a.identities.release(ident)

    def collect() -> None:
        while not stop.is_set():
            collector.identities.gc()

    workers = [threading.Thread(target=churn) for _ in range(4)]
    gc_thread = threading.Thread(target=collect)
    gc_thread.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join(120)
    stop.set()
    gc_thread.join(30)
    assert failures == []
    assert a.identities.held() == {}
    assert etcd.get(ref_key) is None
    assert len(ids) >= 1


def test_references_without_a_master_get_it_back(etcd: Etcd, nodes: Nodes) -> None:
    """Only the master keys were lost and the node that referenced the labels is not
    republishing: the next allocation re-creates the master with the id in use."""
    a = nodes("a")
    keys = a.identities.keys
    lease = etcd.grant(30)
    try:
        etcd.put(keys.reference(encode_labels(DB), "ghost"), b"5000", lease=lease)
        assert a.identities.allocate(DB) == 5000
        master = etcd.get(keys.master(5000))
        assert master is not None and master.value == encode_labels(DB).encode()
        etcd.put(keys.reference(encode_labels(WEB), "ghost"), b"5001", lease=lease)
        etcd.put(keys.master(5001), encode_labels(DB).encode())  # 5001 means other labels
        web = a.identities.allocate(WEB)
        assert web not in (5000, 5001)
    finally:
        etcd.revoke(lease)
