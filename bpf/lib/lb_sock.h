/* Socket load balancing for the node's own processes (cgroup hooks): a connect
 * or datagram to a service frontend goes to a backend straight away, so the
 * kernel picks the route (and source address) to that backend and the backend
 * sees the node as `host`, as a health check must. Only sockets of the node's
 * network namespace are translated; pods are load-balanced at their veth. A
 * socket keeps its backend (chosen by its cookie); received datagrams carry
 * the frontend again. */
#ifndef CILIA_LB_SOCK_H
#define CILIA_LB_SOCK_H

#include "lb.h"

struct lb_sock_key {
	__u64 cookie;
	union v6addr addr; /* the backend */
	__u16 port;
	__u16 pad1;
	__u32 pad2;
};

/* Socket and backend -> the frontend it was asked for (for recvmsg). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct lb_sock_key);
	__type(value, struct lb_frontend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb_sock SEC(".maps");

static __always_inline int sock_in_host_netns(struct bpf_sock_addr *ctx)
{
	struct datapath_config *cfg = config_get();

	return cfg && cfg->host_netns_cookie && bpf_get_netns_cookie(ctx) == cfg->host_netns_cookie;
}

/* Translate *addr:*port (a frontend) to a backend; 0 to refuse (a service without
 * backends), 1 to let the call go on. */
static __always_inline int sock_translate(struct bpf_sock_addr *ctx, union v6addr *addr,
					  __u32 *port)
{
	struct lb_key k = { .addr = *addr, .port = (__u16)*port, .proto = ctx->protocol };
	struct lb_slot_key slot = {};
	struct lb_service *svc;
	struct lb_backend *b;
	__u32 *id;

	if (!sock_in_host_netns(ctx))
		return 1;
	svc = bpf_map_lookup_elem(&cilia_lb_services, &k);
	if (!svc)
		return 1;
	if (!svc->count)
		return 0;
	__u64 cookie = bpf_get_socket_cookie(ctx);

	slot.rev_nat = svc->rev_nat;
	slot.slot = cookie % svc->count + 1;
	id = bpf_map_lookup_elem(&cilia_lb_slots, &slot);
	if (!id)
		return 0;
	b = bpf_map_lookup_elem(&cilia_lb_backends, id);
	if (!b)
		return 0;
	struct lb_sock_key sk = { .cookie = cookie, .addr = b->addr, .port = b->port };
	struct lb_frontend fe = { .addr = *addr, .port = (__u16)*port };

	bpf_map_update_elem(&cilia_lb_sock, &sk, &fe, BPF_ANY);
	*addr = b->addr;
	*port = b->port;
	return 1;
}

static __always_inline int sock_translate4(struct bpf_sock_addr *ctx)
{
	union v6addr addr;
	__u32 port = ctx->user_port;
	int ret;

	addr_set_v4(&addr, ctx->user_ip4);
	ret = sock_translate(ctx, &addr, &port);
	if (ret) {
		ctx->user_ip4 = addr.p[3];
		ctx->user_port = port;
	}
	return ret;
}

static __always_inline int sock_translate6(struct bpf_sock_addr *ctx)
{
	union v6addr addr;
	__u32 port = ctx->user_port;
	int ret;

	addr.p[0] = ctx->user_ip6[0];
	addr.p[1] = ctx->user_ip6[1];
	addr.p[2] = ctx->user_ip6[2];
	addr.p[3] = ctx->user_ip6[3];
	if (addr_is_v4mapped(&addr))
		return 1; /* an IPv4 peer of a dual-stack socket: not translated */
	ret = sock_translate(ctx, &addr, &port);
	if (ret) {
		ctx->user_ip6[0] = addr.p[0];
		ctx->user_ip6[1] = addr.p[1];
		ctx->user_ip6[2] = addr.p[2];
		ctx->user_ip6[3] = addr.p[3];
		ctx->user_port = port;
	}
	return ret;
}

/* The frontend a datagram from a backend answers for, if any. */
static __always_inline struct lb_frontend *sock_frontend_of(struct bpf_sock_addr *ctx,
							     const union v6addr *addr)
{
	struct lb_sock_key sk = { .addr = *addr, .port = (__u16)ctx->user_port };

	if (!sock_in_host_netns(ctx))
		return NULL;
	sk.cookie = bpf_get_socket_cookie(ctx);
	return bpf_map_lookup_elem(&cilia_lb_sock, &sk);
}

SEC("cgroup/connect4")
int cilia_sock_connect4(struct bpf_sock_addr *ctx)
{
	return sock_translate4(ctx);
}

SEC("cgroup/sendmsg4")
int cilia_sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_translate4(ctx);
}

SEC("cgroup/recvmsg4")
int cilia_sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	union v6addr addr;
	struct lb_frontend *fe;

	addr_set_v4(&addr, ctx->user_ip4);
	fe = sock_frontend_of(ctx, &addr);
	if (fe) {
		ctx->user_ip4 = fe->addr.p[3];
		ctx->user_port = fe->port;
	}
	return 1;
}

SEC("cgroup/connect6")
int cilia_sock_connect6(struct bpf_sock_addr *ctx)
{
	return sock_translate6(ctx);
}

SEC("cgroup/sendmsg6")
int cilia_sock_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock_translate6(ctx);
}

SEC("cgroup/recvmsg6")
int cilia_sock_recvmsg6(struct bpf_sock_addr *ctx)
{
	union v6addr addr;
	struct lb_frontend *fe;

	addr.p[0] = ctx->user_ip6[0];
	addr.p[1] = ctx->user_ip6[1];
	addr.p[2] = ctx->user_ip6[2];
	addr.p[3] = ctx->user_ip6[3];
	fe = sock_frontend_of(ctx, &addr);
	if (fe) {
		ctx->user_ip6[0] = fe->addr.p[0];
		ctx->user_ip6[1] = fe->addr.p[1];
		ctx->user_ip6[2] = fe->addr.p[2];
		ctx->user_ip6[3] = fe->addr.p[3];
		ctx->user_port = fe->port;
	}
	return 1;
}

#endif
