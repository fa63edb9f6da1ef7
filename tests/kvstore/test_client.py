"""The etcd client against a real etcd 3.4 gateway."""

from __future__ import annotations

import threading

import pytest

from cilia.cluster.etcd import EtcdServer
from cilia.kvstore import (
    Compare,
    Count,
    Delete,
    Etcd,
    Get,
    KvstoreUnavailable,
    LeaseNotFound,
    Put,
    WatchEvent,
    prefix_end,
)
from tests.kvstore.conftest import wait_until

pytestmark = [pytest.mark.integration]


def test_keys_values_and_revisions(etcd: Etcd, prefix: str) -> None:
    first = etcd.put(prefix + "a", b"1")
    assert etcd.put(prefix + "a", b"2") == first + 1
    kv = etcd.get(prefix + "a")
    assert kv is not None
    assert (kv.value, kv.version) == (b"2", 2)
    assert (kv.create_revision, kv.mod_revision) == (first, first + 1)
    assert etcd.get(prefix + "missing") is None
    assert not etcd.create(prefix + "a", b"3")
    assert etcd.create(prefix + "b", b"\x00\xff")
    etcd.put(prefix + "é/x", b"")  # non-ASCII key: round-trips as UTF-8
    kvs, revision = etcd.list_prefix(prefix)
    assert [k.key for k in kvs] == [prefix + "a", prefix + "b", prefix + "é/x"]
    assert kvs[1].value == b"\x00\xff"
    assert revision == max(k.mod_revision for k in kvs)
    assert etcd.delete(prefix + "a")
    assert not etcd.delete(prefix + "a")
    assert etcd.delete_prefix(prefix) == 2
    assert etcd.list_prefix(prefix)[0] == []


def test_range_compare_in_txn(etcd: Etcd, prefix: str) -> None:
    """A compare over [key, range_end): an empty range counts as version 0; one key in
    it makes `version == 0` fail; a value compare on an empty range always fails."""
    refs = prefix + "value/L/"
    empty = Compare(refs, "version", "==", 0, range_end=prefix_end(refs))
    first = etcd.txn([empty], [Put(refs + "n1", b"7"), Count(prefix, prefix=True)])
    assert first.succeeded
    assert first.responses == [None, 1]
    second = etcd.txn([empty], [Put(refs + "n2", b"7")], [Get(refs, prefix=True)])
    assert not second.succeeded
    assert [kv.key for kv in second.responses[0]] == [refs + "n1"]  # type: ignore[union-attr]
    assert second.revision == first.revision
    not_seven = Compare(refs, "value", "!=", b"7", range_end=prefix_end(refs))
    assert not etcd.txn([not_seven], [Delete(refs, prefix=True)]).succeeded
    not_eight = Compare(refs, "value", "!=", b"8", range_end=prefix_end(refs))
    assert etcd.txn([not_eight], [Delete(refs, prefix=True)]).responses == [1]
    assert not etcd.txn([not_eight], []).succeeded  # empty range: value compares fail
    newer = etcd.txn([], [Get(prefix, prefix=True, keys_only=True, min_mod_revision=10**9)])
    assert newer.responses == [[]]


def test_leases(etcd: Etcd, prefix: str) -> None:
    lease = etcd.grant(10)
    assert 0 < etcd.keepalive(lease) <= 10
    etcd.put(prefix + "leased", b"x", lease=lease)
    leased = etcd.get(prefix + "leased")
    assert leased is not None and leased.lease == lease
    etcd.revoke(lease)
    assert etcd.get(prefix + "leased") is None
    assert etcd.keepalive(lease) == 0
    etcd.revoke(lease)  # already gone: fine
    with pytest.raises(LeaseNotFound):
        etcd.put(prefix + "leased", b"x", lease=lease)


def test_fail_over_and_operation_hook(etcd_server: EtcdServer, prefix: str) -> None:
    outcomes: list[tuple[str, str]] = []
    dead = "http://127.0.0.1:1"
    client = Etcd([dead, etcd_server.url], timeout=1.0, on_operation=lambda *o: outcomes.append(o))
    try:
        client.put(prefix + "k", b"v")
        assert client.status()["endpoint"] == etcd_server.url
        assert client.healthy()
        assert outcomes == [("put", "success"), ("status", "success"), ("status", "success")]
    finally:
        client.close()
    down = Etcd([dead, "http://127.0.0.1:2"], on_operation=lambda *o: outcomes.append(o))
    with pytest.raises(KvstoreUnavailable, match=r"127\.0\.0\.1:1, http://127\.0\.0\.1:2"):
        down.get(prefix + "k")
    assert outcomes[-1] == ("get", "unavailable")
    assert not down.healthy()
    down.close()


def test_status(etcd: Etcd, etcd_server: EtcdServer, prefix: str) -> None:
    written = etcd.put(prefix + "k", b"")
    status = etcd.status()
    assert status["endpoint"] == etcd_server.url
    assert status["version"].startswith("3.")
    assert status["dbSize"] > 0 and status["leader"] and status["raftTerm"] >= 1
    assert status["revision"] >= written


def test_watch_streams_changes_in_order(etcd: Etcd, prefix: str) -> None:
    start = etcd.put(prefix + "before", b"0")
    got: list[WatchEvent] = []
    lost: list[str] = []
    changed = threading.Event()

    def on_event(events: list[WatchEvent]) -> None:
        got.extend(events)
        changed.set()

    watch = etcd.watch_prefix(prefix, start, on_event, lost.append)
    try:
        etcd.put(prefix + "a", b"1")
        etcd.put(prefix[:-1] + "-outside", b"no")
        etcd.txn([], [Put(prefix + "b", b"2"), Delete(prefix + "a")])
        assert wait_until(lambda: len(got) == 4, 5)
    finally:
        watch.cancel()
        etcd.delete(prefix[:-1] + "-outside")
    assert [(e.type, e.key.removeprefix(prefix), e.value) for e in got] == [
        ("put", "before", b"0"),
        ("put", "a", b"1"),
        ("put", "b", b"2"),
        ("delete", "a", None),
    ]
    assert got[2].mod_revision == got[3].mod_revision
    assert lost == []  # cancel is not a loss


def test_watch_reports_compaction(etcd: Etcd, prefix: str) -> None:
    old = etcd.put(prefix + "k", b"1")
    now = etcd.put(prefix + "k", b"2")
    etcd.compact(now)
    lost: list[str] = []
    watch = etcd.watch_prefix(prefix, old, lambda _: None, lost.append)
    assert wait_until(lambda: lost, 5)
    watch.cancel()
    assert lost == [f"compacted at revision {now}"]


def test_watch_reports_lost_server(private_server: EtcdServer) -> None:
    client = Etcd([private_server.url], timeout=1.0)
    lost: list[str] = []
    watch = client.watch_prefix("cilia-test-lost/", 0, lambda _: None, lost.append)
    private_server.stop()
    assert wait_until(lambda: lost, 10)
    watch.cancel()
    assert len(lost) == 1
    with pytest.raises(KvstoreUnavailable):
        client.watch_prefix("cilia-test-lost/", 0, lambda _: None, lost.append)
    client.close()
