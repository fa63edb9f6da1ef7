"""ctypes twins of the structs in bpf/lib/common.h (keep both in sync)."""

from __future__ import annotations

import ctypes

EP_F_INGRESS_ENFORCED = 1 << 0
EP_F_EGRESS_ENFORCED = 1 << 1
EP_F_TRACE = 1 << 2
IPCACHE_F_CIDR = 1 << 0
IPCACHE_F_IPV6 = 1 << 1
MARK_MAGIC_MASK = 0x0F00
MARK_MAGIC_TO_PROXY = 0x0A00
MARK_MAGIC_FROM_PROXY = 0x0B00
MARK_MAGIC_OVERLAY = 0x0C00
EVENT_DROP = 1
EVENT_TRACE = 2
POLICY_PROTO_MARKER = 255
CT_SERVICE = 2
CT_NODEPORT = 3
LB_F_NODEPORT = 1 << 0


Addr = ctypes.c_uint8 * 16
"""union v6addr: an IPv6 address, or an IPv4 one IPv4-mapped (::ffff:a.b.c.d)."""


class AddrKey(ctypes.Structure):
    """A map key that is one `union v6addr` (the local endpoint addresses)."""

    _fields_ = [("addr", Addr)]


class EndpointInfo(ctypes.Structure):
    _fields_ = [
        ("ipv4", ctypes.c_uint32),
        ("identity", ctypes.c_uint32),
        ("ep_id", ctypes.c_uint16),
        ("flags", ctypes.c_uint8),
        ("pad1", ctypes.c_uint8),
        ("router_mac", ctypes.c_uint8 * 6),
        ("pad2", ctypes.c_uint16),
        ("ipv6", Addr),
    ]


class LxcIpInfo(ctypes.Structure):
    _fields_ = [
        ("ep_id", ctypes.c_uint16),
        ("flags", ctypes.c_uint8),
        ("pad1", ctypes.c_uint8),
        ("pad2", ctypes.c_uint32),
    ]


class IpcacheKey(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", Addr)]


class IpcacheValue(ctypes.Structure):
    _fields_ = [
        ("identity", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("tunnel_endpoint", ctypes.c_uint32),
    ]


class PolicyKey(ctypes.Structure):
    _fields_ = [
        ("identity", ctypes.c_uint32),
        ("ep_id", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
    ]


class PolicyValue(ctypes.Structure):
    _fields_ = [
        ("proxy_port", ctypes.c_uint16),
        ("flags", ctypes.c_uint8),
        ("pad1", ctypes.c_uint8),
        ("pad2", ctypes.c_uint32),
    ]


class CtKey(ctypes.Structure):
    _fields_ = [
        ("saddr", Addr),
        ("daddr", Addr),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("ep_id", ctypes.c_uint16),
    ]


class CtEntry(ctypes.Structure):
    _fields_ = [
        ("expires", ctypes.c_uint64),
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("rev_nat", ctypes.c_uint32),
        ("backend_id", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


class DatapathConfig(ctypes.Structure):
    _fields_ = [
        ("ct_lifetime_tcp", ctypes.c_uint32),
        ("ct_lifetime_tcp_syn", ctypes.c_uint32),
        ("ct_lifetime_tcp_closing", ctypes.c_uint32),
        ("ct_lifetime_nontcp", ctypes.c_uint32),
        ("trace_all", ctypes.c_uint32),
        ("proxy_ifindex", ctypes.c_uint32),
        ("vxlan_ifindex", ctypes.c_uint32),
        ("cluster_ipv4", ctypes.c_uint32),
        ("cluster_mask", ctypes.c_uint32),
        ("cluster_ipv6", Addr),
        ("cluster_ipv6_len", ctypes.c_uint32),
        ("host_netns_cookie", ctypes.c_uint64),
    ]


class MetricsKey(ctypes.Structure):
    _fields_ = [("reason", ctypes.c_uint8), ("direction", ctypes.c_uint8), ("pad", ctypes.c_uint16)]


class MetricsValue(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class Event(ctypes.Structure):
    """A drop or trace event from the cilia_events ring buffer."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("type", ctypes.c_uint8),
        ("reason", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("ep_id", ctypes.c_uint16),
        ("tcp_flags", ctypes.c_uint8),
        ("l3", ctypes.c_uint8),
        ("src_identity", ctypes.c_uint32),
        ("dst_identity", ctypes.c_uint32),
        ("saddr", Addr),
        ("daddr", Addr),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("len", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


class LbKey(ctypes.Structure):
    _fields_ = [
        ("addr", Addr),
        ("port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class LbService(ctypes.Structure):
    _fields_ = [
        ("rev_nat", ctypes.c_uint32),
        ("count", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
    ]


class LbSlotKey(ctypes.Structure):
    _fields_ = [("rev_nat", ctypes.c_uint32), ("slot", ctypes.c_uint32)]


class LbAddress(ctypes.Structure):
    """struct lb_backend and struct lb_frontend (the same layout)."""

    _fields_ = [
        ("addr", Addr),
        ("port", ctypes.c_uint16),
        ("pad1", ctypes.c_uint16),
        ("pad2", ctypes.c_uint32),
    ]
