/* Cilia datapath, attached with tcx to the host side of each pod's veth, to
 * the proxy device and to the VXLAN device. One object serves every
 * endpoint: the per-endpoint configuration is looked up by the device's ifindex.
 *
 *   tcx ingress of the host veth = packets leaving the pod  (pod egress)
 *   tcx egress  of the host veth = packets entering the pod (pod ingress)
 *   tcx ingress of the VXLAN device = packets from other nodes
 *   tcx egress  of the VXLAN device = packets to other nodes
 */
#include <linux/if_packet.h>
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/events.h"
#include "lib/metrics.h"
#include "lib/parse.h"
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/proxy.h"
#include "lib/overlay.h"
#include "lib/arp.h"
#include "lib/icmp.h"
#include "lib/lb.h"

#define ETH_P_ARP_BE bpf_htons(ETH_P_ARP)
#define ETH_P_IP_BE bpf_htons(ETH_P_IP)
#define ETH_P_IPV6_BE bpf_htons(ETH_P_IPV6)

/* 4 or 6 by the frame's protocol, 0 for any other. */
static __always_inline __u8 l3_of(const struct __sk_buff *skb)
{
	if (skb->protocol == ETH_P_IP_BE)
		return 4;
	return skb->protocol == ETH_P_IPV6_BE ? 6 : 0;
}

static __always_inline __u8 tracing(const struct endpoint_info *ep)
{
	struct datapath_config *cfg;

	if (ep->flags & EP_F_TRACE)
		return 1;
	cfg = config_get();
	return cfg && cfg->trace_all;
}

/* Ingress policy of a local destination, applied where its peer sends: there
 * the packet can still be assigned to a proxy socket. Returns a drop reason
 * (0: allowed, or not a local enforced destination) and the proxy port. */
static __always_inline int local_ingress_verdict(const struct verdict_ctx *c, __u16 *proxy_port)
{
	struct lxc_ip_info *dst = bpf_map_lookup_elem(&cilia_lxc_ip, &c->f.daddr);

	*proxy_port = 0;
	if (!dst || !(dst->flags & EP_F_INGRESS_ENFORCED))
		return 0;
	return policy_verdict(c->src_identity, 0, dst->ep_id, &c->f, DIR_INGRESS, proxy_port);
}

/* 0 and the proxy device's ifindex, or DROP_PROXY_BYPASS when there is none. */
static __always_inline int via_proxy_device(__u32 *ifindex)
{
	struct datapath_config *cfg = config_get();

	if (!cfg || !cfg->proxy_ifindex)
		return DROP_PROXY_BYPASS;
	*ifindex = cfg->proxy_ifindex;
	return 0;
}

/* Where an allowed packet leaving a pod goes: to another node's pod through
 * the tunnel (VNI = the pod's identity), anywhere else through the stack. */
static __always_inline int to_network(struct __sk_buff *skb, const struct verdict_ctx *c,
				      const struct ipcache_value *dst, __u8 reply)
{
	struct datapath_config *cfg = config_get();
	__u32 remote = 0;
	int ret;

	if (!cfg || !cfg->vxlan_ifindex)
		return forward(skb, c);
	ret = tunnel_endpoint_of(cfg, &c->f.daddr, dst, &remote);
	if (!ret && !remote && reply) {
		/* An outside client's reply, its flow came in through another node's
		 * NodePort: back the way it came (that node translates it). */
		__u32 *node = lb_return_of(&c->f, DIR_INGRESS, 1);

		if (node)
			remote = *node;
	}
	if (!ret && remote)
		ret = set_tunnel(skb, remote, c->src_identity);
	if (ret) {
		ct_forget(&c->f, c->ep_id, DIR_EGRESS);
		return drop(skb, c, ret);
	}
	if (!remote)
		return forward(skb, c);
	forward(skb, c);
	return bpf_redirect(cfg->vxlan_ifindex, 0);
}

static __always_inline int handle(struct __sk_buff *skb, __u8 direction)
{
	struct verdict_ctx c = { .direction = direction, .ifindex = skb->ifindex };
	__u32 ifindex = skb->ifindex;
	struct endpoint_info *ep = bpf_map_lookup_elem(&cilia_endpoints, &ifindex);

	if (!ep)
		return drop(skb, &c, DROP_NO_ENDPOINT);
	c.ep_id = ep->ep_id;
	c.trace = tracing(ep);
	if (direction == DIR_INGRESS)
		c.dst_identity = ep->identity;
	else
		c.src_identity = ep->identity;

	if (skb->protocol == ETH_P_ARP_BE) {
		int answered = direction == DIR_EGRESS ? arp_respond(skb, ep) : TC_ACT_OK;

		return answered == TC_ACT_OK ? forward(skb, &c) : answered;
	}
	c.l3 = l3_of(skb);
	/* An endpoint without an IPv6 address takes no IPv6 (nor other L3). */
	if (!c.l3 || (c.l3 == 6 && addr_is_zero(&ep->ipv6)))
		return drop(skb, &c, DROP_UNSUPPORTED_L3);

	int ret = parse_ip(skb, &c.f);

	if (ret != PARSE_OK)
		return drop(skb, &c, ret);
	if (icmp6_link_control(&c.f, ep, direction)) {
		int answered = direction == DIR_EGRESS ? nd_respond(skb, &c.f, ep) : TC_ACT_OK;

		return answered == TC_ACT_OK ? forward(skb, &c) : answered;
	}

	union v6addr own = ep->ipv6;

	if (c.l3 == 4)
		addr_set_v4(&own, ep->ipv4);
	if (direction == DIR_EGRESS && !addr_eq(&c.f.saddr, &own))
		return drop(skb, &c, DROP_INVALID_SIP);
	if (direction == DIR_INGRESS && !addr_eq(&c.f.daddr, &own))
		return drop(skb, &c, DROP_UNKNOWN_TARGET);

	/* A service frontend: from here on the packet goes to its backend. */
	__u32 rev_nat = 0;

	if (direction == DIR_EGRESS) {
		ret = lb_translate(skb, &c.f, c.ep_id, 0, &rev_nat);
		if (ret)
			return drop(skb, &c, ret);
	}

	struct ipcache_value peer_info;
	__u32 peer = identity_of(direction == DIR_INGRESS ? &c.f.saddr : &c.f.daddr, &peer_info);
	/* From another node the source identity is the one its VNI carried. */
	__u8 tunnelled = direction == DIR_INGRESS && from_overlay(skb, &peer);
	__u8 proxied = direction == DIR_INGRESS && !tunnelled && from_proxy(skb, &peer);

	if (tunnelled || proxied)
		peer_info.flags = 0;

	if (direction == DIR_INGRESS)
		c.src_identity = peer;
	else
		c.dst_identity = peer;

	__u32 reply_nat = 0;

	if (ct_is_reply(&c.f, c.ep_id, direction, skb->len, &reply_nat)) {
		ret = reply_nat ? lb_reverse(skb, &c.f, c.ep_id, reply_nat) : 0;
		if (ret)
			return drop(skb, &c, ret);
		return direction == DIR_EGRESS ? to_network(skb, &c, &peer_info, 1) : forward(skb, &c);
	}
	if (icmp_error_related(skb, &c.f, c.ep_id))
		return direction == DIR_EGRESS ? to_network(skb, &c, &peer_info, 0) : forward(skb, &c);

	__u8 enforced = direction == DIR_INGRESS ? (ep->flags & EP_F_INGRESS_ENFORCED)
						 : (ep->flags & EP_F_EGRESS_ENFORCED);

	/* Identity 0 in a proxy mark: the proxy relays a flow the datapath already
	 * authorized at its source (both the sender's egress and our ingress). */
	if (proxied && peer == 0)
		enforced = 0;
	__u16 proxy_port = 0;
	__u32 proxy_ifindex = 0;

	if (enforced) {
		ret = policy_verdict(peer, peer_info.flags, c.ep_id, &c.f, direction, &proxy_port);
		/* On an L7 port only the proxy may deliver. Local pods were sent to
		 * it at their own veth; anything else (the node's own processes,
		 * routed traffic) goes round through the proxy device. */
		if (!ret && proxy_port && direction == DIR_INGRESS && !proxied)
			ret = via_proxy_device(&proxy_ifindex);
		if (ret) {
			ct_forget(&c.f, c.ep_id, direction);
			return drop(skb, &c, ret);
		}
	}
	ret = ct_track(&c.f, c.ep_id, direction, skb->len, rev_nat);
	if (ret)
		return drop(skb, &c, ret);
	if (proxy_ifindex) {
		forward(skb, &c);
		return bpf_redirect(proxy_ifindex, BPF_F_INGRESS);
	}
	if (direction == DIR_EGRESS) {
		__u16 ingress_proxy = 0;
		int denied = local_ingress_verdict(&c, &ingress_proxy);

		/* The proxy's upstream bypasses a local destination's ingress
		 * check, so a redirected flow must pass it here. */
		if (proxy_port && denied)
			return drop(skb, &c, denied);
		if (!proxy_port && !denied)
			proxy_port = ingress_proxy;
		/* To the local proxy even for a remote destination: the proxy's
		 * upstream then leaves as host traffic (cilia_to_overlay). */
		if (proxy_port) {
			ret = redirect_to_proxy(skb, &c.f, proxy_port);
			if (ret)
				return drop(skb, &c, ret);
			return forward(skb, &c);
		}
		return to_network(skb, &c, &peer_info, 0);
	}
	return forward(skb, &c);
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

/* tc ingress of the proxy device: packets cilia_to_container bounced here
 * (to a local endpoint's L7 port, not from a local pod) are assigned to the
 * proxy listener of the destination's ingress redirect, then routed locally
 * like those assigned at a pod's veth. Counted once, in cilia_to_container. */
SEC("tc")
int cilia_from_host(struct __sk_buff *skb)
{
	struct verdict_ctx c = { .direction = DIR_INGRESS, .ifindex = skb->ifindex };
	struct ipcache_value src_info;
	struct lxc_ip_info *dst;
	__u16 proxy_port = 0;
	int ret;

	c.l3 = l3_of(skb);
	if (!c.l3)
		return TC_ACT_SHOT; /* only bounced IP packets come here */
	ret = parse_ip(skb, &c.f);
	if (ret != PARSE_OK)
		return drop(skb, &c, ret);
	if (c.l3 == 6 && is_link_scope(&c.f.daddr))
		return TC_ACT_SHOT; /* the device's own neighbour discovery and MLD */
	dst = bpf_map_lookup_elem(&cilia_lxc_ip, &c.f.daddr);
	if (!dst)
		return drop(skb, &c, DROP_UNKNOWN_TARGET);
	c.ep_id = dst->ep_id;
	c.src_identity = identity_of(&c.f.saddr, &src_info);
	if (from_overlay(skb, &c.src_identity))
		src_info.flags = 0; /* from another node: the identity of its VNI */
	ret = policy_verdict(c.src_identity, src_info.flags, c.ep_id, &c.f, DIR_INGRESS, &proxy_port);
	if (!ret && !proxy_port)
		ret = DROP_PROXY_BYPASS; /* the redirect went away meanwhile */
	if (!ret)
		ret = redirect_to_proxy(skb, &c.f, proxy_port);
	if (ret)
		return drop(skb, &c, ret);
	/* Addressed to the pod's MAC: make the stack take it as ours. */
	bpf_skb_change_type(skb, PACKET_HOST);
	return TC_ACT_OK;
}

/* tcx ingress of the VXLAN device: packets from other nodes. The VNI is the
 * source identity; a packet for a local endpoint takes it along in its mark
 * to the endpoint's cilia_to_container, which applies the ingress policy
 * (and counts the verdict). Replies to this node's own address go to the
 * host; anything else is dropped. */
SEC("tc")
int cilia_from_overlay(struct __sk_buff *skb)
{
	struct verdict_ctx c = { .direction = DIR_INGRESS, .ifindex = skb->ifindex };
	struct bpf_tunnel_key key = {};
	struct ipcache_value dst_info;
	struct lxc_ip_info *dst;
	int ret;

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return drop(skb, &c, DROP_NO_TUNNEL_KEY);
	c.src_identity = overlay_identity(key.tunnel_id);
	c.l3 = l3_of(skb);
	ret = parse_ip(skb, &c.f);
	if (ret != PARSE_OK)
		return drop(skb, &c, ret);
	if (c.src_identity > MARK_IDENTITY_MAX)
		return drop(skb, &c, DROP_INVALID);
	dst = bpf_map_lookup_elem(&cilia_lxc_ip, &c.f.daddr);
	if (dst) {
		c.ep_id = dst->ep_id;
		skb->mark = MARK_MAGIC_OVERLAY | (c.src_identity << 16);
		/* An outside client through another node's NodePort: replies go back there. */
		if (c.src_identity == ID_WORLD)
			lb_return_set(&c.f, DIR_INGRESS, bpf_htonl(key.remote_ipv4));
	} else if (identity_of(&c.f.daddr, &dst_info) == ID_HOST) {
		c.dst_identity = ID_HOST;
		forward(skb, &c);
	} else if (lb_return_of(&c.f, DIR_EGRESS, 1)) {
		/* A reply to an outside client whose flow this node's NodePort sent on:
		 * the stack routes it out (translated back on the node device). */
		forward(skb, &c);
	} else {
		return drop(skb, &c, DROP_UNKNOWN_TARGET);
	}
	/* Addressed to the sending node's MAC: make the stack take it as ours. */
	bpf_skb_change_type(skb, PACKET_HOST);
	return TC_ACT_OK;
}

/* The identity a packet routed into the tunnel carries: the one a proxy put
 * in its mark; a local endpoint's for a pod's packet that came through the
 * stack (a restarted agent has not turned the tunnel on yet), and for one the
 * node sends from a local endpoint's address (an ingress proxy answering for
 * the pod on its transparent socket); world for other forwarded packets; host
 * for the node's own. */
static __always_inline __u32 routed_source_identity(const struct __sk_buff *skb,
						     const union v6addr *saddr)
{
	__u32 identity = 0, ifindex = skb->ingress_ifindex;
	struct ipcache_value src_info;
	struct endpoint_info *ep;

	if (from_proxy(skb, &identity) && identity)
		return identity;
	if (!ifindex)
		return bpf_map_lookup_elem(&cilia_lxc_ip, saddr) ? identity_of(saddr, &src_info)
								 : ID_HOST;
	ep = bpf_map_lookup_elem(&cilia_endpoints, &ifindex);
	return ep ? ep->identity : ID_WORLD;
}

/* tcx egress of the VXLAN device. Packets a pod's program redirected here
 * already carry their tunnel key. Those routed here by the agent's routes to
 * other nodes' pod ranges (the node's own, the L7 proxies' upstream
 * connections among them) get one here. */
SEC("tc")
int cilia_to_overlay(struct __sk_buff *skb)
{
	struct verdict_ctx c = { .direction = DIR_EGRESS, .ifindex = skb->ifindex };
	struct datapath_config *cfg = config_get();
	struct bpf_tunnel_key key = {};
	struct ipcache_value dst_info;
	__u32 remote = 0;
	int ret;

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) == 0)
		return TC_ACT_OK;
	c.l3 = l3_of(skb);
	if (!c.l3 || !cfg)
		return TC_ACT_SHOT; /* without a key the device could not send it anyway */
	ret = parse_ip(skb, &c.f);
	if (ret != PARSE_OK)
		return drop(skb, &c, ret);
	/* The device's own neighbour discovery and MLD: nowhere to tunnel them. */
	if (c.l3 == 6 && is_link_scope(&c.f.daddr))
		return TC_ACT_SHOT;
	c.src_identity = routed_source_identity(skb, &c.f.saddr);
	c.dst_identity = identity_of(&c.f.daddr, &dst_info);
	ret = tunnel_endpoint_of(cfg, &c.f.daddr, &dst_info, &remote);
	if (!ret && !remote)
		ret = DROP_NO_TUNNEL_ENDPOINT; /* routed here, yet no other node owns it */
	if (!ret)
		ret = set_tunnel(skb, remote, c.src_identity);
	if (ret)
		return drop(skb, &c, ret);
	if (c.src_identity == ID_WORLD)
		lb_return_set(&c.f, DIR_EGRESS, 0); /* its replies come back through the tunnel */
	return forward(skb, &c);
}

/* tcx ingress of a node device (where outside traffic enters): a packet to a
 * node address's node port goes to its service's backend, tracked in
 * CT_NODEPORT for the replies; everything else passes untouched (the device
 * is the node's, not ours to police). */
SEC("tc")
int cilia_from_netdev(struct __sk_buff *skb)
{
	struct verdict_ctx c = {
		.direction = DIR_INGRESS, .ifindex = skb->ifindex, .src_identity = ID_WORLD
	};
	__u32 rev_nat = 0;
	int ret;

	c.l3 = l3_of(skb);
	if (!c.l3 || parse_ip(skb, &c.f) != PARSE_OK)
		return TC_ACT_OK;
	ret = lb_translate(skb, &c.f, 0, 1, &rev_nat);
	if (!ret && rev_nat)
		ret = ct_track(&c.f, 0, CT_NODEPORT, skb->len, rev_nat);
	if (ret)
		return drop(skb, &c, ret);
	return TC_ACT_OK;
}

/* tcx egress of a node device: replies of NodePort flows carry the node
 * address and node port again. */
SEC("tc")
int cilia_to_netdev(struct __sk_buff *skb)
{
	struct verdict_ctx c = { .direction = DIR_EGRESS, .ifindex = skb->ifindex };
	__u32 rev_nat = 0;
	int ret;

	c.l3 = l3_of(skb);
	if (!c.l3 || parse_ip(skb, &c.f) != PARSE_OK)
		return TC_ACT_OK;
	if (!ct_is_reply_of(&c.f, 0, CT_NODEPORT, skb->len, &rev_nat) || !rev_nat)
		return TC_ACT_OK;
	ret = lb_reverse(skb, &c.f, 0, rev_nat);
	if (ret)
		return drop(skb, &c, ret);
	return TC_ACT_OK;
}

#include "lib/lb_sock.h"

char __license[] SEC("license") = "GPL";
