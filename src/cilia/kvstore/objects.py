"""The cluster's objects in etcd (the role of Kubernetes' apiserver), versioned.

Layout: `cilia/objects/v1/<Kind>/<namespace>/<name>` -> the manifest as JSON (what
`cilia.agent.objects.dump` gives; Namespaces have an empty namespace part:
`cilia/objects/v1/Namespace//prod`). The part after `cilia/objects/v1/` is the object's
`Manifest.key`. A key's mod_revision is the object's version (kubectl's resourceVersion):
every write is one transaction comparing the versions it read, so a concurrent change is
detected and the whole batch refused, never half-applied or silently overwritten.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from cilia.k8s.manifests import Manifest, dump, parse_manifest
from cilia.k8s.manifests import ObjectConflict as StoreConflict
from cilia.kvstore.client import (
    Compare,
    Delete,
    Etcd,
    Get,
    KeyValue,
    MirrorView,
    Put,
    Reflector,
    TxnResponse,
)
from cilia.policy.errors import ValidationError

log = logging.getLogger(__name__)

OBJECTS_PREFIX = "cilia/objects/v1/"
MAX_TXN_OPS = 128
"""etcd's default `--max-txn-ops`: a batch changes at most this many objects."""

ApplyAction = Literal["created", "configured", "unchanged"]
DeleteAction = Literal["deleted", "not found"]


class ObjectConflict(StoreConflict):
    """Objects changed concurrently (or not at the expected version): nothing was written."""


def object_key(key: str, root: str = "") -> str:
    """The etcd key of an object, from its `Manifest.key` (`Kind/namespace/name`)."""
    return f"{root}{OBJECTS_PREFIX}{key}"


def encode(obj: Manifest) -> bytes:
    """The stored value of an object (stable: sorted keys)."""
    return json.dumps(dump(obj), sort_keys=True, separators=(",", ":")).encode()


def decode(raw: bytes) -> Manifest:
    """An object from its stored value; raises ValueError when it is not a valid one."""
    try:
        return parse_manifest(json.loads(raw))
    except ValidationError as exc:
        raise ValueError(f"{exc.path}: {exc.reason}" if exc.path else exc.reason) from None


def _name(key: str) -> str:
    """`pod/default/web` from `Pod/default/web`; `namespace/prod` from `Namespace//prod`."""
    kind, namespace, name = key.split("/", 2)
    return f"{kind.lower()}/{namespace}/{name}" if namespace else f"{kind.lower()}/{name}"


def _stale(key: str, version: int, expected: int) -> str:
    if expected == 0:
        return f"{_name(key)} already exists (version {version})"
    if version == 0:
        return f"{_name(key)} no longer exists (expected version {expected})"
    return f"{_name(key)} was changed by someone else (version {version}, expected {expected})"


@dataclass(frozen=True)
class ApplyResult:
    """What one apply did: per object key (in input order) its action and new version."""

    revision: int
    """The store revision the transaction produced (or read, when nothing changed)."""
    actions: dict[str, ApplyAction]
    versions: dict[str, int]


@dataclass(frozen=True)
class DeleteResult:
    """What one delete did, per object key in input order."""

    revision: int
    actions: dict[str, DeleteAction]


class ClusterObjects:
    """Reads and versioned writes of the cluster's objects."""

    def __init__(self, etcd: Etcd, root: str = "", max_txn_ops: int = MAX_TXN_OPS) -> None:
        self._etcd = etcd
        self._root = root
        self._max_ops = max_txn_ops

    def get(self, key: str) -> tuple[Manifest, int] | None:
        """The object stored under `Kind/namespace/name` and its version, or None."""
        kv = self._etcd.get(object_key(key, self._root))
        return None if kv is None else (decode(kv.value), kv.mod_revision)

    def list(self, kind: str | None = None) -> dict[str, tuple[Manifest, int]]:
        """Every object (of `kind`), by key, with its version; undecodable ones skipped."""
        prefix = object_key(f"{kind}/" if kind else "", self._root)
        out: dict[str, tuple[Manifest, int]] = {}
        for kv in self._etcd.list_prefix(prefix)[0]:
            key = kv.key.removeprefix(object_key("", self._root))
            try:
                out[key] = (decode(kv.value), kv.mod_revision)
            except ValueError as exc:
                log.warning("skipping undecodable object %s: %s", kv.key, exc)
        return out

    def apply(
        self, manifests: Sequence[Manifest], expected: Mapping[str, int] | None = None
    ) -> ApplyResult:
        """Create or update a batch of objects in one transaction.

        Each object's version must still be the one read (or `expected[key]` when given,
        0 meaning "must not exist"); unchanged objects are not written. Raises
        ObjectConflict naming the objects that differ; then nothing is written.
        """
        keys = [m.key for m in manifests]
        current = self._read(keys, expected or {})
        actions: dict[str, ApplyAction] = {}
        writes: dict[str, bytes | None] = {}
        for m in manifests:
            stored, _ = current[m.key]
            value = encode(m)
            if stored == value:
                actions[m.key] = "unchanged"
                continue
            actions[m.key] = "created" if stored is None else "configured"
            writes[m.key] = value
        revision = self._commit(current, writes)
        versions = {
            key: current[key][1] if action == "unchanged" else revision
            for key, action in actions.items()
        }
        return ApplyResult(revision, actions, versions)

    def delete(
        self, keys: Sequence[str], expected: Mapping[str, int] | None = None
    ) -> DeleteResult:
        """Delete objects by key in one transaction, guarded like `apply`."""
        current = self._read(keys, expected or {})
        actions: dict[str, DeleteAction] = {
            key: "not found" if current[key][0] is None else "deleted" for key in keys
        }
        deletes: dict[str, bytes | None] = {k: None for k, a in actions.items() if a == "deleted"}
        return DeleteResult(self._commit(current, deletes), actions)

    def _read(
        self, keys: Sequence[str], expected: Mapping[str, int]
    ) -> dict[str, tuple[bytes | None, int]]:
        """Stored value and version (0 when absent) of each key, read in one snapshot;
        raises ObjectConflict when a version differs from `expected`."""
        if len(set(keys)) != len(keys):
            raise ValueError("a batch names the same object twice")
        if len(keys) > self._max_ops:
            raise ValueError(
                f"{len(keys)} objects at once; one transaction holds at most {self._max_ops} "
                "(etcd --max-txn-ops): split the batch"
            )
        reads = self._etcd.txn([], [Get(object_key(key, self._root)) for key in keys])
        current = self._versions(keys, reads.responses)
        stale = [
            _stale(key, current[key][1], version)
            for key, version in expected.items()
            if key in current and current[key][1] != version
        ]
        if stale:
            raise ObjectConflict("; ".join(stale) + "; re-apply")
        return current

    def _versions(
        self, keys: Sequence[str], responses: Sequence[TxnResponse]
    ) -> dict[str, tuple[bytes | None, int]]:
        out: dict[str, tuple[bytes | None, int]] = {}
        for key, found in zip(keys, responses, strict=True):
            kv = found[0] if isinstance(found, list) and found else None
            out[key] = (None, 0) if kv is None else (kv.value, kv.mod_revision)
        return out

    def _commit(
        self, read: Mapping[str, tuple[bytes | None, int]], writes: Mapping[str, bytes | None]
    ) -> int:
        """Write (bytes) or delete (None) `writes` if no object of the batch changed since
        `read`; returns the store revision."""
        keys = list(read)
        guards = [
            Compare(object_key(key, self._root), "mod", "==", version)
            for key, (_, version) in read.items()
        ]
        ops = [
            Delete(object_key(key, self._root))
            if value is None
            else Put(object_key(key, self._root), value)
            for key, value in writes.items()
        ]
        recheck = [Get(object_key(key, self._root)) for key in keys]
        result = self._etcd.txn(guards, ops, recheck)
        if result.succeeded:
            return result.revision
        now = self._versions(keys, result.responses)
        if writes and all(now[key][0] == value for key, value in writes.items()):
            # our own write, applied once already before the client retried it
            return max(now[key][1] for key in writes) if any(writes.values()) else result.revision
        changed = [_name(key) for key in keys if now[key][1] != read[key][1]]
        verb = "was" if len(changed) == 1 else "were"
        raise ObjectConflict(
            f"{', '.join(changed) or 'an object of the batch'} {verb} changed by someone "
            "else; re-apply"
        )


class ObjectWatcher(MirrorView):
    """Mirrors the cluster's objects: `on_sync` with all of them after every (re-)list,
    `on_change` with what changed after each watch batch. Keys are `Manifest.key`s.

    An undecodable value is logged and skipped (the object keeps its last good version).
    """

    def __init__(
        self,
        etcd: Etcd,
        on_sync: Callable[[dict[str, Manifest], int], None],
        on_change: Callable[[dict[str, Manifest], set[str], int], None],
        root: str = "",
    ) -> None:
        self._on_sync = on_sync
        self._on_change = on_change
        self._prefix = object_key("", root)
        self._reflector = Reflector(etcd, self._prefix, self._synced, self._changed)

    def _decoded(self, kvs: Mapping[str, KeyValue]) -> dict[str, Manifest]:
        out: dict[str, Manifest] = {}
        for key, kv in kvs.items():
            try:
                out[key.removeprefix(self._prefix)] = decode(kv.value)
            except ValueError as exc:
                log.warning("skipping undecodable object %s: %s", key, exc)
        return out

    def _synced(self, snapshot: dict[str, KeyValue]) -> None:
        # the newest object version is a lower bound of the listing's revision
        newest = max([self._reflector.revision, *(kv.mod_revision for kv in snapshot.values())])
        self._on_sync(self._decoded(snapshot), newest)

    def _changed(self, upserts: dict[str, KeyValue], deletes: set[str], revision: int) -> None:
        gone = {key.removeprefix(self._prefix) for key in deletes}
        self._on_change(self._decoded(upserts), gone, revision)
