/* Per-CPU forward and drop counters, keyed by (reason, direction). */
#ifndef CILIA_METRICS_H
#define CILIA_METRICS_H

#include "maps.h"
#include "events.h"

static __always_inline void count(__u8 reason, __u8 direction, __u32 bytes)
{
	struct metrics_key key = { .reason = reason, .direction = direction };
	struct metrics_value *val = bpf_map_lookup_elem(&cilia_metrics, &key);

	if (val) {
		val->packets += 1; /* per-CPU: no atomics needed */
		val->bytes += bytes;
		return;
	}
	struct metrics_value init = { .packets = 1, .bytes = bytes };
	bpf_map_update_elem(&cilia_metrics, &key, &init, BPF_NOEXIST);
}

/* Count, report and drop. */
static __always_inline int drop(struct __sk_buff *skb, const struct verdict_ctx *c, __u8 reason)
{
	count(reason, c->direction, skb->len);
	emit_event(skb, c, EVENT_DROP, reason);
	return TC_ACT_SHOT;
}

/* Count, trace if asked, and pass. */
static __always_inline int forward(struct __sk_buff *skb, const struct verdict_ctx *c)
{
	count(REASON_FORWARDED, c->direction, skb->len);
	if (c->trace)
		emit_event(skb, c, EVENT_TRACE, 0);
	return TC_ACT_OK;
}

#endif
