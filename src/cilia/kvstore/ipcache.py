"""The shared ipcache: which identity each endpoint IP of the cluster has, and its node.

Layout: `cilia/state/ip/v1/default/<ip>` -> JSON, under the owning node's lease:

- `IP`: the endpoint's IPv4 or IPv6 address (the same as the key's last part);
- `ID`: its numeric security identity;
- `Node`: the name of the node running it;
- `HostIP`: that node's underlay address, the tunnel endpoint packets to `IP` go to.

`IP`, `ID` and `HostIP` mean what they mean in the reference's `IPIdentityPair`; `Node` is
ours. One key per IP: a reused IP is a new value of the same key, so the watch, which
delivers each key's changes in revision order, always ends on the latest owner.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cilia.kvstore.client import (
    Compare,
    Delete,
    Etcd,
    KeyValue,
    KvstoreError,
    LeaseNotFound,
    MirrorView,
    Put,
    Reflector,
)
from cilia.kvstore.session import NodeSession

log = logging.getLogger(__name__)

IP_PREFIX = "cilia/state/ip/v1/default/"
MAX_TXN_OPS = 128
"""etcd's default `--max-txn-ops`: writes are batched in transactions of at most this many."""


class IpEntry(BaseModel):
    """The JSON value of an ipcache key."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    ip: str = Field(alias="IP")
    identity: int = Field(alias="ID", ge=0)
    node: str = Field(alias="Node")
    host_ip: str = Field(alias="HostIP")

    @field_validator("ip")
    @classmethod
    def _address(cls, value: str) -> str:
        return str(ipaddress.ip_address(value))

    @field_validator("host_ip")
    @classmethod
    def _ipv4(cls, value: str) -> str:
        return str(ipaddress.IPv4Address(value))

    def to_json(self) -> bytes:
        """The stored value."""
        return self.model_dump_json(by_alias=True).encode()


@dataclass(frozen=True)
class RemoteIp:
    """An endpoint IP of another node: its identity and where to tunnel packets for it."""

    ip: str
    identity: int
    node: str
    host_ip: str


def ip_key(ip: str, root: str = "") -> str:
    """The key of an endpoint IP."""
    return f"{root}{IP_PREFIX}{ipaddress.ip_address(ip)}"


class IpcachePublisher:
    """Makes this node's ipcache keys exactly what `publish` was last given.

    Only differences are written, in transactions of at most MAX_TXN_OPS puts. A key is
    deleted only while it still holds what this node wrote (same mod_revision), so another
    node's mapping of a reused IP survives. The first sync, and the first under a new
    lease, adopts the keys this node left in the store (before a restart, or under a lost
    lease) and moves the wanted ones to the current lease. When etcd is unreachable or no
    lease is held, `publish` and `sync` return False; the next `sync`, or the new-lease
    callback, catches up.
    """

    def __init__(
        self, etcd: Etcd, session: NodeSession, node: str, host_ip: str, root: str = ""
    ) -> None:
        self._etcd = etcd
        self._session = session
        self._node = node
        self._host_ip = str(ipaddress.IPv4Address(host_ip))
        self._root = root
        self._lock = threading.Lock()
        self._desired: dict[str, int] = {}
        self._written: dict[str, tuple[int | None, int]] | None = None
        """IP -> (identity, mod_revision) of the keys this node holds; None: not yet read."""
        self._lease = 0
        session.on_new_lease(self._new_lease)

    def publish(self, entries: Mapping[str, int]) -> bool:
        """Make the node's entries exactly `entries` (address -> identity); True when done."""
        desired = {str(ipaddress.ip_address(ip)): identity for ip, identity in entries.items()}
        with self._lock:
            self._desired = desired
        return self.sync()

    def sync(self) -> bool:
        """Write what differs from the last publish; True when the store matches it."""
        with self._lock:
            lease = self._session.lease
            if not lease:  # none yet: the new-lease callback syncs
                return False
            try:
                self._sync(lease)
            except LeaseNotFound:
                self._session.lease_lost(lease)
                return False
            except KvstoreError as exc:
                log.warning("ipcache entries not published: %s", exc)
                return False
            return True

    def _new_lease(self, _lease: int) -> None:
        with self._lock:
            self._written = None
        self.sync()

    def _adopt(self, lease: int) -> dict[str, tuple[int | None, int]]:
        """The keys of this node already in the store; those under another lease (left by
        a previous run) get identity None, so they are rewritten or deleted."""
        written: dict[str, tuple[int | None, int]] = {}
        for kv in self._etcd.list_prefix(f"{self._root}{IP_PREFIX}")[0]:
            try:
                entry = IpEntry.model_validate_json(kv.value)
            except ValidationError:
                continue
            if entry.node == self._node:
                identity = entry.identity if kv.lease == lease else None
                written[entry.ip] = (identity, kv.mod_revision)
        return written

    def _sync(self, lease: int) -> None:
        if self._written is None or lease != self._lease:
            self._written = self._adopt(lease)
            self._lease = lease
        written = self._written
        puts = [ip for ip, ident in self._desired.items() if written.get(ip, (None,))[0] != ident]
        for start in range(0, len(puts), MAX_TXN_OPS):
            chunk = puts[start : start + MAX_TXN_OPS]
            ops = [Put(ip_key(ip, self._root), self._entry(ip).to_json(), lease) for ip in chunk]
            revision = self._etcd.txn([], ops).revision
            for ip in chunk:
                written[ip] = (self._desired[ip], revision)
        for ip in [ip for ip in written if ip not in self._desired]:
            key = ip_key(ip, self._root)
            self._etcd.txn([Compare(key, "mod", "==", written[ip][1])], [Delete(key)])
            del written[ip]

    def _entry(self, ip: str) -> IpEntry:
        return IpEntry(ip=ip, identity=self._desired[ip], node=self._node, host_ip=self._host_ip)


class IpMirror:
    """The latest state of every ipcache key, whatever order events arrive in.

    Each IP keeps the revision of its last change: an event older than that (a delete or
    put delivered after a newer state) is ignored, and so is anything not newer than the
    last re-list, which replaces everything. Deleted IPs stay as tombstones until the next
    re-list, so a late event older than the delete cannot bring a mapping back.
    """

    def __init__(self, prefix: str, local_node: str) -> None:
        self._prefix = prefix
        self._local = local_node
        self._entries: dict[str, tuple[int, RemoteIp | None]] = {}
        """IP -> (revision of its last change, its remote entry; None when deleted, this
        node's own or undecodable)."""
        self._floor = 0

    def remote(self) -> dict[str, RemoteIp]:
        """Other nodes' endpoint IPs."""
        return {ip: e for ip, (_, e) in self._entries.items() if e is not None}

    def reset(self, snapshot: Mapping[str, KeyValue], revision: int) -> None:
        """Replace everything by a listing taken at `revision` or later."""
        self._entries = {
            self._ip(kv.key): (kv.mod_revision, self._decode(kv)) for kv in snapshot.values()
        }
        self._floor = max([revision, *(kv.mod_revision for kv in snapshot.values())])

    def update(self, upserts: Mapping[str, KeyValue], deletes: set[str], revision: int) -> bool:
        """Apply a watch batch (deletes at `revision`); True when the remote map changed."""
        changed = False
        for key in deletes:
            changed |= self._record(self._ip(key), revision, None)
        for kv in upserts.values():
            changed |= self._record(self._ip(kv.key), kv.mod_revision, self._decode(kv))
        return changed

    def _ip(self, key: str) -> str:
        return key.removeprefix(self._prefix)

    def _record(self, ip: str, revision: int, entry: RemoteIp | None) -> bool:
        """Keep `entry` as the IP's state at `revision` unless a newer one is held; True
        when the remote entry changed."""
        held = self._entries.get(ip)
        if revision <= self._floor or (held is not None and held[0] > revision):
            return False
        self._entries[ip] = (revision, entry)
        return (held[1] if held else None) != entry

    def _decode(self, kv: KeyValue) -> RemoteIp | None:
        try:
            entry = IpEntry.model_validate_json(kv.value)
        except ValidationError as exc:
            log.warning("ignoring undecodable ipcache entry %s: %s", kv.key, exc)
            return None
        if entry.ip != self._ip(kv.key):
            log.warning("ignoring ipcache entry %s naming another IP %s", kv.key, entry.ip)
            return None
        if entry.node == self._local:
            return None
        return RemoteIp(entry.ip, entry.identity, entry.node, entry.host_ip)


class IpcacheWatcher(MirrorView):
    """Mirrors the ipcache prefix (an `IpMirror` fed by a Reflector) and hands `on_change`
    every other node's IPs after each re-list and each change of them."""

    def __init__(
        self,
        etcd: Etcd,
        local_node: str,
        on_change: Callable[[dict[str, RemoteIp]], None],
        root: str = "",
    ) -> None:
        self._on_change = on_change
        self._lock = threading.Lock()
        self._mirror = IpMirror(f"{root}{IP_PREFIX}", local_node)
        self._reflector = Reflector(etcd, f"{root}{IP_PREFIX}", self._synced, self._changed)

    def remote(self) -> dict[str, RemoteIp]:
        """Other nodes' endpoint IPs."""
        with self._lock:
            return self._mirror.remote()

    def _synced(self, snapshot: dict[str, KeyValue]) -> None:
        with self._lock:
            self._mirror.reset(snapshot, self._reflector.revision)
            remote = self._mirror.remote()
        self._on_change(remote)

    def _changed(self, upserts: dict[str, KeyValue], deletes: set[str], revision: int) -> None:
        with self._lock:
            changed = self._mirror.update(upserts, deletes, revision)
            remote = self._mirror.remote()
        if changed:
            self._on_change(remote)
