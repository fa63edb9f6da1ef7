"""Connection-tracking table: listing, flushing and garbage collection.

The table is read with `bpf_map_lookup_batch` into flat buffers and expired
entries are removed with `bpf_map_delete_batch`, so a scan costs a few
syscalls per thousand entries instead of two per entry.
"""

from __future__ import annotations

import ctypes
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cilia.datapath import libbpf
from cilia.datapath.events import PROTOCOLS, host_port
from cilia.datapath.layout import CT_NODEPORT, CT_SERVICE, CtEntry, CtKey
from cilia.datapath.maps import CtMap, addr_str

KEY_SIZE = ctypes.sizeof(CtKey)
VALUE_SIZE = ctypes.sizeof(CtEntry)
_U64_PER_VALUE = VALUE_SIZE // 8
_PROTO_OFFSET = CtKey.proto.offset
_EP_OFFSET = CtKey.ep_id.offset
BATCH = 8192
IPPROTO_TCP = 6
CT_F_SEEN_REPLY = 1 << 0
CT_F_CLOSING = 1 << 1
DIRECTIONS = {0: "ingress", 1: "egress", CT_SERVICE: "service", CT_NODEPORT: "nodeport"}
"""The direction field of a key: the endpoint's two, or a load-balancer scope."""


@dataclass
class Chunk:
    """Up to BATCH entries read in one syscall, as raw key and value buffers."""

    keys: ctypes.Array[ctypes.c_uint8]
    values: ctypes.Array[ctypes.c_uint8]
    count: int

    def key_bytes(self, i: int) -> bytes:
        """The raw key of entry i."""
        return bytes(self.keys[i * KEY_SIZE : (i + 1) * KEY_SIZE])

    def expires(self) -> list[int]:
        """Expiry stamps of all entries (first u64 of each value)."""
        u64 = memoryview(self.values).cast("B").cast("Q")
        return u64[0 : self.count * _U64_PER_VALUE : _U64_PER_VALUE].tolist()

    def u32_column(self, offset: int) -> list[int]:
        """The u32 at `offset` of every entry's value."""
        u32 = memoryview(self.values).cast("B").cast("I")
        step = VALUE_SIZE // 4
        return u32[offset // 4 : self.count * step : step].tolist()

    def protos(self) -> bytes:
        """Protocol byte of each key."""
        return bytes(self.keys)[_PROTO_OFFSET : self.count * KEY_SIZE : KEY_SIZE]


def chunks(ct: CtMap) -> Iterator[Chunk]:
    """Read the whole table in batches (entries added meanwhile may be missed)."""
    for keys, values, n in ct.batches(BATCH):
        yield Chunk(keys, values, n)


def delete_keys(ct: CtMap, keys: list[bytes]) -> int:
    """Delete raw keys in batches; returns how many were deleted."""
    deleted = 0
    for start in range(0, len(keys), BATCH):
        part = keys[start : start + BATCH]
        buf = (ctypes.c_uint8 * (KEY_SIZE * len(part))).from_buffer_copy(b"".join(part))
        deleted += libbpf.map_delete_batch(ct.fd, buf, len(part), KEY_SIZE)
    return deleted


@dataclass
class ScanResult:
    """What one GC scan saw and did."""

    entries: int = 0
    expired: int = 0
    idle_non_tcp: int = 0
    deleted: int = 0
    max_entries: int = 0

    @property
    def remaining(self) -> int:
        """Entries left after the scan."""
        return self.entries - self.deleted


def gc_scan(
    ct: CtMap, now: int, non_tcp_keep_after: int | None = None, pressure: float = 0.5
) -> ScanResult:
    """Delete expired entries. When the table is at least `pressure` full and
    `non_tcp_keep_after` is given, also delete non-TCP entries expiring no later
    than now + non_tcp_keep_after (idle ones): aggressive non-TCP collection."""
    res = ScanResult(max_entries=libbpf.map_max_entries(ct.fd))
    expired: list[bytes] = []
    idle: list[bytes] = []
    cutoff = now + (non_tcp_keep_after or 0)
    for chunk in chunks(ct):
        res.entries += chunk.count
        protos = chunk.protos()
        for i, exp in enumerate(chunk.expires()):
            if exp < now:
                expired.append(chunk.key_bytes(i))
            elif non_tcp_keep_after is not None and exp <= cutoff and protos[i] != IPPROTO_TCP:
                idle.append(chunk.key_bytes(i))
    res.expired = len(expired)
    if res.entries >= pressure * res.max_entries:
        res.idle_non_tcp = len(idle)
        expired += idle
    res.deleted = delete_keys(ct, expired)
    return res


def iterate_only(ct: CtMap) -> int:
    """Walk the table key by key without deleting (the baseline GC is compared with)."""
    return sum(1 for _ in ct.items())


def flush(ct: CtMap, ep_id: int | None = None) -> int:
    """Delete every entry (of one endpoint); returns how many."""
    doomed: list[bytes] = []
    for chunk in chunks(ct):
        for i in range(chunk.count):
            key = chunk.key_bytes(i)
            if ep_id is None or int.from_bytes(key[_EP_OFFSET : _EP_OFFSET + 2], "little") == ep_id:
                doomed.append(key)
    return delete_keys(ct, doomed)


def rev_nats(chunk: Chunk) -> list[int]:
    """The service id of every entry of a chunk (0: not a translated flow)."""
    return chunk.u32_column(CtEntry.rev_nat.offset)


def backend_ids(chunk: Chunk) -> list[int]:
    """The backend id of every entry of a chunk (set in service entries)."""
    return chunk.u32_column(CtEntry.backend_id.offset)


def values(chunk: Chunk) -> Iterator[tuple[CtKey, CtEntry]]:
    """The entries of a chunk, decoded."""
    raw = memoryview(chunk.values).cast("B")
    for i in range(chunk.count):
        key = CtKey.from_buffer_copy(chunk.key_bytes(i))
        yield key, CtEntry.from_buffer_copy(bytes(raw[i * VALUE_SIZE : (i + 1) * VALUE_SIZE]))


def entries(ct: CtMap, now: int, ep_id: int | None = None) -> list[dict[str, Any]]:
    """The table as JSON-able rows (optionally one endpoint's)."""
    rows = []
    for chunk in chunks(ct):
        for k, v in values(chunk):
            if ep_id is None or k.ep_id == ep_id:
                rows.append(_row(k, v, now))
    rows.sort(key=lambda r: (r["endpoint"], r["direction"], r["protocol"], r["source"]))
    return rows


def _row(k: CtKey, v: CtEntry, now: int) -> dict[str, Any]:
    proto = PROTOCOLS.get(k.proto, str(k.proto))
    flags = [
        n
        for bit, n in ((CT_F_SEEN_REPLY, "seen-reply"), (CT_F_CLOSING, "closing"))
        if v.flags & bit
    ]
    if k.proto == IPPROTO_TCP:
        state = (
            "closing"
            if v.flags & CT_F_CLOSING
            else "established"
            if v.flags & CT_F_SEEN_REPLY
            else "syn"
        )
    else:
        state = "replied" if v.flags & CT_F_SEEN_REPLY else "new"
    row: dict[str, Any] = {
        "endpoint": k.ep_id,
        "direction": DIRECTIONS.get(k.direction, str(k.direction)),
        "protocol": proto,
        "source": host_port(addr_str(k.saddr), socket.ntohs(k.sport)),
        "destination": host_port(addr_str(k.daddr), socket.ntohs(k.dport)),
        "state": state,
        "flags": flags,
        "expires-in": int(v.expires) - now,
        "packets": int(v.packets),
        "bytes": int(v.bytes),
    }
    if v.rev_nat:
        row["service-id"] = int(v.rev_nat)
    if v.backend_id:
        row["backend-id"] = int(v.backend_id)
    return row
