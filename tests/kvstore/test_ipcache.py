"""The shared ipcache in a real etcd: diffed publishing, IP reuse, remote-only watching."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from cilia.kvstore.client import Etcd, KeyValue
from cilia.kvstore.ipcache import IpcachePublisher, IpcacheWatcher, RemoteIp, ip_key
from cilia.kvstore.session import NodeSession

pytestmark = [pytest.mark.integration]


@pytest.fixture
def sessions(etcd: Etcd) -> Iterator[Callable[..., NodeSession]]:
    started: list[NodeSession] = []

    def make(keepalive: float = 1.0) -> NodeSession:
        session = NodeSession(etcd, 30, keepalive)
        session.start()
        started.append(session)
        return session

    yield make
    for session in started:
        session.stop(revoke=True)


class Watched:
    """An IpcacheWatcher and the last map it reported."""

    def __init__(self, etcd: Etcd, node: str, prefix: str) -> None:
        self.last: dict[str, RemoteIp] | None = None
        self.watcher = IpcacheWatcher(etcd, node, self._record, root=prefix)
        self.watcher.start()

    def _record(self, remote: dict[str, RemoteIp]) -> None:
        self.last = remote

    def settles_on(self, wanted: dict[str, RemoteIp], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.last != wanted:
            assert time.monotonic() < deadline, f"watcher shows {self.last}, not {wanted}"
            time.sleep(0.02)
        assert self.watcher.remote() == wanted


@pytest.fixture
def watch(etcd: Etcd, prefix: str) -> Iterator[Callable[[str], Watched]]:
    made: list[Watched] = []

    def make(node: str) -> Watched:
        w = Watched(etcd, node, prefix)
        made.append(w)
        return w

    yield make
    for w in made:
        w.watcher.stop()


def stored(etcd: Etcd, prefix: str, ip: str) -> KeyValue:
    kv = etcd.get(ip_key(ip, prefix))
    assert kv is not None, f"{ip} is not in the store"
    return kv


def test_publish_writes_only_differences_under_the_lease(
    etcd: Etcd, prefix: str, sessions: Callable[..., NodeSession]
) -> None:
    session = sessions()
    pub = IpcachePublisher(etcd, session, "n1", "198.18.0.1", root=prefix)
    assert pub.publish({"10.208.0.5": 300, "10.208.0.6": 301})
    a = stored(etcd, prefix, "10.208.0.5")
    assert json.loads(a.value) == {
        "IP": "10.208.0.5",
        "ID": 300,
        "Node": "n1",
        "HostIP": "198.18.0.1",
    }
    assert a.lease == session.lease

    assert pub.publish({"10.208.0.5": 300, "10.208.0.6": 999, "10.208.0.7": 302})
    assert stored(etcd, prefix, "10.208.0.5").mod_revision == a.mod_revision  # not rewritten
    assert json.loads(stored(etcd, prefix, "10.208.0.6").value)["ID"] == 999
    assert json.loads(stored(etcd, prefix, "10.208.0.7").value)["ID"] == 302

    assert pub.publish({"10.208.0.7": 302})
    assert etcd.get(ip_key("10.208.0.5", prefix)) is None
    assert etcd.get(ip_key("10.208.0.6", prefix)) is None
    assert pub.publish({})
    assert etcd.list_prefix(prefix)[0] == []


def test_watchers_see_other_nodes_only(
    etcd: Etcd, prefix: str, sessions: Callable[..., NodeSession], watch: Callable[[str], Watched]
) -> None:
    on_a, on_b = watch("n1"), watch("n2")
    IpcachePublisher(etcd, sessions(), "n1", "198.18.0.1", root=prefix).publish({"10.208.0.5": 300})
    IpcachePublisher(etcd, sessions(), "n2", "198.18.0.2", root=prefix).publish({"10.208.1.5": 400})
    on_a.settles_on({"10.208.1.5": RemoteIp("10.208.1.5", 400, "n2", "198.18.0.2")})
    on_b.settles_on({"10.208.0.5": RemoteIp("10.208.0.5", 300, "n1", "198.18.0.1")})


def test_a_reused_ip_ends_with_the_new_owner_everywhere(
    etcd: Etcd, prefix: str, sessions: Callable[..., NodeSession], watch: Callable[[str], Watched]
) -> None:
    watchers = {name: watch(name) for name in ("n1", "n2", "n3")}
    a = IpcachePublisher(etcd, sessions(), "n1", "198.18.0.1", root=prefix)
    b = IpcachePublisher(etcd, sessions(), "n2", "198.18.0.2", root=prefix)
    x = "10.208.0.9"
    a.publish({x: 300})
    watchers["n3"].settles_on({x: RemoteIp(x, 300, "n1", "198.18.0.1")})
    a.publish({})
    b.publish({x: 400})
    owner_b = {x: RemoteIp(x, 400, "n2", "198.18.0.2")}
    watchers["n1"].settles_on(owner_b)
    watchers["n3"].settles_on(owner_b)
    watchers["n2"].settles_on({})


def test_withdrawing_an_ip_never_deletes_another_nodes_mapping(
    etcd: Etcd, prefix: str, sessions: Callable[..., NodeSession], watch: Callable[[str], Watched]
) -> None:
    on_c = watch("n3")
    a = IpcachePublisher(etcd, sessions(), "n1", "198.18.0.1", root=prefix)
    b = IpcachePublisher(etcd, sessions(), "n2", "198.18.0.2", root=prefix)
    x = "10.208.0.9"
    a.publish({x: 300})
    b.publish({x: 400})  # the IP moved before n1 withdrew it
    assert a.publish({})
    assert json.loads(stored(etcd, prefix, x).value)["Node"] == "n2"
    on_c.settles_on({x: RemoteIp(x, 400, "n2", "198.18.0.2")})


def test_a_restarted_publisher_adopts_its_old_keys_onto_its_new_lease(
    etcd: Etcd, prefix: str, sessions: Callable[..., NodeSession]
) -> None:
    before = sessions()
    IpcachePublisher(etcd, before, "n1", "198.18.0.1", root=prefix).publish(
        {"10.208.0.5": 300, "10.208.0.6": 301}
    )
    IpcachePublisher(etcd, sessions(), "n2", "198.18.0.2", root=prefix).publish({"10.208.1.5": 400})
    after = sessions()  # the restarted agent, while the old lease still lives
    restarted = IpcachePublisher(etcd, after, "n1", "198.18.0.1", root=prefix)
    assert restarted.publish({"10.208.0.5": 300})
    leases = {kv.key.rsplit("/", 1)[1]: kv.lease for kv in etcd.list_prefix(prefix)[0]}
    assert set(leases) == {"10.208.0.5", "10.208.1.5"}
    assert leases["10.208.0.5"] == after.lease != before.lease


def test_a_new_lease_republishes_every_entry(
    etcd: Etcd, prefix: str, sessions: Callable[..., NodeSession]
) -> None:
    session = sessions(keepalive=20.0)
    pub = IpcachePublisher(etcd, session, "n1", "198.18.0.1", root=prefix)
    assert pub.publish({"10.208.0.5": 300, "10.208.0.6": 301})
    old = session.lease
    etcd.revoke(old)
    assert etcd.list_prefix(prefix)[0] == []
    session.lease_lost(old)
    deadline = time.monotonic() + 10
    while len(kvs := etcd.list_prefix(prefix)[0]) < 2:
        assert time.monotonic() < deadline, "entries not re-published"
        time.sleep(0.05)
    assert {kv.lease for kv in kvs} == {session.lease} != {old}
