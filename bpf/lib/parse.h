/* Packet parsing: Ethernet + IPv4 or IPv6 (extension headers walked) + the L4
 * ports the policy needs. */
#ifndef CILIA_PARSE_H
#define CILIA_PARSE_H

#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include "common.h"

#define PARSE_OK 0

/* linux/icmp.h and linux/ipv6.h drag in headers that do not build for the BPF target. */
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
#define IPPROTO_ICMPV6_ 58
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129
struct icmp_echo_hdr {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u16 id;
	__u16 sequence;
};

struct ipv6_hdr {
	__u8 priority_version;
	__u8 flow_lbl[3];
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	union v6addr saddr;
	union v6addr daddr;
};

/* IPv6 next-header values of extension headers (RFC 8200 and the IANA list). */
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_ESP 50
#define NEXTHDR_AUTH 51
#define NEXTHDR_NONE 59
#define NEXTHDR_DEST 60
#define NEXTHDR_MOBILITY 135
#define NEXTHDR_HIP 139
#define NEXTHDR_SHIM6 140
#define NEXTHDR_EXP1 253
#define NEXTHDR_EXP2 254
/* Longest extension-header chain walked; a longer one is dropped (156). */
#define IPV6_MAX_EXTHDRS 8

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* Copy len bytes of the packet at off: straight from the linear data when they are
 * there (the common case, no helper call), else through bpf_skb_load_bytes. */
static __always_inline int load_l4(struct __sk_buff *skb, __u32 off, void *to, const __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	void *at = data + (off & 0xfff);

	if (off < 0x1000 && at + len <= data_end) {
		__builtin_memcpy(to, at, len);
		return 0;
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

/* Ports (or the echo id), TCP flags and ICMP type of the L4 header at off. */
static __always_inline int parse_l4(struct __sk_buff *skb, struct flow *f, __u32 off)
{
	f->sport = 0;
	f->dport = 0;
	f->tcp_flags = 0;
	f->icmp_type = 0;
	f->l4_off = off;
	switch (f->proto) {
	case IPPROTO_TCP: {
		__u8 hdr[14];

		if (load_l4(skb, off, hdr, sizeof(hdr)) < 0)
			return DROP_CT_INVALID_HDR;
		__builtin_memcpy(&f->sport, &hdr[0], 2);
		__builtin_memcpy(&f->dport, &hdr[2], 2);
		f->tcp_flags = hdr[13];
		break;
	}
	case IPPROTO_UDP: {
		struct udphdr udp;

		if (load_l4(skb, off, &udp, sizeof(udp)) < 0)
			return DROP_CT_INVALID_HDR;
		f->sport = udp.source;
		f->dport = udp.dest;
		break;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6_: {
		struct icmp_echo_hdr icmp;

		if (load_l4(skb, off, &icmp, sizeof(icmp)) < 0)
			return DROP_CT_INVALID_HDR;
		f->icmp_type = icmp.type;
		/* Echo request and reply share the id on both "ports", so the
		 * reply is the reverse tuple of the request. */
		if (f->proto == IPPROTO_ICMP ? icmp.type == ICMP_ECHO || icmp.type == ICMP_ECHOREPLY
					     : icmp.type == ICMPV6_ECHO_REQUEST ||
						       icmp.type == ICMPV6_ECHO_REPLY) {
			f->sport = icmp.id;
			f->dport = icmp.id;
		}
		break;
	}
	default:
		break;
	}
	return PARSE_OK;
}

/* Fill *f from an IPv4 packet; returns PARSE_OK or a drop reason. */
static __always_inline int parse_ipv4(struct __sk_buff *skb, struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(ip + 1) > data_end)
		return DROP_INVALID;
	if (ip->ihl < 5)
		return DROP_INVALID;

	f->family = 4;
	f->hop_limit = 0;
	addr_set_v4(&f->saddr, ip->saddr);
	addr_set_v4(&f->daddr, ip->daddr);
	f->proto = ip->protocol;
	f->sport = 0;
	f->dport = 0;
	f->tcp_flags = 0;
	f->icmp_type = 0;
	f->l4_off = 0;

	/* Non-first fragments carry no L4 header: they match port 0 only. */
	if (ip->frag_off & bpf_htons(0x1fff))
		return PARSE_OK;
	return parse_l4(skb, f, sizeof(struct ethhdr) + ip->ihl * 4);
}

/* Fill *f from an IPv6 packet, walking its extension headers to the L4 one.
 * Unknown, misplaced, truncated or too many extension headers: 156; a
 * fragment (its L4 header may be elsewhere): 157; a routing header with
 * segments left (the packet would travel on past the checked destination): 156. */
static __always_inline int parse_ipv6(struct __sk_buff *skb, struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6_hdr *ip6 = data + sizeof(struct ethhdr);
	__u32 off = sizeof(struct ethhdr) + sizeof(struct ipv6_hdr);
	__u8 nexthdr;
	int i;

	if ((void *)(ip6 + 1) > data_end)
		return DROP_INVALID;
	if ((ip6->priority_version >> 4) != 6)
		return DROP_INVALID;
	f->family = 6;
	f->saddr = ip6->saddr;
	f->daddr = ip6->daddr;
	f->hop_limit = ip6->hop_limit;
	/* IPv4-mapped addresses on the wire would alias IPv4 entries. */
	if (addr_is_v4mapped(&f->saddr) || addr_is_v4mapped(&f->daddr))
		return DROP_INVALID;
	nexthdr = ip6->nexthdr;

	for (i = 0; i < IPV6_MAX_EXTHDRS; i++) {
		__u8 hdr[4];

		switch (nexthdr) {
		case NEXTHDR_HOP:
			if (i != 0)
				return DROP_INVALID_EXTHDR; /* only right after the IPv6 header */
			/* fallthrough */
		case NEXTHDR_DEST:
		case NEXTHDR_ROUTING:
			if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
				return DROP_INVALID_EXTHDR;
			if (nexthdr == NEXTHDR_ROUTING && hdr[3] != 0)
				return DROP_INVALID_EXTHDR; /* segments left */
			nexthdr = hdr[0];
			off += ((__u32)hdr[1] + 1) * 8;
			break;
		case NEXTHDR_AUTH:
			if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
				return DROP_INVALID_EXTHDR;
			nexthdr = hdr[0];
			off += ((__u32)hdr[1] + 2) * 4;
			break;
		case NEXTHDR_FRAGMENT:
			if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
				return DROP_INVALID_EXTHDR;
			/* Offset 0 and no more fragments: an atomic fragment, whole. */
			if ((hdr[2] << 8 | hdr[3]) & 0xfff9)
				return DROP_FRAG_NOSUPPORT;
			nexthdr = hdr[0];
			off += 8;
			break;
		case NEXTHDR_NONE:
		case NEXTHDR_MOBILITY:
		case NEXTHDR_HIP:
		case NEXTHDR_SHIM6:
		case NEXTHDR_EXP1:
		case NEXTHDR_EXP2:
			return DROP_INVALID_EXTHDR;
		default:
			f->proto = nexthdr;
			return parse_l4(skb, f, off);
		}
	}
	return DROP_INVALID_EXTHDR; /* too long a chain */
}

/* Parse either family by the frame's protocol; DROP_UNSUPPORTED_L3 for the rest. */
static __always_inline int parse_ip(struct __sk_buff *skb, struct flow *f)
{
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return parse_ipv4(skb, f);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(skb, f);
	return DROP_UNSUPPORTED_L3;
}

#endif
