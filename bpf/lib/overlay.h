/* The cross-node datapath: VXLAN in external (collect_md) mode, the VNI
 * carrying the source security identity (the reference's layout).
 *
 * Sender: a packet for another node's pod gets a tunnel key (remote = that
 * node's underlay address, VNI = source identity) and goes to the VXLAN
 * device. Receiver: the VNI is the source identity, never the ipcache; it
 * travels on to the destination endpoint's program in MARK_MAGIC_OVERLAY. */
#ifndef CILIA_OVERLAY_H
#define CILIA_OVERLAY_H

#include "maps.h"
#include "conntrack.h"

#define TUNNEL_TTL 64

/* Does a fall in the prefix of len bits at net? */
static __always_inline int addr_in_prefix(const union v6addr *a, const union v6addr *net, __u32 len)
{
	int i;

	if (len > 128)
		return 0;
#pragma unroll
	for (i = 0; i < 4; i++) {
		__u32 bits = len > 32 ? 32 : len;
		__u32 mask = bits ? bpf_htonl(0xffffffffU << (32 - bits)) : 0;

		if ((a->p[i] ^ net->p[i]) & mask)
			return 0;
		len -= bits;
	}
	return 1;
}

/* The node to tunnel a packet for daddr to, in *remote (0: it stays on this
 * node or leaves by normal routing); dst is daddr's ipcache entry. Returns 0
 * or DROP_NO_TUNNEL_ENDPOINT for a cluster address that no node owns. */
static __always_inline int tunnel_endpoint_of(const struct datapath_config *cfg,
					      const union v6addr *daddr,
					      const struct ipcache_value *dst, __u32 *remote)
{
	struct ipcache_key k = { .prefixlen = 128, .addr = *daddr };
	__u32 *node;

	*remote = 0;
	if (bpf_map_lookup_elem(&cilia_lxc_ip, daddr))
		return 0; /* a local endpoint */
	if (dst->tunnel_endpoint) {
		*remote = dst->tunnel_endpoint;
		return 0;
	}
	if (dst->identity == ID_HOST)
		return 0; /* this node's own address */
	node = bpf_map_lookup_elem(&cilia_tunnel, &k);
	if (node && *node) {
		*remote = *node;
		return 0;
	}
	if (addr_is_v4mapped(daddr) ? (daddr->p[3] & cfg->cluster_mask) == cfg->cluster_ipv4
				    : cfg->cluster_ipv6_len &&
					      addr_in_prefix(daddr, &cfg->cluster_ipv6,
							     cfg->cluster_ipv6_len))
		return DROP_NO_TUNNEL_ENDPOINT;
	return 0;
}

/* Address the packet to a node's VXLAN endpoint, VNI = identity. */
static __always_inline int set_tunnel(struct __sk_buff *skb, __u32 remote, __u32 identity)
{
	struct bpf_tunnel_key key = {
		.remote_ipv4 = bpf_ntohl(remote),
		.tunnel_id = identity,
		.tunnel_ttl = TUNNEL_TTL,
	};

	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return DROP_WRITE_ERROR;
	return 0;
}

/* The source identity a VNI names, as this node's policy sees it: another
 * node's own processes are never this node's host, whatever they claim. */
static __always_inline __u32 overlay_identity(__u32 vni)
{
	return vni == ID_UNKNOWN || vni == ID_HOST ? ID_CLUSTER : vni;
}

/* The return-path entry of an outside client's flow that crossed the tunnel, seen
 * from this node in `direction`, for the flow f or (reply) its reverse. */
static __always_inline __u32 *lb_return_of(const struct flow *f, __u8 direction, int reply)
{
	struct ct_key k = {};

	ct_fill_key(&k, f, 0, direction, reply);
	return bpf_map_lookup_elem(&cilia_lb_return, &k);
}

static __always_inline void lb_return_set(const struct flow *f, __u8 direction, __u32 node)
{
	struct ct_key k = {};

	ct_fill_key(&k, f, 0, direction, 0);
	bpf_map_update_elem(&cilia_lb_return, &k, &node, BPF_ANY);
}

/* Identity of the remote source when the packet came through the tunnel. */
static __always_inline int from_overlay(const struct __sk_buff *skb, __u32 *identity)
{
	if ((skb->mark & MARK_MAGIC_MASK) != MARK_MAGIC_OVERLAY)
		return 0;
	*identity = skb->mark >> 16;
	return 1;
}

#endif
