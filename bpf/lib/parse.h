/* Packet parsing: Ethernet + IPv4 + the L4 ports the policy needs. */
#ifndef CILIA_PARSE_H
#define CILIA_PARSE_H

#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include "common.h"

#define PARSE_OK 0

/* linux/icmp.h drags in libc headers that do not build for the BPF target. */
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
struct icmp_echo_hdr {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u16 id;
	__u16 sequence;
};

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

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

	f->saddr = ip->saddr;
	f->daddr = ip->daddr;
	f->proto = ip->protocol;
	f->sport = 0;
	f->dport = 0;
	f->tcp_flags = 0;

	/* Non-first fragments carry no L4 header: they match port 0 only. */
	if (ip->frag_off & bpf_htons(0x1fff))
		return PARSE_OK;

	void *l4 = (void *)ip + ip->ihl * 4;

	switch (ip->protocol) {
	case IPPROTO_TCP: {
		struct tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > data_end)
			return DROP_CT_INVALID_HDR;
		f->sport = tcp->source;
		f->dport = tcp->dest;
		f->tcp_flags = ((__u8 *)tcp)[13];
		break;
	}
	case IPPROTO_UDP: {
		struct udphdr *udp = l4;

		if ((void *)(udp + 1) > data_end)
			return DROP_CT_INVALID_HDR;
		f->sport = udp->source;
		f->dport = udp->dest;
		break;
	}
	case IPPROTO_ICMP: {
		struct icmp_echo_hdr *icmp = l4;

		if ((void *)(icmp + 1) > data_end)
			return DROP_CT_INVALID_HDR;
		/* Echo request and reply share the id on both "ports", so the
		 * reply is the reverse tuple of the request. */
		if (icmp->type == ICMP_ECHO || icmp->type == ICMP_ECHOREPLY) {
			f->sport = icmp->id;
			f->dport = icmp->id;
		}
		break;
	}
	default:
		break;
	}
	return PARSE_OK;
}

#endif
