"""Cluster identities while etcd is stopped, and after it returns."""

from __future__ import annotations

import pytest

from cilia.cluster.etcd import EtcdServer
from cilia.kvstore import Etcd, KvstoreUnavailable
from cilia.kvstore.keys import encode_labels
from cilia.labels import Labels
from tests.kvstore.conftest import Nodes, wait_until

pytestmark = [pytest.mark.integration]

WEB = Labels.parse(["k8s:app=web"])
DB = Labels.parse(["k8s:app=db"])
NEW = Labels.parse(["k8s:app=new"])


def test_outage_then_convergence(private_server: EtcdServer) -> None:
    nodes = Nodes([private_server.url], "cilia-test-outage/")
    probe = Etcd([private_server.url], timeout=2.0)
    try:
        a, b = nodes("a"), nodes("b")
        web = a.identities.allocate(WEB)
        db = a.identities.allocate(DB)
        assert b.identities.allocate(DB) == db
        keys = a.identities.keys
        private_server.stop()

        assert a.identities.allocate(WEB) == web  # referenced here: from the cache
        assert a.identities.refcount(web) == 2
        with pytest.raises(KvstoreUnavailable):
            a.identities.allocate(NEW)
        with pytest.raises(KvstoreUnavailable):
            b.identities.allocate(WEB)  # known cluster-wide, but b must write its reference
        assert a.identities.release(db)  # remembered, done when the store returns
        assert a.identities.refcount(db) == 0

        private_server.start()
        a_db = keys.reference(encode_labels(DB), "a")
        assert wait_until(lambda: probe.get(a_db) is None, 15)
        assert probe.get(keys.reference(encode_labels(DB), "b")) is not None
        new = None

        def allocated() -> bool:
            nonlocal new
            try:
                new = a.identities.allocate(NEW)
            except KvstoreUnavailable:
                return False
            return True

        assert wait_until(allocated, 15, step=0.5)
        assert b.identities.allocate(NEW) == new
        assert b.identities.allocate(WEB) == web
        assert wait_until(lambda: b.identities.reflector.synced, 10)
        assert a.identities.gc() == 0  # everything still referenced
    finally:
        nodes.stop_all()
        probe.close()
