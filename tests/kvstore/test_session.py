"""The node's lease: refreshed, replaced when gone, revoked or left to expire."""

from __future__ import annotations

import time

import pytest

from cilia.cluster.etcd import EtcdServer
from cilia.kvstore import Etcd, NodeSession
from tests.kvstore.conftest import wait_until

pytestmark = [pytest.mark.integration]


def test_keepalive_holds_keys_past_the_ttl(etcd: Etcd, prefix: str) -> None:
    session = NodeSession(etcd, ttl=2, keepalive_interval=0.5)
    session.start()
    try:
        etcd.put(prefix + "k", b"v", lease=session.lease)
        time.sleep(3.0)
        assert etcd.get(prefix + "k") is not None
        status = session.status()
        assert status["healthy"] and status["lease"] == session.lease
        assert time.time() - status["last_refresh"] < 1.5
    finally:
        session.stop(revoke=True)
    assert etcd.get(prefix + "k") is None  # revoked: gone at once


def test_stop_without_revoke_leaves_keys_until_ttl(etcd: Etcd, prefix: str) -> None:
    session = NodeSession(etcd, ttl=2, keepalive_interval=0.5)
    session.start()
    etcd.put(prefix + "k", b"v", lease=session.lease)
    session.stop(revoke=False)
    assert etcd.get(prefix + "k") is not None
    assert wait_until(lambda: etcd.get(prefix + "k") is None, 5)


def test_lost_lease_is_replaced_and_owners_told(etcd: Etcd, prefix: str) -> None:
    session = NodeSession(etcd, ttl=10, keepalive_interval=0.3)
    told: list[int] = []
    session.on_new_lease(told.append)
    session.start()
    try:
        first = session.lease
        etcd.revoke(first)  # as if it had expired or the store were wiped
        assert wait_until(lambda: told, 5)
        assert told == [session.lease] and session.lease != first
        etcd.revoke(session.lease)
        session.lease_lost(told[0])  # a writer noticed: replaced without waiting
        assert wait_until(lambda: len(told) == 2, 1.0)
        assert session.wait_for_lease(1.0, replacing=told[0]) == told[1]
    finally:
        session.stop(revoke=True)


def test_unreachable_store_is_retried_not_raised(private_server: EtcdServer) -> None:
    client = Etcd([private_server.url], timeout=1.0)
    private_server.stop()
    session = NodeSession(client, ttl=10, keepalive_interval=0.5)
    told: list[int] = []
    session.on_new_lease(told.append)
    session.start()  # etcd is down: no lease yet, no exception
    try:
        assert session.lease == 0
        status = session.status()
        assert not status["healthy"] and "unreachable" in status["last_error"]
        private_server.start()
        assert session.wait_for_lease(10) != 0
        assert told == [session.lease]  # the first lease came late: owners are told
        assert wait_until(lambda: session.status()["healthy"], 5)
        lease = session.lease
        private_server.stop()
        assert wait_until(lambda: not session.status()["healthy"], 5)
        private_server.start()
        assert wait_until(lambda: session.status()["healthy"], 10)
        assert session.lease == lease  # outage shorter than the TTL: same lease
    finally:
        session.stop(revoke=True)
        client.close()
