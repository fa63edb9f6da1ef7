/* Connection tracking: lets replies of allowed connections pass and
 * remembers allowed flows; the agent garbage-collects expired entries. */
#ifndef CILIA_CONNTRACK_H
#define CILIA_CONNTRACK_H

#include "maps.h"
#include "parse.h"

static __always_inline __u64 now_seconds(void)
{
	return bpf_ktime_get_boot_ns() / 1000000000ULL;
}

static __always_inline __u32 ct_lifetime(const struct flow *f, __u32 flags)
{
	struct datapath_config *cfg = config_get();
	__u32 tcp = 21600, syn = 60, closing = 10, nontcp = 60;

	if (cfg) {
		tcp = cfg->ct_lifetime_tcp;
		syn = cfg->ct_lifetime_tcp_syn;
		closing = cfg->ct_lifetime_tcp_closing;
		nontcp = cfg->ct_lifetime_nontcp;
	}
	if (f->proto != IPPROTO_TCP)
		return nontcp;
	if (flags & CT_F_CLOSING)
		return closing;
	if (!(flags & CT_F_SEEN_REPLY))
		return syn;
	return tcp;
}

static __always_inline void ct_fill_key(struct ct_key *k, const struct flow *f, __u16 ep_id,
					__u8 direction, int reverse)
{
	k->saddr = reverse ? f->daddr : f->saddr;
	k->daddr = reverse ? f->saddr : f->daddr;
	k->sport = reverse ? f->dport : f->sport;
	k->dport = reverse ? f->sport : f->dport;
	k->proto = f->proto;
	k->direction = direction;
	k->ep_id = ep_id;
}

static __always_inline void ct_touch(struct ct_entry *e, const struct flow *f, __u32 bytes,
				     __u32 add_flags)
{
	__u32 flags = e->flags | add_flags;

	if (f->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		flags |= CT_F_CLOSING;
	e->flags = flags;
	e->expires = now_seconds() + ct_lifetime(f, flags);
	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, bytes);
}

/* Is this packet a reply of a flow tracked in `scope` (the original packet's
 * direction, or CT_NODEPORT)? Then *rev_nat is that flow's service (0: none). */
static __always_inline int ct_is_reply_of(const struct flow *f, __u16 ep_id, __u8 scope,
					  __u32 bytes, __u32 *rev_nat)
{
	struct ct_key k = {};

	ct_fill_key(&k, f, ep_id, scope, 1);
	struct ct_entry *e = bpf_map_lookup_elem(&cilia_ct, &k);

	if (!e)
		return 0;
	ct_touch(e, f, bytes, CT_F_SEEN_REPLY);
	*rev_nat = e->rev_nat;
	return 1;
}

/* Is this packet a reply of a connection opened in the other direction? Then
 * *rev_nat is the service whose frontend the reply must carry (0: none). */
static __always_inline int ct_is_reply(const struct flow *f, __u16 ep_id, __u8 direction,
				       __u32 bytes, __u32 *rev_nat)
{
	return ct_is_reply_of(f, ep_id, direction == DIR_INGRESS ? DIR_EGRESS : DIR_INGRESS, bytes,
			      rev_nat);
}

/* Record an allowed packet of the original direction (of a flow translated for
 * service rev_nat, or 0); 0 or a drop reason. */
static __always_inline int ct_track(const struct flow *f, __u16 ep_id, __u8 direction,
				    __u32 bytes, __u32 rev_nat)
{
	struct ct_key k = {};

	ct_fill_key(&k, f, ep_id, direction, 0);
	struct ct_entry *e = bpf_map_lookup_elem(&cilia_ct, &k);

	if (e) {
		ct_touch(e, f, bytes, 0);
		return 0;
	}
	struct ct_entry fresh = { .packets = 1, .bytes = bytes, .rev_nat = rev_nat };

	if (f->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		fresh.flags = CT_F_CLOSING;
	fresh.expires = now_seconds() + ct_lifetime(f, fresh.flags);
	if (bpf_map_update_elem(&cilia_ct, &k, &fresh, BPF_NOEXIST) < 0)
		return DROP_CT_CREATE_FAILED;
	return 0;
}

/* Is there a connection, either way round and in either direction, of the
 * packet an ICMP error quotes? Then the error belongs to it. */
static __always_inline int ct_related(const struct flow *quoted, __u16 ep_id)
{
	struct ct_key k = {};
	int i;

#pragma unroll
	for (i = 0; i < 4; i++) {
		ct_fill_key(&k, quoted, ep_id, i & 1 ? DIR_EGRESS : DIR_INGRESS, i >> 1);
		if (bpf_map_lookup_elem(&cilia_ct, &k))
			return 1;
	}
	return 0;
}

/* Policy now denies this flow: forget it so it cannot come back as a reply. */
static __always_inline void ct_forget(const struct flow *f, __u16 ep_id, __u8 direction)
{
	struct ct_key k = {};

	ct_fill_key(&k, f, ep_id, direction, 0);
	bpf_map_delete_elem(&cilia_ct, &k);
}

#endif
