"""Identity allocation, reserved identities and snapshot/restore."""

from __future__ import annotations

import json

import pytest

from cilia.identity import (
    CLUSTER,
    HEALTH,
    HOST,
    INIT,
    MIN_ALLOCATED,
    WORLD,
    IdentityAllocator,
    IdentityExhaustedError,
)
from cilia.labels import Labels

WEB = Labels.parse(["k8s:app=web"])
DB = Labels.parse(["k8s:app=db"])


def test_constants() -> None:
    assert (HOST, WORLD, CLUSTER, HEALTH, INIT, MIN_ALLOCATED) == (1, 2, 3, 4, 5, 256)


def test_same_labels_same_identity() -> None:
    alloc = IdentityAllocator()
    first = alloc.allocate(WEB)
    assert first == 256
    assert alloc.allocate(Labels.parse(["k8s:app=web"])) == 256
    assert alloc.allocate(DB) == 257
    assert alloc.lookup(WEB) == 256
    assert alloc.labels_of(257) == DB
    assert alloc.refcount(256) == 2


def test_reserved_labels_give_reserved_identity() -> None:
    alloc = IdentityAllocator()
    assert alloc.allocate(Labels.parse(["reserved:init"])) == INIT
    assert alloc.allocate(Labels.parse(["reserved:host"])) == HOST
    assert alloc.lookup(Labels.parse(["reserved:world"])) == WORLD
    assert alloc.labels_of(HEALTH) == Labels.parse(["reserved:health"])
    assert not alloc.release(INIT)
    assert len(alloc) == 0


def test_release_refcounted() -> None:
    alloc = IdentityAllocator()
    ident = alloc.allocate(WEB)
    alloc.allocate(WEB)
    assert alloc.release(ident) is False
    assert alloc.lookup(WEB) == ident
    assert alloc.release(ident) is True
    assert alloc.lookup(WEB) is None
    assert alloc.labels_of(ident) is None
    assert alloc.release(ident) is False


def test_items_include_reserved() -> None:
    alloc = IdentityAllocator()
    alloc.allocate(WEB)
    items = alloc.items()
    assert [i for i, _ in items] == [1, 2, 3, 4, 5, 256]
    assert items[-1] == (256, WEB)


def test_freed_ids_not_reused_immediately() -> None:
    alloc = IdentityAllocator()
    a = alloc.allocate(WEB)
    alloc.release(a)
    assert alloc.allocate(DB) == a + 1


def test_exhaustion_and_wraparound() -> None:
    alloc = IdentityAllocator(min_id=256, max_id=257)
    assert alloc.allocate(WEB) == 256
    assert alloc.allocate(DB) == 257
    with pytest.raises(IdentityExhaustedError):
        alloc.allocate(Labels.parse(["k8s:app=x"]))
    alloc.release(256)
    assert alloc.allocate(Labels.parse(["k8s:app=x"])) == 256


def test_snapshot_restore_keeps_ids() -> None:
    alloc = IdentityAllocator()
    alloc.allocate(WEB)
    db = alloc.allocate(DB)
    alloc.allocate(DB)
    alloc.release(alloc.allocate(Labels.parse(["k8s:app=tmp"])))
    state = json.loads(json.dumps(alloc.snapshot()))
    restored = IdentityAllocator.restore(state)
    assert restored.items() == alloc.items()
    assert restored.lookup(DB) == db
    assert restored.refcount(db) == 2
    assert restored.allocate(Labels.parse(["k8s:app=new"])) == 259


def test_restore_refuses_bad_snapshot() -> None:
    with pytest.raises(ValueError, match="version"):
        IdentityAllocator.restore({"version": 99, "identities": []})
    with pytest.raises(ValueError, match="invalid identity 7"):
        IdentityAllocator.restore(
            {"version": 1, "identities": [{"id": 7, "labels": ["k8s:a=b"], "refcount": 1}]}
        )
