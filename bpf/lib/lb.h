/* Service load balancing. A packet to a frontend (a ClusterIP, or a node address
 * and node port) is given a backend once per flow, remembered in a CT_SERVICE
 * entry, and its destination rewritten to it; policy and conntrack then see the
 * backend. Replies carry the frontend again (reverse translation through the
 * translated flow's CT entry), so the client only ever sees the frontend. */
#ifndef CILIA_LB_H
#define CILIA_LB_H

#include <linux/in.h>
#include "conntrack.h"

#define IPV4_CSUM_OFF (ETH_HLEN + 10)
#define IPV4_SADDR_OFF (ETH_HLEN + 12)
#define IPV4_DADDR_OFF (ETH_HLEN + 16)
#define IPV6_SADDR_OFF (ETH_HLEN + 8)
#define IPV6_DADDR_OFF (ETH_HLEN + 24)

/* The service whose frontend the flow is addressed to (only TCP and UDP are). */
static __always_inline int lb_service_of(const struct flow *f, struct lb_service *svc)
{
	struct lb_key k = { .addr = f->daddr, .port = f->dport, .proto = f->proto };
	struct lb_service *v;

	if (f->proto != IPPROTO_TCP && f->proto != IPPROTO_UDP)
		return 0;
	v = bpf_map_lookup_elem(&cilia_lb_services, &k);
	if (!v)
		return 0;
	*svc = *v;
	return 1;
}

/* The backend of this flow: the one its CT_SERVICE entry names while that
 * backend exists, else a random slot's, recorded. 0 or a drop reason. */
static __always_inline int lb_pick(const struct flow *f, __u16 ep_id, const struct lb_service *svc,
				   __u32 bytes, struct lb_backend *out)
{
	struct ct_key k = {};
	struct lb_slot_key slot = { .rev_nat = svc->rev_nat };
	struct ct_entry *e;
	struct lb_backend *b;
	__u32 *id;

	if (!svc->count)
		return DROP_NO_SERVICE;
	ct_fill_key(&k, f, ep_id, CT_SERVICE, 0);
	e = bpf_map_lookup_elem(&cilia_ct, &k);
	if (e) {
		b = bpf_map_lookup_elem(&cilia_lb_backends, &e->backend_id);
		if (b) {
			ct_touch(e, f, bytes, 0);
			*out = *b;
			return 0;
		}
	}
	slot.slot = bpf_get_prandom_u32() % svc->count + 1;
	id = bpf_map_lookup_elem(&cilia_lb_slots, &slot);
	if (!id)
		return DROP_NO_SERVICE;
	slot.slot = *id; /* now the backend id */
	b = bpf_map_lookup_elem(&cilia_lb_backends, &slot.slot);
	if (!b)
		return DROP_NO_SERVICE;
	*out = *b;
	struct ct_entry fresh = {
		.packets = 1, .bytes = bytes, .rev_nat = svc->rev_nat, .backend_id = slot.slot
	};

	/* A TCP flow's service entry lives as long as an established one: the
	 * translated flow's own entry tells the handshake apart. */
	if (f->proto == IPPROTO_TCP)
		fresh.flags = CT_F_SEEN_REPLY;
	if (f->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		fresh.flags |= CT_F_CLOSING;
	fresh.expires = now_seconds() + ct_lifetime(f, fresh.flags);
	if (bpf_map_update_elem(&cilia_ct, &k, &fresh, BPF_ANY) < 0)
		return DROP_CT_CREATE_FAILED;
	return 0;
}

/* Rewrite the packet's destination (dst) or source address and port, checksums
 * included; the flow follows. 0 or DROP_WRITE_ERROR. */
static __always_inline int lb_rewrite(struct __sk_buff *skb, struct flow *f,
				      const union v6addr *addr, __u16 port, int dst)
{
	union v6addr *old_addr = dst ? &f->daddr : &f->saddr;
	__u16 *old_port = dst ? &f->dport : &f->sport;
	__u32 csum_off = f->l4_off + (f->proto == IPPROTO_TCP ? 16 : 6);
	__u64 mangled = f->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__u32 port_off = f->l4_off + (dst ? 2 : 0);

	if (f->family == 4) {
		__u32 from = old_addr->p[3], to = addr->p[3];

		if (bpf_l3_csum_replace(skb, IPV4_CSUM_OFF, from, to, 4) < 0 ||
		    bpf_l4_csum_replace(skb, csum_off, from, to, BPF_F_PSEUDO_HDR | mangled | 4) < 0 ||
		    bpf_skb_store_bytes(skb, dst ? IPV4_DADDR_OFF : IPV4_SADDR_OFF, &to, 4, 0) < 0)
			return DROP_WRITE_ERROR;
	} else {
		__s64 diff = bpf_csum_diff(old_addr->p, 16, (__be32 *)addr->p, 16, 0);

		if (diff < 0 ||
		    bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR | mangled) < 0 ||
		    bpf_skb_store_bytes(skb, dst ? IPV6_DADDR_OFF : IPV6_SADDR_OFF, addr, 16, 0) < 0)
			return DROP_WRITE_ERROR;
	}
	if (port != *old_port &&
	    (bpf_l4_csum_replace(skb, csum_off, *old_port, port, mangled | 2) < 0 ||
	     bpf_skb_store_bytes(skb, port_off, &port, 2, 0) < 0))
		return DROP_WRITE_ERROR;
	*old_addr = *addr;
	*old_port = port;
	return 0;
}

/* A packet to a frontend (only those flagged LB_F_NODEPORT when nodeport_only)
 * goes to its flow's backend; *rev_nat names the service (0: not a frontend).
 * 0 or a drop reason (158: the service has no backend). */
static __always_inline int lb_translate(struct __sk_buff *skb, struct flow *f, __u16 ep_id,
					__u8 nodeport_only, __u32 *rev_nat)
{
	struct lb_service svc;
	struct lb_backend b;
	int ret;

	*rev_nat = 0;
	if (!lb_service_of(f, &svc))
		return 0;
	if (nodeport_only && !(svc.flags & LB_F_NODEPORT))
		return 0;
	ret = lb_pick(f, ep_id, &svc, skb->len, &b);
	if (ret)
		return ret;
	*rev_nat = svc.rev_nat;
	return lb_rewrite(skb, f, &b.addr, b.port, 1);
}

/* A reply of a translated flow: its source becomes the frontend again, and the
 * flow's CT_SERVICE entry is kept alive with it. 0 or DROP_WRITE_ERROR. */
static __always_inline int lb_reverse(struct __sk_buff *skb, struct flow *f, __u16 ep_id,
				      __u32 rev_nat)
{
	struct lb_frontend *fe = bpf_map_lookup_elem(&cilia_lb_revnat, &rev_nat);
	struct ct_key k = {};
	struct ct_entry *e;
	int ret;

	if (!fe)
		return 0; /* the service went away: its flows end with it */
	ret = lb_rewrite(skb, f, &fe->addr, fe->port, 0);
	if (ret)
		return ret;
	ct_fill_key(&k, f, ep_id, CT_SERVICE, 1);
	e = bpf_map_lookup_elem(&cilia_ct, &k);
	if (e)
		ct_touch(e, f, 0, 0);
	return 0;
}

#endif
