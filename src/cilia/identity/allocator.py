"""Local allocation of numeric identities for label sets."""

from __future__ import annotations

import threading
from typing import Any

from cilia.identity.reserved import (
    MAX_IDENTITY,
    MIN_ALLOCATED,
    RESERVED_LABELS,
    reserved_identity,
)
from cilia.labels import Labels

SNAPSHOT_VERSION = 1


class IdentityExhaustedError(RuntimeError):
    """Every identity of the allocatable range is in use."""


class IdentityAllocator:
    """Maps label sets to numeric identities; equal labels share one refcounted identity."""

    def __init__(self, min_id: int = MIN_ALLOCATED, max_id: int = MAX_IDENTITY) -> None:
        self._min = min_id
        self._max = max_id
        self._next = min_id
        self._by_id: dict[int, Labels] = {}
        self._by_labels: dict[Labels, int] = {}
        self._refs: dict[int, int] = {}
        self._lock = threading.Lock()

    def allocate(self, labels: Labels) -> int:
        """The identity of `labels`, allocating it (or taking one more reference)."""
        reserved = reserved_identity(labels)
        if reserved is not None:
            return reserved
        with self._lock:
            ident = self._by_labels.get(labels)
            if ident is None:
                ident = self._free_id()
                self._by_id[ident] = labels
                self._by_labels[labels] = ident
                self._refs[ident] = 0
            self._refs[ident] += 1
            return ident

    def _free_id(self) -> int:
        span = self._max - self._min + 1
        for offset in range(span):
            candidate = self._min + (self._next - self._min + offset) % span
            if candidate not in self._by_id:
                self._next = candidate + 1 if candidate < self._max else self._min
                return candidate
        raise IdentityExhaustedError(f"no free identity in {self._min}..{self._max}")

    def release(self, identity: int) -> bool:
        """Drop one reference; True when the identity was freed."""
        with self._lock:
            if identity not in self._refs:
                return False
            self._refs[identity] -= 1
            if self._refs[identity] > 0:
                return False
            del self._refs[identity]
            del self._by_labels[self._by_id.pop(identity)]
            return True

    def labels_of(self, identity: int) -> Labels | None:
        """The labels of `identity` (reserved or allocated), or None."""
        return RESERVED_LABELS.get(identity) or self._by_id.get(identity)

    def lookup(self, labels: Labels) -> int | None:
        """The identity of `labels` without allocating, or None."""
        reserved = reserved_identity(labels)
        return reserved if reserved is not None else self._by_labels.get(labels)

    def refcount(self, identity: int) -> int:
        """How many references hold an allocated identity (0 if not allocated)."""
        return self._refs.get(identity, 0)

    def items(self) -> list[tuple[int, Labels]]:
        """Every known identity, reserved first, sorted by number."""
        with self._lock:
            return sorted([*RESERVED_LABELS.items(), *self._by_id.items()], key=lambda i: i[0])

    def __len__(self) -> int:
        return len(self._by_id)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-serialisable state from which `restore` rebuilds the same identities."""
        with self._lock:
            return {
                "version": SNAPSHOT_VERSION,
                "next": self._next,
                "identities": [
                    {"id": i, "labels": self._by_id[i].to_list(), "refcount": self._refs[i]}
                    for i in sorted(self._by_id)
                ],
            }

    @classmethod
    def restore(
        cls, state: dict[str, Any], min_id: int = MIN_ALLOCATED, max_id: int = MAX_IDENTITY
    ) -> IdentityAllocator:
        """Rebuild an allocator from `snapshot()` output, keeping every identity number."""
        if state.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported identity snapshot version {state.get('version')!r}")
        alloc = cls(min_id, max_id)
        for entry in state["identities"]:
            ident, labels = int(entry["id"]), Labels.parse(entry["labels"])
            if not min_id <= ident <= max_id or ident in alloc._by_id:
                raise ValueError(f"invalid identity {ident} in snapshot")
            if labels in alloc._by_labels:
                raise ValueError(f"duplicate labels {labels} in snapshot")
            alloc._by_id[ident] = labels
            alloc._by_labels[labels] = ident
            alloc._refs[ident] = max(1, int(entry.get("refcount", 1)))
        nxt = int(state.get("next", min_id))
        alloc._next = nxt if min_id <= nxt <= max_id else min_id
        return alloc
