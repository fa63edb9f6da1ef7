/* ARP responder: every ARP request a pod sends is answered with its router's
 * MAC (the host-side veth's), whatever address it asks for, as the reference
 * does. So a pod reaches the node through its router whichever gateway or node
 * address it was given, also after the router address changed. */
#ifndef CILIA_ARP_H
#define CILIA_ARP_H

#include "common.h"

/* From linux/if_arp.h, which pulls in libc's socket headers (not for BPF). */
#define ARPHRD_ETHER 1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2

struct arp_frame {
	struct ethhdr eth;
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__be32 sip;
	__u8 tha[ETH_ALEN];
	__be32 tip;
} __attribute__((packed));

/* TC_ACT_OK when the frame is not an Ethernet/IPv4 ARP request of the pod for
 * another address (the stack sees it), else the reply's redirect back to the pod. */
static __always_inline int arp_respond(struct __sk_buff *skb, const struct endpoint_info *ep)
{
	struct arp_frame f;
	__be32 target;

	if (bpf_skb_load_bytes(skb, 0, &f, sizeof(f)) < 0)
		return TC_ACT_OK;
	if (f.htype != bpf_htons(ARPHRD_ETHER) || f.ptype != bpf_htons(ETH_P_IP) ||
	    f.hlen != ETH_ALEN || f.plen != 4 || f.op != bpf_htons(ARPOP_REQUEST))
		return TC_ACT_OK;
	target = f.tip;
	if (target == ep->ipv4 || f.sip != ep->ipv4)
		return TC_ACT_OK; /* duplicate address detection, or not the pod's own */
	__builtin_memcpy(f.eth.h_dest, f.sha, ETH_ALEN);
	__builtin_memcpy(f.eth.h_source, ep->router_mac, ETH_ALEN);
	f.op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(f.tha, f.sha, ETH_ALEN);
	f.tip = f.sip;
	__builtin_memcpy(f.sha, ep->router_mac, ETH_ALEN);
	f.sip = target;
	if (bpf_skb_store_bytes(skb, 0, &f, sizeof(f), 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

#endif
