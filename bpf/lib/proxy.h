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

/* 0 after assigning the skb to the proxy listening on proxy_port, else a drop reason. */
static __always_inline int redirect_to_proxy(struct __sk_buff *skb, const struct flow *f,
					     __u16 proxy_port)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_sock *sk;
	long err;

	if (f->proto != IPPROTO_TCP)
		return DROP_PROXY_LOOKUP_FAILED;
	tuple.ipv4.saddr = f->saddr;
	tuple.ipv4.daddr = f->daddr;
	tuple.ipv4.sport = f->sport;
	tuple.ipv4.dport = f->dport;
	/* A packet of an established proxied connection goes to its socket... */
	sk = bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (sk && sk->state == BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		sk = NULL;
	}
	if (!sk) {
		/* ...a new one to the proxy's listener. */
		tuple.ipv4.dport = bpf_htons(proxy_port);
		sk = bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
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
