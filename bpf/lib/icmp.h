/* ICMP the datapath handles itself: neighbour solicitations of a pod are
 * answered with its router's MAC (the IPv6 twin of the ARP responder);
 * neighbour discovery and MLD, which never leave the link, pass without
 * policy; an ICMP or ICMPv6 error (unreachable, packet too big or
 * fragmentation needed, time exceeded, parameter problem) passes when the
 * packet it quotes belongs to a tracked connection, so path MTU discovery
 * works under any policy. */
#ifndef CILIA_ICMP_H
#define CILIA_ICMP_H

#include "conntrack.h"

#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PARAMPROB 4
#define ICMPV6_MLD_QUERY 130
#define ICMPV6_MLD_DONE 132
#define ICMPV6_MLD2_REPORT 143
#define ICMPV6_ROUTER_SOLICIT 133
#define ICMPV6_NEIGH_SOLICIT 135
#define ICMPV6_NEIGH_ADVERT 136
#define ICMPV6_REDIRECT 137
#define ND_HOP_LIMIT 255
#define ND_OPT_TARGET_LLADDR 2
#define NA_FLAGS_ROUTER_SOLICITED_OVERRIDE bpf_htonl(0xe0000000)

#define ND_L3_OFF sizeof(struct ethhdr)
#define ND_L4_OFF (sizeof(struct ethhdr) + sizeof(struct ipv6_hdr))

struct nd_solicit_icmp {
	__u8 type;
	__u8 code;
	__u16 csum;
	__u32 reserved;
	union v6addr target;
};

struct nd_advert_icmp {
	__u8 type;
	__u8 code;
	__u16 csum;
	__u32 flags;
	union v6addr target;
	__u8 opt_type;
	__u8 opt_len; /* in units of 8 bytes */
	__u8 lladdr[ETH_ALEN];
};

struct icmp6_pseudo_hdr {
	union v6addr saddr;
	union v6addr daddr;
	__be32 len;
	__u8 zero[3];
	__u8 nexthdr;
};

static __always_inline __u16 csum_fold(__u32 csum)
{
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	return (__u16)~csum;
}

static __always_inline int is_link_scope(const union v6addr *a)
{
	__u32 w = bpf_ntohl(a->p[0]);

	return (w >> 22) == (0xfe80 >> 6) || (w >> 16) == 0xff02;
}

/* Neighbour discovery or MLD: link-local by construction (ND must carry hop
 * limit 255, MLD goes to a link-scope group), so no policy applies. From the
 * pod, only with its own, a link-local or the unspecified source. */
static __always_inline int icmp6_link_control(const struct flow *f, const struct endpoint_info *ep,
					      __u8 direction)
{
	__u8 t = f->icmp_type;
	int nd = t >= ICMPV6_ROUTER_SOLICIT && t <= ICMPV6_REDIRECT && f->hop_limit == ND_HOP_LIMIT;
	int mld = (t >= ICMPV6_MLD_QUERY && t <= ICMPV6_MLD_DONE) || t == ICMPV6_MLD2_REPORT;

	if (f->family != 6 || f->proto != IPPROTO_ICMPV6_)
		return 0;
	if (!nd && !(mld && is_link_scope(&f->daddr)))
		return 0;
	if (direction == DIR_EGRESS && !addr_eq(&f->saddr, &ep->ipv6) &&
	    !is_link_scope(&f->saddr) && !addr_is_zero(&f->saddr))
		return 0;
	return 1;
}

/* TC_ACT_OK when the packet is not a pod's neighbour solicitation to answer
 * (its own address, duplicate address detection, options after extension
 * headers): the caller goes on. Else the advertisement's redirect back. */
static __always_inline int nd_respond(struct __sk_buff *skb, const struct flow *f,
				      const struct endpoint_info *ep)
{
	struct icmp6_pseudo_hdr ph = {};
	struct nd_advert_icmp na = {};
	struct nd_solicit_icmp ns;
	struct ipv6_hdr ip6;
	struct ethhdr eth;
	__u32 sum;

	if (f->icmp_type != ICMPV6_NEIGH_SOLICIT || f->hop_limit != ND_HOP_LIMIT ||
	    f->l4_off != ND_L4_OFF)
		return TC_ACT_OK;
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0 ||
	    bpf_skb_load_bytes(skb, ND_L3_OFF, &ip6, sizeof(ip6)) < 0 ||
	    bpf_skb_load_bytes(skb, ND_L4_OFF, &ns, sizeof(ns)) < 0)
		return TC_ACT_OK;
	if (addr_is_zero(&ip6.saddr) || addr_eq(&ns.target, &ep->ipv6))
		return TC_ACT_OK;

	na.type = ICMPV6_NEIGH_ADVERT;
	na.flags = NA_FLAGS_ROUTER_SOLICITED_OVERRIDE;
	na.target = ns.target;
	na.opt_type = ND_OPT_TARGET_LLADDR;
	na.opt_len = 1;
	__builtin_memcpy(na.lladdr, ep->router_mac, ETH_ALEN);
	ph.saddr = ns.target;
	ph.daddr = ip6.saddr;
	ph.len = bpf_htonl(sizeof(na));
	ph.nexthdr = IPPROTO_ICMPV6_;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&ph, sizeof(ph), 0);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&na, sizeof(na), sum);
	na.csum = csum_fold(sum);

	__builtin_memcpy(eth.h_dest, eth.h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, ep->router_mac, ETH_ALEN);
	ip6.payload_len = bpf_htons(sizeof(na));
	ip6.hop_limit = ND_HOP_LIMIT;
	ip6.daddr = ip6.saddr;
	ip6.saddr = na.target;
	if (bpf_skb_change_tail(skb, ND_L4_OFF + sizeof(na), 0) ||
	    bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) ||
	    bpf_skb_store_bytes(skb, ND_L3_OFF, &ip6, sizeof(ip6), 0) ||
	    bpf_skb_store_bytes(skb, ND_L4_OFF, &na, sizeof(na), 0))
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

/* The ports of the quoted packet's TCP or UDP header at off; 0 when it has none. */
static __always_inline int quoted_ports(struct __sk_buff *skb, struct flow *quoted, __u32 off)
{
	__be16 ports[2];

	if (quoted->proto != IPPROTO_TCP && quoted->proto != IPPROTO_UDP)
		return 0; /* only connections with ports are looked up */
	if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
		return 0;
	quoted->sport = ports[0];
	quoted->dport = ports[1];
	return 1;
}

/* An ICMP or ICMPv6 error (unreachable, too big, time exceeded, parameter problem)
 * whose quoted packet belongs to a tracked connection of ep_id. */
static __always_inline int icmp_error_related(struct __sk_buff *skb, const struct flow *f,
					      __u16 ep_id)
{
	struct flow quoted = { .family = f->family };
	__u32 off = f->l4_off + 8;
	__u8 t = f->icmp_type;

	if (f->proto == IPPROTO_ICMPV6_ && t >= ICMPV6_DEST_UNREACH && t <= ICMPV6_PARAMPROB) {
		struct ipv6_hdr inner;

		if (bpf_skb_load_bytes(skb, off, &inner, sizeof(inner)) < 0)
			return 0;
		quoted.saddr = inner.saddr;
		quoted.daddr = inner.daddr;
		quoted.proto = inner.nexthdr;
		off += sizeof(inner);
	} else if (f->proto == IPPROTO_ICMP &&
		   (t == ICMP_DEST_UNREACH || t == ICMP_TIME_EXCEEDED || t == ICMP_PARAMETERPROB)) {
		struct iphdr inner;

		if (bpf_skb_load_bytes(skb, off, &inner, sizeof(inner)) < 0 || inner.ihl < 5)
			return 0;
		addr_set_v4(&quoted.saddr, inner.saddr);
		addr_set_v4(&quoted.daddr, inner.daddr);
		quoted.proto = inner.protocol;
		off += inner.ihl * 4;
	} else {
		return 0;
	}
	return quoted_ports(skb, &quoted, off) && ct_related(&quoted, ep_id);
}

#endif
