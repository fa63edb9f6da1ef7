"""Typed access to the pinned datapath maps."""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

from cilia.datapath import libbpf
from cilia.datapath.layout import (
    IPCACHE_F_IPV6,
    Addr,
    AddrKey,
    CtEntry,
    CtKey,
    EndpointInfo,
    IpcacheKey,
    IpcacheValue,
    LxcIpInfo,
    MetricsKey,
    MetricsValue,
    PolicyKey,
    PolicyValue,
)

K = TypeVar("K", bound="ctypes._SimpleCData[int] | ctypes.Structure")
V = TypeVar("V", bound="ctypes._SimpleCData[int] | ctypes.Structure")


def ip_to_be(ip: str) -> int:
    """Dotted IPv4 to the u32 the kernel stores (network byte order in memory)."""
    return int(struct.unpack("=I", socket.inet_aton(ip))[0])


def be_to_ip(value: int) -> str:
    """Inverse of ip_to_be."""
    return socket.inet_ntoa(struct.pack("=I", value))


_V4_MAPPED = bytes(10) + b"\xff\xff"


def addr_bytes(ip: str) -> bytes:
    """The 16 bytes of `union v6addr`: an IPv6 address, or an IPv4 one IPv4-mapped."""
    if ":" in ip:
        return socket.inet_pton(socket.AF_INET6, ip)
    return _V4_MAPPED + socket.inet_aton(ip)


def addr(ip: str) -> ctypes.Array[ctypes.c_uint8]:
    """`union v6addr` of an address of either family."""
    return Addr.from_buffer_copy(addr_bytes(ip))


def addr_str(raw: bytes | ctypes.Array[ctypes.c_uint8]) -> str:
    """Inverse of addr: dotted IPv4 for an IPv4-mapped address, else IPv6."""
    data = bytes(raw)
    if data[:12] == _V4_MAPPED:
        return socket.inet_ntoa(data[12:])
    return socket.inet_ntop(socket.AF_INET6, data)


class BpfMap(Generic[K, V]):
    """A map opened from its pin, with ctypes key and value types."""

    def __init__(self, path: str, key_type: type[K], value_type: type[V]) -> None:
        self.path = path
        self.fd = libbpf.obj_get(path)
        self.key_type = key_type
        self.value_type = value_type

    def close(self) -> None:
        """Release the fd (the pinned map stays)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def update(self, key: K, value: V) -> None:
        """Insert or replace."""
        libbpf.map_update(self.fd, key, value)

    def lookup(self, key: K) -> V | None:
        """Return the value or None."""
        value = self.value_type()
        return value if libbpf.map_lookup(self.fd, key, value) else None

    def delete(self, key: K) -> bool:
        """Delete; False if absent."""
        return libbpf.map_delete(self.fd, key)

    def iter_keys(self) -> Iterator[K]:
        """Iterate over all keys (snapshot semantics of get_next_key)."""
        cur: K | None = None
        while True:
            nxt = self.key_type()
            if not libbpf.map_next_key(self.fd, cur, nxt):
                return
            yield nxt
            cur = nxt

    def batches(
        self, batch: int = 4096
    ) -> Iterator[tuple[ctypes.Array[ctypes.c_uint8], ctypes.Array[ctypes.c_uint8], int]]:
        """The whole map in batches of raw (keys, values, count): a few syscalls for
        thousands of entries (entries added meanwhile may be missed)."""
        ksize, vsize = ctypes.sizeof(self.key_type), ctypes.sizeof(self.value_type)
        token = (ctypes.c_uint8 * ksize)()
        first, more = True, True
        while more:
            keys = (ctypes.c_uint8 * (ksize * batch))()
            values = (ctypes.c_uint8 * (vsize * batch))()
            n, more = libbpf.map_lookup_batch(self.fd, token, first, keys, values, batch)
            first = False
            if n:
                yield keys, values, n

    def raw_items(self) -> dict[bytes, bytes]:
        """Every (key, value) as raw bytes, read in batches."""
        ksize, vsize = ctypes.sizeof(self.key_type), ctypes.sizeof(self.value_type)
        out: dict[bytes, bytes] = {}
        for keys, values, n in self.batches():
            kb, vb = bytes(keys), bytes(values)
            for i in range(n):
                out[kb[i * ksize : (i + 1) * ksize]] = vb[i * vsize : (i + 1) * vsize]
        return out

    def items(self) -> Iterator[tuple[K, V]]:
        """Iterate over (key, value); entries deleted meanwhile are skipped."""
        for key in list(self.iter_keys()):
            value = self.lookup(key)
            if value is not None:
                yield key, value


@dataclass(frozen=True)
class EndpointRecord:
    """Datapath view of one endpoint (the value of the endpoints map)."""

    ep_id: int
    ipv4: str
    identity: int
    flags: int
    router_mac: str
    """The host-side veth's MAC, which the ARP and neighbour responders answer with."""
    ipv6: str = ""
    """"" = the endpoint has no IPv6 address (its IPv6 packets are dropped)."""


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _record(info: EndpointInfo) -> EndpointRecord:
    mac = ":".join(f"{b:02x}" for b in bytes(info.router_mac))
    ipv6 = "" if not any(info.ipv6) else addr_str(info.ipv6)
    return EndpointRecord(info.ep_id, be_to_ip(info.ipv4), info.identity, info.flags, mac, ipv6)


class EndpointMap(BpfMap[ctypes.c_uint32, EndpointInfo]):
    """ifindex -> endpoint configuration."""

    def __init__(self, path: str) -> None:
        super().__init__(path, ctypes.c_uint32, EndpointInfo)

    def set(self, ifindex: int, rec: EndpointRecord) -> None:
        """Write the configuration of the endpoint behind ifindex."""
        info = EndpointInfo(
            ipv4=ip_to_be(rec.ipv4), identity=rec.identity, ep_id=rec.ep_id, flags=rec.flags
        )
        info.router_mac[:] = _mac_bytes(rec.router_mac)
        if rec.ipv6:
            info.ipv6[:] = addr_bytes(rec.ipv6)
        self.update(ctypes.c_uint32(ifindex), info)

    def get(self, ifindex: int) -> EndpointRecord | None:
        """Read the configuration of ifindex."""
        info = self.lookup(ctypes.c_uint32(ifindex))
        if info is None:
            return None
        return _record(info)

    def remove(self, ifindex: int) -> bool:
        """Forget ifindex."""
        return self.delete(ctypes.c_uint32(ifindex))

    def dump(self) -> dict[int, EndpointRecord]:
        """All endpoints by ifindex."""
        return {int(k.value): _record(v) for k, v in self.items()}


_MAPPED_BITS = 96


def prefix_key(prefix: str) -> IpcacheKey:
    """LPM key of a prefix of either family (a bare address: /32 or /128); IPv4
    prefixes are IPv4-mapped, /n becoming /96+n."""
    net = ipaddress.ip_network(prefix, strict=False)
    extra = _MAPPED_BITS if net.version == 4 else 0
    return IpcacheKey(prefixlen=net.prefixlen + extra, addr=addr(str(net.network_address)))


def key_prefix(key: IpcacheKey) -> str:
    """'a.b.c.d/len' or 'x::/len' of an LPM key."""
    ip = addr_str(key.addr)
    plen = key.prefixlen - _MAPPED_BITS if ":" not in ip else key.prefixlen
    return f"{ip}/{plen}"


class IpcacheEntry(NamedTuple):
    """What the ipcache says about a prefix (a tuple: the agent diffs many of them)."""

    identity: int
    flags: int = 0
    tunnel_endpoint: str = ""
    """Underlay address of the node owning the prefix; "" = this node, or not tunnelled."""


class IpcacheMap(BpfMap[IpcacheKey, IpcacheValue]):
    """Prefix -> identity and owning node (longest prefix match)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, IpcacheKey, IpcacheValue)

    def set(self, prefix: str, identity: int, flags: int = 0, tunnel_endpoint: str = "") -> None:
        """Map a prefix (or a bare address, /32) to an identity and its owning node."""
        node = ip_to_be(tunnel_endpoint) if tunnel_endpoint else 0
        if ":" in prefix:
            flags |= IPCACHE_F_IPV6
        value = IpcacheValue(identity=identity, flags=flags, tunnel_endpoint=node)
        self.update(prefix_key(prefix), value)

    def put(self, prefix: str, entry: IpcacheEntry) -> None:
        """Write an entry."""
        self.set(prefix, entry.identity, entry.flags, entry.tunnel_endpoint)

    def remove(self, prefix: str) -> bool:
        """Remove a prefix."""
        return self.delete(prefix_key(prefix))

    def dump(self) -> dict[str, IpcacheEntry]:
        """All prefixes as 'a.b.c.d/len' or 'x::/len' -> entry."""
        return {
            key_prefix(k): IpcacheEntry(
                int(v.identity),
                int(v.flags) & ~IPCACHE_F_IPV6,
                be_to_ip(v.tunnel_endpoint) if v.tunnel_endpoint else "",
            )
            for k, v in self.items()
        }


class TunnelMap(BpfMap[IpcacheKey, ctypes.c_uint32]):
    """Another node's pod range -> that node's underlay address (longest prefix match)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, IpcacheKey, ctypes.c_uint32)

    def set(self, prefix: str, node_ip: str) -> None:
        """Send packets for `prefix` to the node at `node_ip`."""
        self.update(prefix_key(prefix), ctypes.c_uint32(ip_to_be(node_ip)))

    def remove(self, prefix: str) -> bool:
        """Forget a range."""
        return self.delete(prefix_key(prefix))

    def dump(self) -> dict[str, str]:
        """Range 'a.b.c.d/len' -> node address."""
        return {key_prefix(k): be_to_ip(int(v.value)) for k, v in self.items()}


PolicyTuple = tuple[int, int, int, int, int]
"""(ep_id, direction, identity, dport, proto) as stored in the policy map."""


class PolicyMap(BpfMap[PolicyKey, PolicyValue]):
    """(endpoint, direction, identity, port, proto) -> allowance."""

    def __init__(self, path: str) -> None:
        super().__init__(path, PolicyKey, PolicyValue)

    @staticmethod
    def key(t: PolicyTuple) -> PolicyKey:
        """Build the C key of a policy tuple."""
        ep_id, direction, identity, dport, proto = t
        return PolicyKey(
            identity=identity, ep_id=ep_id, dport=dport, proto=proto, direction=direction
        )

    def put(self, t: PolicyTuple, proxy_port: int = 0) -> None:
        """Allow a tuple."""
        self.update(self.key(t), PolicyValue(proxy_port=proxy_port))

    def remove(self, t: PolicyTuple) -> bool:
        """Revoke a tuple."""
        return self.delete(self.key(t))

    def dump(self) -> set[PolicyTuple]:
        """Every tuple in the map."""
        return {(k.ep_id, k.direction, k.identity, k.dport, k.proto) for k in self.iter_keys()}

    def dump_values(self) -> dict[PolicyTuple, int]:
        """Every tuple with its proxy port."""
        return {
            (k.ep_id, k.direction, k.identity, k.dport, k.proto): int(v.proxy_port)
            for k, v in self.items()
        }


class LxcIpMap(BpfMap[AddrKey, LxcIpInfo]):
    """Local endpoint address (either family) -> (endpoint id, flags)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, AddrKey, LxcIpInfo)

    def set(self, ip: str, ep_id: int, flags: int) -> None:
        """Record a local endpoint address."""
        self.update(AddrKey(addr(ip)), LxcIpInfo(ep_id=ep_id, flags=flags))

    def remove(self, ip: str) -> bool:
        """Forget an address."""
        return self.delete(AddrKey(addr(ip)))

    def dump(self) -> dict[str, tuple[int, int]]:
        """Address -> (endpoint id, flags)."""
        return {addr_str(k.addr): (int(v.ep_id), int(v.flags)) for k, v in self.items()}


class CtMap(BpfMap[CtKey, CtEntry]):
    """The connection-tracking table."""

    def __init__(self, path: str) -> None:
        super().__init__(path, CtKey, CtEntry)


class MetricsMap(BpfMap[MetricsKey, MetricsValue]):
    """Per-CPU (reason, direction) -> packets, bytes; summed over CPUs on read."""

    def __init__(self, path: str) -> None:
        super().__init__(path, MetricsKey, MetricsValue)
        self.ncpus = libbpf.possible_cpus()

    def totals(self) -> dict[tuple[int, int], tuple[int, int]]:
        """(reason, direction) -> (packets, bytes), summed over CPUs."""
        out: dict[tuple[int, int], tuple[int, int]] = {}
        per_cpu = MetricsValue * self.ncpus
        for key in list(self.iter_keys()):
            values = per_cpu()
            if not libbpf.map_lookup(self.fd, key, values):
                continue
            out[(key.reason, key.direction)] = (
                sum(v.packets for v in values),
                sum(v.bytes for v in values),
            )
        return out
