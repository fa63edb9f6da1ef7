/* O(1) policy lookup: at most five hash lookups per packet, whatever the
 * number of rules, identities or endpoints. */
#ifndef CILIA_POLICY_H
#define CILIA_POLICY_H

#include "maps.h"
#include "parse.h"

/* Identity of an address (longest prefix match; unknown means world), with
 * the rest of its entry in *info. */
static __always_inline __u32 identity_of(const union v6addr *addr, struct ipcache_value *info)
{
	struct ipcache_key k = { .prefixlen = 128, .addr = *addr };
	struct ipcache_value *v = bpf_map_lookup_elem(&cilia_ipcache, &k);

	/* An IPv6 prefix short enough to cover the IPv4-mapped range (::/0 among
	 * them) never names an IPv4 address: the families stay apart. */
	if (v && (v->flags & IPCACHE_F_IPV6) && addr_is_v4mapped(addr))
		v = NULL;
	if (!v) {
		info->identity = ID_WORLD;
		info->flags = 0;
		info->tunnel_endpoint = 0;
		return ID_WORLD;
	}
	*info = *v;
	return v->identity;
}

static __always_inline struct policy_value *policy_get(__u32 identity, __u16 ep_id, __u16 dport,
							__u8 proto, __u8 direction)
{
	struct policy_key k = {
		.identity = identity,
		.ep_id = ep_id,
		.dport = dport,
		.proto = proto,
		.direction = direction,
	};

	return bpf_map_lookup_elem(&cilia_policy, &k);
}

static __always_inline int policy_has(__u32 identity, __u16 ep_id, __u16 dport, __u8 proto,
				      __u8 direction)
{
	return policy_get(identity, ep_id, dport, proto, direction) != NULL;
}

/* Does one peer (an identity, or 0 for any) have an allowance for the flow?
 * Exact port, every port of the protocol, or every port of every protocol. */
static __always_inline struct policy_value *peer_allowed(__u32 identity, __u16 ep_id,
							 __u16 dport, __u8 proto, __u8 direction)
{
	struct policy_value *v = policy_get(identity, ep_id, dport, proto, direction);

	if (!v)
		v = policy_get(identity, ep_id, 0, proto, direction);
	if (!v)
		v = policy_get(identity, ep_id, 0, 0, direction);
	return v;
}

/* 0 when allowed, otherwise the drop reason (L3, CIDR or L4 denial).
 * *proxy_port is the L7 proxy the allowed flow must go through (0: none). */
static __always_inline int policy_verdict(__u32 identity, __u32 id_flags, __u16 ep_id,
					  const struct flow *f, __u8 direction, __u16 *proxy_port)
{
	__u16 dport = bpf_ntohs(f->dport);
	struct policy_value *v;

	if (f->proto == IPPROTO_ICMP || f->proto == IPPROTO_ICMPV6_)
		dport = 0; /* ICMP has no port: only L3 allowances match it */
	v = peer_allowed(identity, ep_id, dport, f->proto, direction);
	if (!v)
		v = peer_allowed(0, ep_id, dport, f->proto, direction);
	if (v) {
		*proxy_port = v->proxy_port;
		return 0;
	}
	if (policy_has(identity, ep_id, 0, POLICY_PROTO_MARKER, direction) ||
	    policy_has(0, ep_id, 0, POLICY_PROTO_MARKER, direction))
		return DROP_POLICY_L4;
	return (id_flags & IPCACHE_F_CIDR) ? DROP_POLICY_CIDR : DROP_POLICY;
}

#endif
