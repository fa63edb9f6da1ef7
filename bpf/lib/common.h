/* Shared definitions of the Cilia datapath: map layouts and constants.
 * Every struct here has a twin in src/cilia/datapath/layout.py; keep them in sync. */
#ifndef CILIA_COMMON_H
#define CILIA_COMMON_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define DIR_INGRESS 0 /* towards the endpoint */
#define DIR_EGRESS 1  /* away from the endpoint */
/* Connection-tracking scopes of the load balancer (the direction field of a CT key). */
#define CT_SERVICE 2  /* client -> frontend: which backend the flow was given */
#define CT_NODEPORT 3 /* outside client -> backend, translated at a node device (ep_id 0) */

/* Reserved identities (the reference's numbering). */
#define ID_UNKNOWN 0
#define ID_HOST 1
#define ID_WORLD 2
#define ID_CLUSTER 3

/* Drop reasons (the reference's codes); 0 means forwarded. */
#define REASON_FORWARDED 0
#define DROP_INVALID_SIP 132
#define DROP_POLICY 133
#define DROP_INVALID 134
#define DROP_CT_INVALID_HDR 135
#define DROP_UNSUPPORTED_L3 139
#define DROP_WRITE_ERROR 141 /* the tunnel key could not be set */
#define DROP_NO_TUNNEL_KEY 147 /* a packet on the overlay device without tunnel metadata */
#define DROP_UNKNOWN_TARGET 150
#define DROP_NO_ENDPOINT 152
#define DROP_CT_CREATE_FAILED 155
#define DROP_INVALID_EXTHDR 156 /* an IPv6 extension header chain that is malformed, unknown or too long */
#define DROP_FRAG_NOSUPPORT 157 /* an IPv6 fragment: its L4 header cannot be checked */
#define DROP_POLICY_L4 159
#define DROP_NO_TUNNEL_ENDPOINT 160 /* a cluster address that no node owns */
#define DROP_POLICY_CIDR 162
#define DROP_NO_SERVICE 158 /* a service frontend without backends */
#define DROP_PROXY_LOOKUP_FAILED 180 /* no proxy listens on the redirect port */
#define DROP_PROXY_BYPASS 181        /* L7-redirected port reached without the proxy */

/* Packet marks shared with the agent's routing rule and the proxies.
 * TO_PROXY: a redirected packet, routed to the local proxy socket.
 * FROM_PROXY: a proxy's upstream packet; bits 16-31 carry the identity of
 * the original source so the destination's policy sees who really asked.
 * OVERLAY: a packet that came through the tunnel, on its way to a local
 * endpoint; bits 16-31 carry the source identity its VNI named. */
#define MARK_MAGIC_MASK 0x0f00
#define MARK_MAGIC_TO_PROXY 0x0a00
#define MARK_MAGIC_FROM_PROXY 0x0b00
#define MARK_MAGIC_OVERLAY 0x0c00
#define MARK_IDENTITY_MAX 0xffff /* identities fit in the mark's 16 upper bits */
/* An address of either family. IPv4 is held IPv4-mapped (::ffff:a.b.c.d), so
 * the two families never share a key in any map. */
union v6addr {
	__u32 p[4];
	__u8 b[16];
};

#define EP_F_INGRESS_ENFORCED (1 << 0)
#define EP_F_EGRESS_ENFORCED (1 << 1)
#define EP_F_TRACE (1 << 2) /* emit trace events for forwarded packets */

/* Per-device endpoint configuration, keyed by the host-side ifindex. */
struct endpoint_info {
	__u32 ipv4; /* network order */
	__u32 identity;
	__u16 ep_id;
	__u8 flags;
	__u8 pad1;
	__u8 router_mac[ETH_ALEN]; /* the host-side veth's: the pod's gateway */
	__u16 pad2;
	union v6addr ipv6; /* all zero: the endpoint has no IPv6 address */
};

/* Local endpoint of an address (key: union v6addr), for ingress decided at the source. */
struct lxc_ip_info {
	__u16 ep_id;
	__u8 flags; /* EP_F_* of the endpoint */
	__u8 pad1;
	__u32 pad2;
};

/* IP to identity, longest prefix match over the 128 bits of addr; an IPv4
 * prefix /n is its IPv4-mapped prefix ::ffff:0:0/(96 + n). */
struct ipcache_key {
	__u32 prefixlen;
	union v6addr addr;
};

struct ipcache_value {
	__u32 identity;
	__u32 flags;
	__u32 tunnel_endpoint; /* network order: node owning the address; 0 = local or not tunnelled */
};

#define IPCACHE_F_CIDR (1 << 0) /* identity derived from a CIDR, not an endpoint */
#define IPCACHE_F_IPV6 (1 << 1) /* an IPv6 prefix: never the identity of an IPv4 address */

/* One allowance. identity 0 = any peer; dport 0 + proto 0 = every port. */
struct policy_key {
	__u32 identity;
	__u16 ep_id;
	__u16 dport; /* host order */
	__u8 proto;
	__u8 direction;
	__u16 pad;
};

#define POLICY_PROTO_MARKER 255 /* "this identity has port-specific entries" */

struct policy_value {
	__u16 proxy_port;
	__u8 flags;
	__u8 pad1;
	__u32 pad2;
};

/* Connection tracking: the tuple as the originating packet carried it. */
struct ct_key {
	union v6addr saddr;
	union v6addr daddr;
	__u16 sport; /* network order */
	__u16 dport; /* network order */
	__u8 proto;
	__u8 direction; /* direction of the original packet, seen from ep_id */
	__u16 ep_id;
};

struct ct_entry {
	__u64 expires; /* seconds of CLOCK_BOOTTIME */
	__u64 packets;
	__u64 bytes;
	__u32 flags;
	__u32 rev_nat;	  /* a translated flow: the service whose frontend replies carry (0: none) */
	__u32 backend_id; /* a CT_SERVICE entry: the backend the flow was given */
	__u32 pad;
};

#define CT_F_SEEN_REPLY (1 << 0)
#define CT_F_CLOSING (1 << 1)

/* Lifetimes and switches the agent sets (array map, index 0). */
struct datapath_config {
	__u32 ct_lifetime_tcp;
	__u32 ct_lifetime_tcp_syn;
	__u32 ct_lifetime_tcp_closing;
	__u32 ct_lifetime_nontcp;
	__u32 trace_all; /* trace events for every endpoint */
	__u32 proxy_ifindex; /* device whose tc ingress hands host traffic to proxies (0: none) */
	__u32 vxlan_ifindex; /* overlay device towards other nodes (0: single node, no tunnel) */
	__u32 cluster_ipv4;  /* network order: the cluster's pod range, every node's pods... */
	__u32 cluster_mask;  /* ...and its netmask; a range address no node owns is dropped (160) */
	union v6addr cluster_ipv6; /* the cluster's IPv6 pod range... */
	__u32 cluster_ipv6_len;    /* ...and its prefix length (0: none) */
	__u64 host_netns_cookie;   /* the node's network namespace: its sockets' connects are load-balanced */
};

/* Load balancing. A frontend (address, port, protocol) names a service; its
 * backends sit in slots 1..count; a flow keeps its backend through a CT_SERVICE
 * entry. rev_nat (the service id, never 0) names the frontend replies carry. */
struct lb_key {
	union v6addr addr;
	__u16 port; /* network order */
	__u8 proto;
	__u8 pad;
};

#define LB_F_NODEPORT (1 << 0) /* a node address: translated where outside traffic enters */

struct lb_service {
	__u32 rev_nat;
	__u16 count; /* backends in slots 1..count; 0: the service has none (drop 158) */
	__u16 flags;
};

struct lb_slot_key {
	__u32 rev_nat;
	__u32 slot;
};

struct lb_backend {
	union v6addr addr;
	__u16 port; /* network order */
	__u16 pad1;
	__u32 pad2;
};

/* The frontend of a service, for replies (key: rev_nat). */
struct lb_frontend {
	union v6addr addr;
	__u16 port; /* network order */
	__u16 pad1;
	__u32 pad2;
};

struct metrics_key {
	__u8 reason;
	__u8 direction;
	__u16 pad;
};

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

/* Monitor events, sent to the agent through the cilia_events ring buffer. */
#define EVENT_DROP 1
#define EVENT_TRACE 2

struct event {
	__u64 ts_ns; /* CLOCK_BOOTTIME */
	__u8 type;
	__u8 reason; /* drop reason, 0 for trace */
	__u8 direction;
	__u8 proto;
	__u16 ep_id;
	__u8 tcp_flags;
	__u8 l3; /* 4 = IPv4, 6 = IPv6, 0 = other */
	__u32 src_identity;
	__u32 dst_identity;
	union v6addr saddr; /* IPv4-mapped when l3 is 4 */
	union v6addr daddr;
	__u16 sport; /* network order */
	__u16 dport;
	__u32 len;
	__u32 ifindex;
	__u32 pad;
};

#define EVENT_LOST_DROP 0
#define EVENT_LOST_TRACE 1

/* The parsed packet the policy and CT code work on. */
struct flow {
	union v6addr saddr;
	union v6addr daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto; /* the L4 protocol, after any IPv6 extension headers */
	__u8 tcp_flags;
	__u8 family; /* 4 or 6 */
	__u8 icmp_type;
	__u8 hop_limit; /* IPv6 only: neighbour discovery must carry 255 */
	__u8 pad;
	__u16 l4_off; /* offset of the L4 header from the start of the frame */
};

static __always_inline int addr_eq(const union v6addr *a, const union v6addr *b)
{
	return a->p[0] == b->p[0] && a->p[1] == b->p[1] && a->p[2] == b->p[2] && a->p[3] == b->p[3];
}

static __always_inline int addr_is_zero(const union v6addr *a)
{
	return !(a->p[0] | a->p[1] | a->p[2] | a->p[3]);
}

/* An IPv4 address (network order) as IPv4-mapped IPv6. */
static __always_inline void addr_set_v4(union v6addr *a, __u32 ipv4)
{
	a->p[0] = 0;
	a->p[1] = 0;
	a->p[2] = bpf_htonl(0xffff);
	a->p[3] = ipv4;
}

static __always_inline int addr_is_v4mapped(const union v6addr *a)
{
	return a->p[0] == 0 && a->p[1] == 0 && a->p[2] == bpf_htonl(0xffff);
}

#endif
