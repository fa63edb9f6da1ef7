"""The load balancer's maps: the desired table of frontends and backends made real.

Per frontend (address, port, protocol) the kernel holds a service entry (its id,
`rev_nat`, and backend count), slots 1..count naming backend ids, the backends,
and the frontend again under its id for replies. Backend ids belong to one
service, so taking a backend out of one service never touches another's flows.
Writes are ordered so that a packet never meets a slot without its backend:
new backends and slots first, then the count, then what went away. A removed
backend's flows, and a removed frontend's, lose their conntrack entries, so they
end instead of wandering to another backend.
"""

from __future__ import annotations

import ctypes
import heapq
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from cilia.datapath import conntrack
from cilia.datapath.events import host_port
from cilia.datapath.layout import (
    CT_SERVICE,
    LB_F_NODEPORT,
    CtKey,
    LbAddress,
    LbKey,
    LbService,
    LbSlotKey,
)
from cilia.datapath.maps import BpfMap, CtMap, addr, addr_bytes, addr_str
from cilia.service.model import Backend, Frontend
from cilia.service.model import LbService as DesiredService

PROTOCOLS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items()}


def _key(fe: Frontend) -> LbKey:
    return LbKey(addr(fe.address), socket.htons(fe.port), PROTOCOLS[fe.protocol], 0)


def _address(b: Backend | Frontend) -> LbAddress:
    return LbAddress(addr(b.address), socket.htons(b.port), 0, 0)


class IdPool:
    """Ids from 1 up, freed ones taken again first (smallest first)."""

    def __init__(self, used: Iterable[int]) -> None:
        taken = set(used)
        self._next = max(taken, default=0) + 1
        self._free = sorted(set(range(1, self._next)) - taken)  # a heap

    def take(self) -> int:
        """A free id."""
        if self._free:
            return heapq.heappop(self._free)
        self._next += 1
        return self._next - 1

    def give(self, ident: int) -> None:
        """Return an id to the pool."""
        heapq.heappush(self._free, ident)


@dataclass
class RealizedFrontend:
    """What the kernel holds for one frontend."""

    rev_nat: int
    flags: int
    backends: list[tuple[Backend, int]] = field(default_factory=list)
    """(backend, backend id) in slot order."""


@dataclass(frozen=True)
class LbSyncReport:
    """What one sync wrote: frontends added, changed and removed, CT entries ended."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    flows_ended: int = 0


class LoadBalancerMaps:
    """The pinned LB maps of one datapath and what was realized in them."""

    def __init__(self, maps_dir: str, ct: CtMap) -> None:
        self.services = BpfMap(f"{maps_dir}/cilia_lb_services", LbKey, LbService)
        self.slots = BpfMap(f"{maps_dir}/cilia_lb_slots", LbSlotKey, ctypes.c_uint32)
        self.backends = BpfMap(f"{maps_dir}/cilia_lb_backends", ctypes.c_uint32, LbAddress)
        self.revnat = BpfMap(f"{maps_dir}/cilia_lb_revnat", ctypes.c_uint32, LbAddress)
        self.ct = ct
        self.realized: dict[Frontend, RealizedFrontend] = self._read_back()
        self._nat_ids = IdPool(r.rev_nat for r in self.realized.values())
        self._backend_ids = IdPool(bid for _, bid in self._all_backend_ids())

    def close(self) -> None:
        """Release the map fds (the pins stay)."""
        for m in (self.services, self.slots, self.backends, self.revnat):
            m.close()

    def _kernel_table(
        self,
    ) -> Iterator[tuple[LbKey, LbService, list[tuple[int, int, LbAddress | None]]]]:
        """Each frontend the kernel holds, with its slots (slot, backend id, backend:
        None when the slot or its backend is missing)."""
        backends = {int(k.value): v for k, v in self.backends.items()}
        for k, v in self.services.items():
            slots = []
            for slot in range(1, int(v.count) + 1):
                bid = self.slots.lookup(LbSlotKey(v.rev_nat, slot))
                ident = int(bid.value) if bid is not None else 0
                slots.append((slot, ident, backends.get(ident) if bid is not None else None))
            yield k, v, slots

    def _read_back(self) -> dict[Frontend, RealizedFrontend]:
        """The table a previous agent left, rebuilt from the maps."""
        out: dict[Frontend, RealizedFrontend] = {}
        for k, v, slots in self._kernel_table():
            proto = PROTOCOL_NAMES.get(int(k.proto))
            if proto is None:
                continue
            fe = Frontend(addr_str(k.addr), socket.ntohs(k.port), proto)  # type: ignore[arg-type]
            rec = RealizedFrontend(int(v.rev_nat), int(v.flags))
            rec.backends = [
                (Backend(addr_str(b.addr), socket.ntohs(b.port)), bid)
                for _, bid, b in slots
                if b is not None
            ]
            out[fe] = rec
        return out

    def sync(self, desired: Sequence[DesiredService]) -> LbSyncReport:
        """Make the maps hold exactly `desired` (frontends in either family)."""
        wanted: dict[Frontend, DesiredService] = {d.frontend: d for d in desired}
        gone = [fe for fe in self.realized if fe not in wanted]
        ended = 0
        for fe in gone:
            ended += self._remove(fe)
        new = [fe for fe in wanted if fe not in self.realized]
        for fe in new:
            rev_nat = self._nat_ids.take()
            self.revnat.update(ctypes.c_uint32(rev_nat), _address(fe))
            self.realized[fe] = RealizedFrontend(rev_nat, -1)  # no flags yet: written below
        changed = 0
        for fe, d in wanted.items():
            rec = self.realized[fe]
            flags = LB_F_NODEPORT if d.kind == "NodePort" else 0
            if [b for b, _ in rec.backends] == list(d.backends) and rec.flags == flags:
                continue
            if fe not in new:
                changed += 1
            ended += self._write(fe, rec, d.backends, flags)
        return LbSyncReport(len(new), changed, len(gone), ended)

    def _write(
        self, fe: Frontend, rec: RealizedFrontend, backends: Sequence[Backend], flags: int
    ) -> int:
        kept = {b: bid for b, bid in rec.backends if b in backends}
        for b in backends:
            if b in kept:
                continue
            bid = self._backend_ids.take()
            self.backends.update(ctypes.c_uint32(bid), _address(b))
            kept[b] = bid
        for slot, b in enumerate(backends, start=1):
            self.slots.update(LbSlotKey(rec.rev_nat, slot), ctypes.c_uint32(kept[b]))
        self.services.update(_key(fe), LbService(rec.rev_nat, len(backends), flags))
        for slot in range(len(backends) + 1, len(rec.backends) + 1):
            self.slots.delete(LbSlotKey(rec.rev_nat, slot))
        removed = [(b, bid) for b, bid in rec.backends if b not in backends]
        for _, bid in removed:
            self.backends.delete(ctypes.c_uint32(bid))
            self._backend_ids.give(bid)
        rec.backends = [(b, kept[b]) for b in backends]
        rec.flags = flags
        return self.end_flows(rec.rev_nat, removed) if removed else 0

    def _all_backend_ids(self) -> Iterable[tuple[Backend, int]]:
        for rec in self.realized.values():
            yield from rec.backends

    def _remove(self, fe: Frontend) -> int:
        rec = self.realized.pop(fe)
        self.services.delete(_key(fe))
        for slot, (_, bid) in enumerate(rec.backends, start=1):
            self.slots.delete(LbSlotKey(rec.rev_nat, slot))
            self.backends.delete(ctypes.c_uint32(bid))
            self._backend_ids.give(bid)
        self.revnat.delete(ctypes.c_uint32(rec.rev_nat))
        self._nat_ids.give(rec.rev_nat)
        return self.end_flows(rec.rev_nat, None)

    def end_flows(self, rev_nat: int, removed: Sequence[tuple[Backend, int]] | None) -> int:
        """Delete the CT entries of a service's flows (when `removed` is given, only
        those of these backends): their next packet finds no state to pass on. The
        table is filtered on the raw service-id column, so only a service's own
        entries are decoded."""
        ids = {bid for _, bid in removed or ()}
        targets = {(addr_bytes(b.address), socket.htons(b.port)) for b, _ in removed or ()}
        doomed: list[bytes] = []
        for chunk in conntrack.chunks(self.ct):
            mine = [i for i, v in enumerate(conntrack.rev_nats(chunk)) if v == rev_nat]
            backend_of = conntrack.backend_ids(chunk) if mine and removed else []
            for i in mine:
                raw = chunk.key_bytes(i)
                key = CtKey.from_buffer_copy(raw)
                if removed is None:
                    doomed.append(raw)
                elif key.direction == CT_SERVICE:
                    if backend_of[i] in ids:
                        doomed.append(raw)
                elif (bytes(key.daddr), key.dport) in targets:
                    doomed.append(raw)
        return conntrack.delete_keys(self.ct, doomed)

    def verify(self) -> list[str]:
        """Restore what the kernel lost or changed of the realized table, and remove
        frontends nobody wrote; one line per repair (the maps are read in batches)."""
        repaired: list[str] = []
        services, slots = self.services.raw_items(), self.slots.raw_items()
        backends, revnat = self.backends.raw_items(), self.revnat.raw_items()
        for fe, rec in self.realized.items():
            for slot, (b, bid) in enumerate(rec.backends, start=1):
                if backends.get(bytes(ctypes.c_uint32(bid))) != bytes(_address(b)):
                    self.backends.update(ctypes.c_uint32(bid), _address(b))
                    repaired.append(f"lb backend {bid} restored: {b.address}:{b.port}")
                key = LbSlotKey(rec.rev_nat, slot)
                if slots.get(bytes(key)) != bytes(ctypes.c_uint32(bid)):
                    self.slots.update(key, ctypes.c_uint32(bid))
                    repaired.append(f"lb slot {slot} of service {rec.rev_nat} restored")
            if revnat.get(bytes(ctypes.c_uint32(rec.rev_nat))) != bytes(_address(fe)):
                self.revnat.update(ctypes.c_uint32(rec.rev_nat), _address(fe))
                repaired.append(f"lb frontend of service {rec.rev_nat} restored")
            want = LbService(rec.rev_nat, len(rec.backends), rec.flags)
            if services.pop(bytes(_key(fe)), None) != bytes(want):
                self.services.update(_key(fe), want)
                repaired.append(f"lb service {fe.address}:{fe.port}/{fe.protocol} restored")
        for raw in services:  # what is left: frontends nobody wrote
            foreign = LbKey.from_buffer_copy(raw)
            self.services.delete(foreign)
            repaired.append(f"foreign lb service removed: {addr_str(foreign.addr)}")
        return repaired

    def entries(self) -> list[dict[str, object]]:
        """The kernel's table, for `cilia bpf lb list`."""
        rows: list[dict[str, object]] = [
            {
                "frontend": host_port(addr_str(k.addr), socket.ntohs(k.port)),
                "protocol": PROTOCOL_NAMES.get(int(k.proto), str(k.proto)),
                "id": int(v.rev_nat),
                "flags": "nodeport" if v.flags & LB_F_NODEPORT else "",
                "backends": [
                    {
                        "slot": slot,
                        "backend-id": bid,
                        "backend": host_port(addr_str(b.addr), socket.ntohs(b.port))
                        if b is not None
                        else "(missing)",
                    }
                    for slot, bid, b in slots
                ],
            }
            for k, v, slots in self._kernel_table()
        ]
        return sorted(rows, key=lambda r: (str(r["frontend"]), str(r["protocol"])))
