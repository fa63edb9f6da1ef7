/* Cilia endpoint datapath, attached with tcx to the host side of each pod's
 * veth. One object serves every endpoint: the per-endpoint configuration is
 * looked up by the device's ifindex.
 *
 *   tcx ingress of the host veth = packets leaving the pod  (pod egress)
 *   tcx egress  of the host veth = packets entering the pod (pod ingress)
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/metrics.h"
#include "lib/parse.h"
#include "lib/conntrack.h"
#include "lib/policy.h"

#define ETH_P_ARP_BE bpf_htons(ETH_P_ARP)
#define ETH_P_IP_BE bpf_htons(ETH_P_IP)

static __always_inline int handle(struct __sk_buff *skb, __u8 direction)
{
	__u32 ifindex = skb->ifindex;
	struct endpoint_info *ep = bpf_map_lookup_elem(&cilia_endpoints, &ifindex);

	if (!ep)
		return drop(skb, DROP_NO_ENDPOINT, direction);
	if (skb->protocol == ETH_P_ARP_BE)
		return forward(skb, direction);
	if (skb->protocol != ETH_P_IP_BE)
		return drop(skb, DROP_UNSUPPORTED_L3, direction); /* IPv6 and the rest */

	struct flow f;
	int ret = parse_ipv4(skb, &f);

	if (ret != PARSE_OK)
		return drop(skb, ret, direction);
	if (direction == DIR_EGRESS && f.saddr != ep->ipv4)
		return drop(skb, DROP_INVALID_SIP, direction);
	if (direction == DIR_INGRESS && f.daddr != ep->ipv4)
		return drop(skb, DROP_UNKNOWN_TARGET, direction);

	if (ct_is_reply(&f, ep->ep_id, direction, skb->len))
		return forward(skb, direction);

	__u8 enforced = direction == DIR_INGRESS ? (ep->flags & EP_F_INGRESS_ENFORCED)
						 : (ep->flags & EP_F_EGRESS_ENFORCED);
	if (enforced) {
		__u32 peer = identity_of(direction == DIR_INGRESS ? f.saddr : f.daddr);

		ret = policy_verdict(peer, ep->ep_id, &f, direction);
		if (ret) {
			ct_forget(&f, ep->ep_id, direction);
			return drop(skb, ret, direction);
		}
	}
	ret = ct_track(&f, ep->ep_id, direction, skb->len);
	if (ret)
		return drop(skb, ret, direction);
	return forward(skb, direction);
}

SEC("tc")
int cilia_from_container(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS);
}

SEC("tc")
int cilia_to_container(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS);
}

char __license[] SEC("license") = "GPL";
