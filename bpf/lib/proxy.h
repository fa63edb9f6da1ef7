/* Transparent redirection of L7-policed flows to a local proxy socket.
 *
 * Done on the tc ingress path (packets leaving a pod): the skb is assigned to
 * the proxy's IP_TRANSPARENT listener and marked so the agent's routing rule
 * delivers it locally; the proxy sees the original destination with
 * getsockname(). The proxy's own upstream packets carry MARK_MAGIC_FROM_PROXY
 * and the original source identity in their mark. */
#ifndef CILIA_PROXY_H
#define CILIA_PROXY_H

#include <linux/in.h>
#include "common.h"

/* Identity of the original source when the packet comes from a Cilia proxy. */
static __always_inline int from_proxy(const struct __sk_buff *skb, __u32 *identity)
{
	if ((skb->mark & MARK_MAGIC_MASK) != MARK_MAGIC_FROM_PROXY)
		return 0;
	*identity = skb->mark >> 16;
	return 1;
}

/* The socket of a TCP tuple (established first, else listening) for either family. */
static __always_inline struct bpf_sock *tcp_socket_of(struct __sk_buff *skb, const struct flow *f,
						      __be16 dport)
{
	struct bpf_sock_tuple tuple = {};
	__u32 size;

	if (f->family == 4) {
		tuple.ipv4.saddr = f->saddr.p[3];
		tuple.ipv4.daddr = f->daddr.p[3];
		tuple.ipv4.sport = f->sport;
		tuple.ipv4.dport = dport;
		size = sizeof(tuple.ipv4);
	} else {
		__builtin_memcpy(tuple.ipv6.saddr, f->saddr.p, 16);
		__builtin_memcpy(tuple.ipv6.daddr, f->daddr.p, 16);
		tuple.ipv6.sport = f->sport;
		tuple.ipv6.dport = dport;
		size = sizeof(tuple.ipv6);
	}
	return bpf_skc_lookup_tcp(skb, &tuple, size, BPF_F_CURRENT_NETNS, 0);
}

/* 0 after assigning the skb to the proxy listening on proxy_port, else a drop reason. */
static __always_inline int redirect_to_proxy(struct __sk_buff *skb, const struct flow *f,
					     __u16 proxy_port)
{
	struct bpf_sock *sk;
	long err;

	if (f->proto != IPPROTO_TCP)
		return DROP_PROXY_LOOKUP_FAILED;
	/* A packet of an established proxied connection goes to its socket... */
	sk = tcp_socket_of(skb, f, f->dport);
	if (sk && sk->state == BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		sk = NULL;
	}
	if (!sk) {
		/* ...a new one to the proxy's listener. */
		sk = tcp_socket_of(skb, f, bpf_htons(proxy_port));
		if (!sk)
			return DROP_PROXY_LOOKUP_FAILED;
	}
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return DROP_PROXY_LOOKUP_FAILED;
	skb->mark = MARK_MAGIC_TO_PROXY;
	return 0;
}

#endif
