"""Cluster-wide security identities: equal labels get the same id on every node.

Keys are laid out as `cilia.kvstore.keys` describes: a master key per id (the labels,
no lease) and one reference key per node that uses it (under the node's lease). A
watch-fed cache mirrors the master keys. Allocating labels the cache knows writes this
node's reference in a transaction that requires the master to still carry them; new
labels take a free id in one transaction that requires the id to be unused and no node
to reference the labels yet, writing both keys. Per-node reference counts are local;
releasing the last one deletes only this node's reference, and `gc()` deletes master
keys no node references.

A per-labels lock keeps an allocate and a release of the same labels from interleaving
(the reference leaked ids that way). Master keys that vanish while referenced (store
wiped) and every reference after a new lease are published again by a worker thread.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from cilia.identity.allocator import SNAPSHOT_VERSION, IdentityExhaustedError
from cilia.identity.reserved import MAX_IDENTITY, MIN_ALLOCATED, RESERVED_LABELS, reserved_identity
from cilia.kvstore.client import (
    Backoff,
    Compare,
    Delete,
    Etcd,
    Get,
    KeyValue,
    KvstoreError,
    KvstoreUnavailable,
    LeaseNotFound,
    Put,
    Reflector,
    TxnResult,
    prefix_end,
)
from cilia.kvstore.keys import IDENTITIES_PREFIX, IdentityKeys, decode_labels, encode_labels
from cilia.kvstore.session import NodeSession
from cilia.labels import Labels

log = logging.getLogger("cilia.kvstore")

T = TypeVar("T")

MAX_ATTEMPTS = 32
"""Transactions one allocation may try before giving up (each failure means another
node changed the same id or labels meanwhile)."""

_STRIPES = 64
_BLOCK = 1024


class FreeIds:
    """The free ids of [low, high] as one bitmask per block of 1024 ids.

    `take`/`free` are O(1); `next_free(start)` looks at no more than one mask per block
    (64 for the whole 16-bit space), however full the space is.
    """

    def __init__(self, low: int, high: int) -> None:
        if high < low:
            raise ValueError("empty id range")
        self.low = low
        self.high = high
        span = high - low + 1
        self._masks = [(1 << _BLOCK) - 1] * (span // _BLOCK)
        if span % _BLOCK:
            self._masks.append((1 << (span % _BLOCK)) - 1)
        self._free = span

    def __len__(self) -> int:
        return self._free

    def __contains__(self, ident: object) -> bool:
        if not isinstance(ident, int) or not self.low <= ident <= self.high:
            return False
        block, bit = divmod(ident - self.low, _BLOCK)
        return bool(self._masks[block] >> bit & 1)

    def take(self, ident: int) -> bool:
        """Mark `ident` used; True if it was free."""
        if ident not in self:
            return False
        block, bit = divmod(ident - self.low, _BLOCK)
        self._masks[block] &= ~(1 << bit)
        self._free -= 1
        return True

    def free(self, ident: int) -> bool:
        """Mark `ident` free; True if it was used."""
        if not self.low <= ident <= self.high or ident in self:
            return False
        block, bit = divmod(ident - self.low, _BLOCK)
        self._masks[block] |= 1 << bit
        self._free += 1
        return True

    def next_free(self, start: int) -> int | None:
        """The first free id at or after `start`, wrapping around; None when full."""
        if not self._free:
            return None
        if not self.low <= start <= self.high:
            start = self.low
        first, bit = divmod(start - self.low, _BLOCK)
        above = self._masks[first] >> bit
        if above:
            return start + _lowest_bit(above)
        count = len(self._masks)
        for step in range(1, count + 1):
            block = (first + step) % count
            mask = self._masks[block]
            if block == first:
                mask &= (1 << bit) - 1
            if mask:
                return self.low + block * _BLOCK + _lowest_bit(mask)
        return None


def _lowest_bit(mask: int) -> int:
    return (mask & -mask).bit_length() - 1


@dataclass
class _Held:
    """This node's use of one identity; `refs == 0` means its reference key still has to
    be deleted (the store was unreachable at release)."""

    identity: int
    refs: int


Remaps = dict[int, int]


class ClusterIdentityAllocator:
    """`IdentityAllocator`'s interface, backed by etcd; call `start()` first.

    `on_change()` (attribute) is called on the watch thread after the cluster's
    identities changed; `on_remap({old: new})` when an identity this node held had to
    change because its id was taken by other labels while its master key was missing.
    """

    def __init__(
        self,
        etcd: Etcd,
        session: NodeSession,
        node_name: str,
        *,
        prefix: str = IDENTITIES_PREFIX,
        min_id: int = MIN_ALLOCATED,
        max_id: int = MAX_IDENTITY,
        gc_interval: float = 0.0,
        on_remap: Callable[[Remaps], None] | None = None,
    ) -> None:
        if not node_name or "/" in node_name:
            raise ValueError(f"invalid node name {node_name!r}")
        self.etcd = etcd
        self.session = session
        self.node = node_name
        self.keys = IdentityKeys(prefix)
        self.min_id = min_id
        self.max_id = max_id
        self.gc_interval = gc_interval
        self.on_change: Callable[[], None] | None = None
        self.on_remap = on_remap
        self._lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        self._cache: dict[int, Labels] = {}
        self._ids_of: dict[Labels, set[int]] = {}
        self._held: dict[Labels, _Held] = {}
        self._held_ids: dict[int, Labels] = {}
        self._referenced_at: dict[int, int] = {}
        """Store revision of this node's last reference write per id. A master key
        created after it was deleted and written again since, maybe between two watch
        batches (which coalesce the delete away), and this node's reference with it."""
        self._inflight: set[int] = set()
        self._dirty: set[Labels] = set()
        self._free = FreeIds(min_id, max_id)
        self._cursor = min_id + zlib.crc32(node_name.encode()) % (max_id - min_id + 1)
        self._reflector = Reflector(etcd, self.keys.id_prefix, self._on_sync, self._on_changes)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        session.on_new_lease(self._lease_replaced)

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        """Start mirroring the cluster's identities and the maintenance worker."""
        if self._worker is not None:
            return
        self._reflector.start()
        self._worker = threading.Thread(target=self._work, name="identity worker", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Stop the watch and the worker (the node's keys stay until its lease ends)."""
        self._stop.set()
        self._wake.set()
        self._reflector.stop()
        if self._worker is not None:
            self._worker.join(timeout=self.etcd.timeout * 2)
            self._worker = None

    def wait_synced(self, timeout: float) -> bool:
        """Block until the cache mirrors the store once."""
        return self._reflector.wait_synced(timeout)

    @property
    def reflector(self) -> Reflector:
        """The watch on the master keys (revision, synced, last error for status)."""
        return self._reflector

    # -- the IdentityAllocator interface -------------------------------------

    def allocate(self, labels: Labels) -> int:
        """The cluster identity of `labels`, taking one more reference on this node.

        Labels this node already references need no store access; anything else raises
        KvstoreUnavailable while etcd cannot be reached.
        """
        reserved = reserved_identity(labels)
        if reserved is not None:
            return reserved
        with self._stripe(labels):
            with self._lock:
                held = self._held.get(labels)
                if held is not None:
                    held.refs += 1
                    return held.identity
            ident = self._leased(lambda lease: self._acquire(labels, lease, set()))
            with self._lock:
                self._hold(labels, ident, 1)
            return ident

    def release(self, identity: int) -> bool:
        """Drop one reference; True when this node no longer uses the identity.

        The node's reference key is deleted at once, or by the worker as soon as the
        store answers again.
        """
        with self._lock:
            labels = self._held_ids.get(identity)
        if labels is None:
            return False
        with self._stripe(labels), self._lock:
            held = self._held.get(labels)
            if held is None or held.identity != identity or held.refs == 0:
                return False
            held.refs -= 1
            if held.refs:
                return False
        if not self._finish_release(labels):
            self._wake.set()
        return True

    def labels_of(self, identity: int) -> Labels | None:
        """The labels of `identity` (reserved, in the cluster, or held here), or None."""
        reserved = RESERVED_LABELS.get(identity)
        if reserved is not None:
            return reserved
        with self._lock:
            cached = self._cache.get(identity)
            return cached if cached is not None else self._held_ids.get(identity)

    def lookup(self, labels: Labels) -> int | None:
        """The identity of `labels` without allocating, or None."""
        reserved = reserved_identity(labels)
        if reserved is not None:
            return reserved
        with self._lock:
            held = self._held.get(labels)
            if held is not None:
                return held.identity
            return self._cached_id(labels, set())

    def refcount(self, identity: int) -> int:
        """How many references this node holds on `identity`."""
        with self._lock:
            labels = self._held_ids.get(identity)
            return self._held[labels].refs if labels is not None else 0

    def items(self) -> list[tuple[int, Labels]]:
        """Every known identity (reserved, the cluster's, this node's), sorted by number."""
        with self._lock:
            known = {**self._held_ids, **self._cache}
        return sorted([*RESERVED_LABELS.items(), *known.items()], key=lambda i: i[0])

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache.keys() | self._held_ids.keys())

    # -- restart, republish, gc --------------------------------------------------

    def held(self) -> dict[int, tuple[Labels, int]]:
        """This node's references: id -> (labels, count), for `restore` after a restart."""
        with self._lock:
            return {h.identity: (labels, h.refs) for labels, h in self._held.items() if h.refs}

    def snapshot(self) -> dict[str, Any]:
        """This node's references in `IdentityAllocator.snapshot()`'s format (what the
        agent persists); `held_identities()` reads it back for `restore`."""
        return {
            "version": SNAPSHOT_VERSION,
            "identities": [
                {"id": ident, "labels": labels.to_list(), "refcount": refs}
                for ident, (labels, refs) in sorted(self.held().items())
            ],
        }

    def restore(self, held: Mapping[int, tuple[Labels, int]]) -> Remaps:
        """Take back the identities of a previous run (from `held()`): the same ids,
        their master keys re-created when missing. Returns {old: new} for ids taken by
        other labels meanwhile. Entries that cannot be published now (etcd unreachable)
        are kept and published by the worker when it answers again."""
        remaps: Remaps = {}
        for ident, (labels, refs) in sorted(held.items()):
            if refs <= 0 or reserved_identity(labels) is not None:
                continue
            if not self.min_id <= ident <= self.max_id:
                log.warning("not restoring identity %d: outside %d..%d", ident, *self._span())
                continue
            with self._stripe(labels):
                with self._lock:
                    current = self._held.get(labels)
                    if current is not None:
                        current.refs += refs
                        continue
                    if ident in self._held_ids:
                        log.warning("identity %d is already held for other labels", ident)
                        continue
                    self._hold(labels, ident, refs)
                new = self._publish_or_defer(labels, ident)
                if new is not None and new != ident:
                    remaps[ident] = new
        self._report_remaps(remaps)
        return remaps

    def republish(self) -> Remaps:
        """Write every reference of this node under the current lease and re-create
        missing master keys; returns {old: new} for ids that had to change."""
        with self._lock:
            self._dirty.update(labels for labels, h in self._held.items() if h.refs)
        remaps = self._publish_dirty()
        self._report_remaps(remaps)
        return remaps

    def gc(self) -> int:
        """Delete master keys that no node references; returns how many."""
        masters, _ = self.etcd.list_prefix(self.keys.id_prefix)
        references, _ = self.etcd.list_prefix(self.keys.value_prefix)
        users: dict[str, set[bytes]] = {}
        for kv in references:
            parsed = self.keys.parse_reference(kv.key)
            if parsed is not None:
                users.setdefault(parsed[0], set()).add(kv.value)
        deleted = 0
        for kv in masters:
            ident = self.keys.parse_master(kv.key)
            if ident is None:
                continue
            encoded = kv.value.decode("utf-8", "surrogateescape")
            holders = users.get(encoded, set())
            if str(ident).encode() in holders:
                continue
            refs = self.keys.references(encoded)
            unused = (
                Compare(refs, "value", "!=", str(ident).encode(), range_end=prefix_end(refs))
                if holders
                else Compare(refs, "version", "==", 0, range_end=prefix_end(refs))
            )
            result = self.etcd.txn(
                [Compare(kv.key, "mod", "==", kv.mod_revision), unused], [Delete(kv.key)]
            )
            deleted += result.succeeded
        if deleted:
            log.info("identity gc deleted %d unused identities", deleted)
        return deleted

    # -- store transactions ----------------------------------------------------

    def _leased(self, fn: Callable[[int], T]) -> T:
        """Run `fn(lease)`; if the lease turns out gone, once more with its successor."""
        lease = self.session.lease or self.session.wait_for_lease(self.etcd.timeout)
        if not lease:
            raise KvstoreUnavailable(f"no etcd lease ({self.session.status()['last_error']})")
        try:
            return fn(lease)
        except LeaseNotFound:
            self.session.lease_lost(lease)
            successor = self.session.wait_for_lease(self.etcd.timeout, replacing=lease)
            if not successor:
                raise KvstoreUnavailable("the node's etcd lease is gone") from None
            return fn(successor)

    def _acquire(self, labels: Labels, lease: int, tried: set[int]) -> int:
        """Reference the cluster's id of `labels`, allocating one if there is none.

        A new id needs no node to reference the labels yet; references naming ids that
        turned out unusable (their master holds other labels) only count if they change.
        """
        encoded = encode_labels(labels)
        reference = self.keys.reference(encoded, self.node)
        refs = self.keys.references(encoded)
        unreferenced = Compare(refs, "version", "==", 0, range_end=prefix_end(refs))
        with self._lock:
            candidate = self._cached_id(labels, tried)
        adopted: list[int] = []
        for _ in range(MAX_ATTEMPTS):
            if candidate is not None:
                tried.add(candidate)
                if self._reference(candidate, encoded, reference, lease):
                    return candidate
                with self._lock:
                    candidate = self._cached_id(labels, tried)
                continue
            if adopted:
                ident = adopted.pop(0)
                if self._reference(ident, encoded, reference, lease) or self._recreate(
                    ident, encoded, reference, lease
                ):
                    return ident
                continue
            self._wait_synced()
            ident = self._reserve()
            master = self.keys.master(ident)
            try:
                result = self.etcd.txn(
                    [Compare(master, "version", "==", 0), unreferenced],
                    [Put(master, encoded.encode()), Put(reference, str(ident).encode(), lease)],
                    [Get(master), Get(refs, prefix=True)],
                )
            finally:
                with self._lock:
                    self._inflight.discard(ident)
            if self._referenced(ident, result):
                return ident
            taken, users = result.responses
            assert isinstance(taken, list) and isinstance(users, list)
            with self._lock:
                if taken:  # another node took this id: look elsewhere
                    self._cursor = random.randint(self.min_id, self.max_id)
                elif ident not in self._cache and ident not in self._held_ids:
                    self._free.free(ident)
            adopted = sorted({i for i in map(_as_id, users) if i is not None} - tried)
            tried.update(adopted)
            if users and not adopted:
                newest = max(kv.mod_revision for kv in users)
                unreferenced = Compare(refs, "mod", "<", newest + 1, range_end=prefix_end(refs))
        raise KvstoreError(f"no identity for {labels} after {MAX_ATTEMPTS} attempts")

    def _wait_synced(self) -> None:
        """New ids are only taken with a cache that mirrors the store. While the watch
        is failing, one immediate retry is asked for, with a short wait."""
        reflector = self._reflector
        if reflector.synced:
            return
        failing = bool(reflector.last_error)
        if failing:
            reflector.retry_now()
        if not reflector.wait_synced(min(1.0, self.etcd.timeout) if failing else self.etcd.timeout):
            raise KvstoreUnavailable(
                f"identity cache not synced: {reflector.last_error or 'timeout'}"
            )

    def _reference(self, ident: int, encoded: str, reference: str, lease: int) -> bool:
        """Write this node's reference to `ident` if its master still has the labels."""
        result = self.etcd.txn(
            [Compare(self.keys.master(ident), "value", "==", encoded.encode())],
            [Put(reference, str(ident).encode(), lease)],
        )
        return self._referenced(ident, result)

    def _referenced(self, ident: int, result: TxnResult) -> bool:
        """Note when a transaction that wrote this node's reference to `ident` ran."""
        if result.succeeded:
            with self._lock:
                self._referenced_at[ident] = result.revision
        return result.succeeded

    def _recreate(self, ident: int, encoded: str, reference: str, lease: int) -> bool:
        """Re-create the missing master key of an id every reference of the labels names
        (left behind by a wipe of the master keys), with this node's reference."""
        refs = self.keys.references(encoded)
        master = self.keys.master(ident)
        result = self.etcd.txn(
            [
                Compare(master, "version", "==", 0),
                Compare(refs, "value", "==", str(ident).encode(), range_end=prefix_end(refs)),
            ],
            [Put(master, encoded.encode()), Put(reference, str(ident).encode(), lease)],
        )
        return self._referenced(ident, result)

    def _reserve(self) -> int:
        """A free id for an allocation in flight (kept from other local allocations)."""
        with self._lock:
            ident = self._free.next_free(self._cursor)
            if ident is None:
                raise IdentityExhaustedError(f"no free identity in {self.min_id}..{self.max_id}")
            self._free.take(ident)
            self._inflight.add(ident)
            self._cursor = ident + 1 if ident < self.max_id else self.min_id
            return ident

    def _publish(self, labels: Labels, ident: int, lease: int) -> int:
        """Make sure `ident`'s master key carries `labels` and this node references it;
        another id (from `_acquire`) if `ident` now belongs to other labels."""
        encoded = encode_labels(labels)
        master = self.keys.master(ident)
        reference = self.keys.reference(encoded, self.node)
        for _ in range(MAX_ATTEMPTS):
            if self._reference(ident, encoded, reference, lease):
                return ident
            result = self.etcd.txn(
                [Compare(master, "version", "==", 0)],
                [Put(master, encoded.encode()), Put(reference, str(ident).encode(), lease)],
                [Get(master)],
            )
            if self._referenced(ident, result):
                log.info("re-created identity %d for %s", ident, labels)
                return ident
            current = result.responses[0]
            if isinstance(current, list) and current and current[0].value != encoded.encode():
                break
        log.warning("identity %d of %s was taken by other labels", ident, labels)
        return self._acquire(labels, lease, {ident})

    def _publish_or_defer(self, labels: Labels, ident: int) -> int | None:
        """Publish a held identity now (caller holds its stripe); on failure leave it to
        the worker. Returns the identity it now has, None when deferred."""
        try:
            new = self._leased(lambda lease: self._publish(labels, ident, lease))
        except KvstoreError as exc:
            log.warning("identity %d of %s not published yet: %s", ident, labels, exc)
            with self._lock:
                self._dirty.add(labels)
            self._wake.set()
            return None
        with self._lock:
            self._dirty.discard(labels)
            if new != ident:
                held = self._held.pop(labels)
                self._held_ids.pop(ident, None)
                self._referenced_at.pop(ident, None)
                if ident not in self._cache:
                    self._free.free(ident)
                self._hold(labels, new, held.refs)
        return new

    def _publish_dirty(self) -> Remaps:
        """Publish every held identity marked dirty; stops at the first store failure."""
        remaps: Remaps = {}
        with self._lock:
            pending = list(self._dirty)
        for labels in pending:
            with self._stripe(labels):
                with self._lock:
                    held = self._held.get(labels)
                    if held is None or not held.refs:
                        self._dirty.discard(labels)
                        continue
                    ident = held.identity
                new = self._publish_or_defer(labels, ident)
            if new is None:
                break
            if new != ident:
                remaps[ident] = new
        return remaps

    def _finish_release(self, labels: Labels) -> bool:
        """Delete this node's reference of labels whose count is 0; False if the store
        could not be reached (the entry stays for the worker)."""
        with self._stripe(labels):
            with self._lock:
                held = self._held.get(labels)
                if held is None or held.refs:
                    return True
            try:
                self.etcd.delete(self.keys.reference(encode_labels(labels), self.node))
            except KvstoreError as exc:
                log.warning("release of identity %d deferred: %s", held.identity, exc)
                return False
            with self._lock:
                if held.refs == 0 and self._held.get(labels) is held:
                    del self._held[labels]
                    del self._held_ids[held.identity]
                    self._referenced_at.pop(held.identity, None)
                    self._dirty.discard(labels)
                    if held.identity not in self._cache:
                        self._free.free(held.identity)
        return True

    # -- local state (callers hold self._lock) ---------------------------------

    def _stripe(self, labels: Labels) -> threading.Lock:
        return self._stripes[hash(labels) % _STRIPES]

    def _span(self) -> tuple[int, int]:
        return self.min_id, self.max_id

    def _hold(self, labels: Labels, ident: int, refs: int) -> None:
        self._held[labels] = _Held(ident, refs)
        self._held_ids[ident] = labels
        self._free.take(ident)

    def _cached_id(self, labels: Labels, exclude: set[int]) -> int | None:
        ids = self._ids_of.get(labels, set()) - exclude
        return min(ids) if ids else None

    def _cache_put(self, ident: int, labels: Labels, created: int) -> None:
        old = self._cache.get(ident)
        if old is not None and old != labels:
            self._cache_drop(ident)
        self._cache[ident] = labels
        self._ids_of.setdefault(labels, set()).add(ident)
        self._free.take(ident)
        mine = self._held_ids.get(ident)
        recreated = created > self._referenced_at.get(ident, created)
        if mine is not None and (mine != labels or recreated):
            self._dirty.add(mine)

    def _cache_drop(self, ident: int) -> None:
        labels = self._cache.pop(ident, None)
        if labels is None:
            return
        ids = self._ids_of.get(labels)
        if ids is not None:
            ids.discard(ident)
            if not ids:
                del self._ids_of[labels]
        mine = self._held_ids.get(ident)
        if mine is not None:
            self._dirty.add(mine)
        elif ident not in self._inflight:
            self._free.free(ident)

    def _decode_master(self, kv: KeyValue) -> tuple[int, Labels, int] | None:
        """(id, labels, create revision) of a master key; None if it is not one."""
        ident = self.keys.parse_master(kv.key)
        if ident is None:
            return None
        try:
            labels = decode_labels(kv.value.decode("utf-8", "surrogateescape"))
        except ValueError:
            log.warning("ignoring identity key %s: undecodable labels %r", kv.key, kv.value)
            return None
        return ident, labels, kv.create_revision

    # -- watch callbacks (reflector thread) ------------------------------------

    def _on_sync(self, snapshot: dict[str, KeyValue]) -> None:
        entries = [e for e in map(self._decode_master, snapshot.values()) if e is not None]
        with self._lock:
            self._cache = {}
            self._ids_of = {}
            self._free = FreeIds(self.min_id, self.max_id)
            for ident in (*self._held_ids, *self._inflight):
                self._free.take(ident)
            for ident, labels, created in entries:
                self._cache_put(ident, labels, created)
            self._dirty.update(
                labels
                for ident, labels in self._held_ids.items()
                if self._cache.get(ident) != labels and self._held[labels].refs
            )
            dirty = bool(self._dirty)
        self._changed(dirty)

    def _on_changes(self, upserts: dict[str, KeyValue], deletes: set[str], revision: int) -> None:
        entries = [e for e in map(self._decode_master, upserts.values()) if e is not None]
        with self._lock:
            for key in deletes:
                ident = self.keys.parse_master(key)
                if ident is not None:
                    self._cache_drop(ident)
            for ident, labels, created in entries:
                self._cache_put(ident, labels, created)
            dirty = bool(self._dirty)
        self._changed(dirty)

    def _changed(self, dirty: bool) -> None:
        if dirty:
            self._wake.set()
        if self.on_change is not None:
            self.on_change()

    def _lease_replaced(self, lease: int) -> None:
        with self._lock:
            self._dirty.update(labels for labels, h in self._held.items() if h.refs)
        self._wake.set()

    # -- worker -----------------------------------------------------------------

    def _report_remaps(self, remaps: Remaps) -> None:
        if not remaps:
            return
        log.warning("identities changed after their ids were taken: %s", remaps)
        if self.on_remap is not None:
            self.on_remap(remaps)
        if self.on_change is not None:
            self.on_change()

    def _maintain(self) -> bool:
        """Finish deferred releases and publish dirty identities; False on failure."""
        with self._lock:
            released = [labels for labels, h in self._held.items() if not h.refs]
        for labels in released:
            if not self._finish_release(labels):
                return False
        self._report_remaps(self._publish_dirty())
        with self._lock:
            return not self._dirty

    def _work(self) -> None:
        backoff = Backoff(0.2, 5.0)
        retry: float | None = None
        gc_due = time.monotonic() + self.gc_interval if self.gc_interval else None
        while not self._stop.is_set():
            waits = [retry] if retry is not None else []
            if gc_due is not None:
                waits.append(gc_due - time.monotonic())
            self._wake.wait(max(0.0, min(waits)) if waits else None)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self._maintain():
                backoff.reset()
                retry = None
            else:
                retry = backoff.next()
            if gc_due is not None and time.monotonic() >= gc_due:
                try:
                    self.gc()
                except KvstoreError as exc:
                    log.warning("identity gc failed: %s", exc)
                gc_due = time.monotonic() + self.gc_interval


def held_identities(snapshot: Mapping[str, Any]) -> dict[int, tuple[Labels, int]]:
    """The references of a `snapshot()` (also one of a one-node `IdentityAllocator`)."""
    if snapshot.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"unsupported identity snapshot version {snapshot.get('version')!r}")
    return {
        int(e["id"]): (Labels.parse(e["labels"]), max(1, int(e.get("refcount", 1))))
        for e in snapshot["identities"]
    }


def _as_id(kv: KeyValue) -> int | None:
    text = kv.value.decode("ascii", "replace")
    return int(text) if text.isdigit() else None
