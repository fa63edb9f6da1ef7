/* Drop and trace events for `cilia monitor`, through a ring buffer. A full
 * buffer never blocks the datapath: the loss is counted per CPU instead. */
#ifndef CILIA_EVENTS_H
#define CILIA_EVENTS_H

#include "maps.h"

/* What the datapath knows about a packet when it decides. */
struct verdict_ctx {
	struct flow f;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 ifindex;
	__u16 ep_id;
	__u8 direction;
	__u8 l3;
	__u8 trace;
};

static __always_inline void count_lost(__u32 which)
{
	__u64 *lost = bpf_map_lookup_elem(&cilia_events_lost, &which);

	if (lost)
		*lost += 1;
}

static __always_inline void emit_event(struct __sk_buff *skb, const struct verdict_ctx *c,
				       __u8 type, __u8 reason)
{
	struct event *e = bpf_ringbuf_reserve(&cilia_events, sizeof(*e), 0);

	if (!e) {
		count_lost(type == EVENT_DROP ? EVENT_LOST_DROP : EVENT_LOST_TRACE);
		return;
	}
	e->ts_ns = bpf_ktime_get_boot_ns();
	e->type = type;
	e->reason = reason;
	e->direction = c->direction;
	e->proto = c->f.proto;
	e->ep_id = c->ep_id;
	e->tcp_flags = c->f.tcp_flags;
	e->l3 = c->l3;
	e->src_identity = c->src_identity;
	e->dst_identity = c->dst_identity;
	e->saddr = c->f.saddr;
	e->daddr = c->f.daddr;
	e->sport = c->f.sport;
	e->dport = c->f.dport;
	e->len = skb->len;
	e->ifindex = c->ifindex;
	e->pad = 0;
	bpf_ringbuf_submit(e, 0);
}

#endif
