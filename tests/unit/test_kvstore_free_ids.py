"""The free-id structure of the cluster identity allocator."""

from __future__ import annotations

import time

from cilia.kvstore.identities import FreeIds


def test_take_free_and_count() -> None:
    free = FreeIds(256, 300)
    assert len(free) == 45 and 256 in free and 300 in free and 301 not in free
    assert free.take(256) and not free.take(256)
    assert 256 not in free and len(free) == 44
    assert free.free(256) and not free.free(256) and not free.free(9999)
    assert len(free) == 45


def test_next_free_from_a_point_wraps_around() -> None:
    free = FreeIds(256, 5000)
    assert free.next_free(1000) == 1000
    for ident in range(1000, 5001):
        free.take(ident)
    assert free.next_free(1000) == 256  # wrapped
    free.take(256)
    assert free.next_free(4000) == 257
    assert free.next_free(10) == 257  # out of range: from the start
    free.free(4999)
    assert free.next_free(1000) == 4999


def test_full_space() -> None:
    free = FreeIds(256, 2000)
    for ident in range(256, 2001):
        free.take(ident)
    assert len(free) == 0 and free.next_free(300) is None
    free.free(1999)
    assert free.next_free(2000) == 1999


def test_search_stays_fast_when_the_space_is_nearly_full() -> None:
    free = FreeIds(256, 65535)
    for ident in range(256, 65536):
        free.take(ident)
    free.free(300)  # the only free id, just behind every start point
    start = time.perf_counter()
    for _ in range(1000):
        assert free.next_free(301) == 300
    per_search = (time.perf_counter() - start) / 1000
    # a scan id by id would need 65,000 steps; one mask per block needs 64
    assert per_search < 0.001, per_search
