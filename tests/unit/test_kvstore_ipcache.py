"""The ipcache mirror ends on the latest owner of an IP whatever order events come in."""

from __future__ import annotations

from cilia.kvstore.client import KeyValue
from cilia.kvstore.ipcache import IP_PREFIX, IpEntry, IpMirror, RemoteIp

X = "10.208.0.9"
KEY = IP_PREFIX + X
ON_B = {X: RemoteIp(X, 400, "n2", "198.18.0.2")}


def put(node: str, identity: int, revision: int, ip: str = X) -> KeyValue:
    host = {"n1": "198.18.0.1", "n2": "198.18.0.2"}[node]
    value = IpEntry(ip=ip, identity=identity, node=node, host_ip=host).to_json()
    return KeyValue(IP_PREFIX + ip, value, revision, revision, 1, 7)


A_PUT, A_DELETE, B_PUT = put("n1", 300, 5), 6, put("n2", 400, 7)


def mirror() -> IpMirror:
    return IpMirror(IP_PREFIX, "n3")


def test_in_order_events_end_with_the_new_owner() -> None:
    m = mirror()
    assert m.update({KEY: A_PUT}, set(), 5)
    assert m.remote() == {X: RemoteIp(X, 300, "n1", "198.18.0.1")}
    assert m.update({}, {KEY}, A_DELETE)
    assert m.remote() == {}
    assert m.update({KEY: B_PUT}, set(), 7)
    assert m.remote() == ON_B


def test_a_late_delete_never_removes_the_new_owner() -> None:
    m = mirror()
    m.update({KEY: A_PUT}, set(), 5)
    m.update({KEY: B_PUT}, set(), 7)
    assert not m.update({}, {KEY}, A_DELETE)
    assert m.remote() == ON_B


def test_events_older_than_a_relist_are_ignored() -> None:
    m = mirror()
    m.reset({KEY: B_PUT}, 7)
    assert not m.update({KEY: A_PUT}, set(), 5)
    assert not m.update({}, {KEY}, A_DELETE)
    assert m.remote() == ON_B


def test_a_stale_put_cannot_revive_an_ip_deleted_before_or_after_a_relist() -> None:
    m = mirror()
    m.reset({}, 6)  # listed after A's delete
    assert not m.update({KEY: A_PUT}, set(), 5)
    assert m.remote() == {}
    m.update({KEY: B_PUT}, set(), 7)
    m.update({}, {KEY}, 8)
    assert not m.update({KEY: B_PUT}, set(), 7)  # tombstone at 8 wins
    assert m.remote() == {}


def test_a_relist_replaces_everything() -> None:
    m = mirror()
    other = "10.208.1.1"
    m.update({KEY: A_PUT, IP_PREFIX + other: put("n2", 401, 5, other)}, set(), 5)
    m.reset({KEY: B_PUT}, 9)
    assert m.remote() == ON_B


def test_own_and_undecodable_entries_are_not_remote() -> None:
    m = IpMirror(IP_PREFIX, "n2")
    bad = KeyValue(IP_PREFIX + "10.208.0.1", b"{", 3, 3, 1, 7)
    wrong_ip = KeyValue(IP_PREFIX + "10.208.0.2", put("n1", 1, 3).value, 3, 3, 1, 7)
    m.reset({KEY: B_PUT, bad.key: bad, wrong_ip.key: wrong_ip}, 7)
    assert m.remote() == {}
    m.update({KEY: put("n1", 300, 8)}, set(), 8)  # the IP moved to n1: now remote
    assert m.remote() == {X: RemoteIp(X, 300, "n1", "198.18.0.1")}
