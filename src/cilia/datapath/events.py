"""Reader of the datapath's `cilia_events` ring buffer (mmap + epoll, no C glue).

The kernel exposes a BPF ring buffer as three mappings of the map fd: the
consumer position (one writable page), the producer position (one read-only
page) and the data area, mapped twice in a row so that a record wrapping the
end can be read in one piece. Each record starts with an 8-byte header (length
with a busy and a discard bit, page offset) and is padded to 8 bytes. Reading
a whole batch between two positions in Python is cheaper than a ctypes
callback per record.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from cilia.datapath import libbpf
from cilia.datapath.drop_reasons import reason_name
from cilia.datapath.layout import EVENT_DROP, EVENT_TRACE, Event
from cilia.datapath.maps import addr_str

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8
_POS = struct.Struct("=Q")
_REC_HDR = struct.Struct("=I")
EVENT_SIZE = ctypes.sizeof(Event)
# ts_ns type reason direction proto ep_id tcp_flags l3 src_id dst_id saddr daddr
# sport dport len ifindex pad  (the layout of struct event in bpf/lib/common.h)
_EVENT = struct.Struct("=QBBBBHBBII16s16sHHIII")
assert _EVENT.size == EVENT_SIZE, "struct event and layout.Event disagree"

PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6"}
_TCP_FLAGS = ((0x02, "SYN"), (0x10, "ACK"), (0x01, "FIN"), (0x04, "RST"), (0x08, "PSH"))
TYPE_NAMES = {EVENT_DROP: "drop", EVENT_TRACE: "trace"}


def tcp_flag_names(flags: int) -> str:
    """'SYN, ACK' style names of TCP flags."""
    return ", ".join(name for bit, name in _TCP_FLAGS if flags & bit)


class RingBuffer:
    """Consumer side of one pinned BPF ring buffer."""

    def __init__(self, pin_path: str) -> None:
        self.fd = libbpf.obj_get(pin_path)
        try:
            self.size = libbpf.map_max_entries(self.fd)
            page = mmap.PAGESIZE
            self._cons = mmap.mmap(self.fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self._prod = mmap.mmap(
                self.fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
            )
            self._data = memoryview(self._prod)[page:]
            self._epoll = select.epoll()
            self._epoll.register(self.fd, select.EPOLLIN)
        except BaseException:
            os.close(self.fd)
            raise

    def wait(self, timeout: float) -> None:
        """Block until data may be available (or timeout seconds pass)."""
        self._epoll.poll(timeout)

    def drain(self, limit: int = 1 << 16) -> list[bytes]:
        """Consume up to `limit` committed records; returns their payloads."""
        cons = _POS.unpack_from(self._cons, 0)[0]
        prod = _POS.unpack_from(self._prod, 0)[0]
        mask = self.size - 1
        out: list[bytes] = []
        data = self._data
        while cons < prod and len(out) < limit:
            off = cons & mask
            hdr = _REC_HDR.unpack_from(data, off)[0]
            if hdr & _BUSY:
                break
            length = hdr & ~(_BUSY | _DISCARD)
            if not hdr & _DISCARD:
                out.append(bytes(data[off + _HDR : off + _HDR + length]))
            cons += (length + _HDR + 7) & ~7
        if out or cons != _POS.unpack_from(self._cons, 0)[0]:
            _POS.pack_into(self._cons, 0, cons)
        return out

    def close(self) -> None:
        """Unmap and close."""
        self._epoll.close()
        self._data.release()
        self._prod.close()
        self._cons.close()
        os.close(self.fd)


@dataclass
class BootClock:
    """Converts CLOCK_BOOTTIME nanoseconds (event stamps) to wall-clock seconds."""

    offset: float = 0.0

    def __post_init__(self) -> None:
        self.offset = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)

    def wall(self, boot_ns: int) -> float:
        """Wall-clock time of a boot-time stamp."""
        return self.offset + boot_ns / 1e9


def decode(raw: bytes, clock: BootClock) -> dict[str, Any]:
    """A datapath event as the monitor's JSON object."""
    (
        ts_ns,
        etype,
        reason,
        direction,
        proto,
        ep_id,
        tcp_flags,
        l3,
        src_id,
        dst_id,
        saddr,
        daddr,
        sport,
        dport,
        length,
        ifindex,
        _,
    ) = _EVENT.unpack_from(raw)
    ev: dict[str, Any] = {
        "type": TYPE_NAMES.get(etype, str(etype)),
        "time": round(clock.wall(ts_ns), 6),
        "endpoint": ep_id,
        "direction": "ingress" if direction == 0 else "egress",
        "src-identity": src_id,
        "dst-identity": dst_id,
        "ifindex": ifindex,
        "length": length,
    }
    if etype == EVENT_DROP:
        ev["reason"] = reason
        ev["reason-name"] = reason_name(reason)
    if l3 == 4 or (l3 == 6 and (any(saddr) or any(daddr))):  # IPv6 not parsed: no tuple
        ev["src-ip"] = addr_str(saddr) if l3 == 6 or any(saddr) else "0.0.0.0"
        ev["dst-ip"] = addr_str(daddr) if l3 == 6 or any(daddr) else "0.0.0.0"
        ev["protocol"] = PROTOCOLS.get(proto, str(proto))
        if proto in (6, 17):
            ev["src-port"] = socket.ntohs(sport)
            ev["dst-port"] = socket.ntohs(dport)
        if proto == 6:
            ev["tcp-flags"] = tcp_flag_names(tcp_flags)
    else:
        ev["l3"] = {6: "IPv6", 0: "other"}.get(l3, str(l3))
    ev["family"] = {4: "IPv4", 6: "IPv6"}.get(l3, "other")
    ev["summary"] = summary(ev)
    return ev


def host_port(ip: str, port: int) -> str:
    """'a.b.c.d:port', or '[x::y]:port' for IPv6."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def summary(ev: dict[str, Any]) -> str:
    """One-line packet summary: 'TCP 10.0.0.2:3456 -> 10.0.0.3:80 [SYN]'."""
    if "src-ip" not in ev:
        return f"{ev.get('l3', 'non-IPv4')} packet, {ev['length']} bytes"
    src, dst = ev["src-ip"], ev["dst-ip"]
    if "src-port" in ev:
        src, dst = host_port(src, ev["src-port"]), host_port(dst, ev["dst-port"])
    flags = f" [{ev['tcp-flags']}]" if ev.get("tcp-flags") else ""
    return f"{ev['protocol']} {src} -> {dst}{flags}, {ev['length']} bytes"


class LostCounter:
    """Sum over CPUs of the datapath's per-CPU lost-event counters."""

    def __init__(self, pin_path: str) -> None:
        self.fd = libbpf.obj_get(pin_path)
        self.ncpus = libbpf.possible_cpus()

    def read(self) -> tuple[int, int]:
        """(drop events lost, trace events lost) since the map was created."""
        out = []
        for which in (0, 1):
            values = (ctypes.c_uint64 * self.ncpus)()
            libbpf.map_lookup(self.fd, ctypes.c_uint32(which), values)
            out.append(sum(values))
        return out[0], out[1]

    def close(self) -> None:
        """Close the fd."""
        os.close(self.fd)
