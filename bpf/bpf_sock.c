/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Socket-LB (the kube-proxy replacement's per-socket half), as Cilium's bpf_sock.c: cgroup
 * sock_addr programs on the node's cgroup (the agent's --cgroup-root; in the lab each node's
 * pods' processes are in the node's own cgroup), reading the service maps of lib/lb.h.
 *
 *   connect4/6      a connect() to a frontend goes to a backend instead: the address is
 *                   rewritten once, before the first packet exists, so the datapath sees a
 *                   connection to the backend (no per-packet DNAT, no service conntrack entry).
 *   sendmsg4/6      an unconnected UDP datagram to a frontend is sent to a backend, per datagram.
 *   recvmsg4/6      a datagram from a backend the socket was translated to reads as coming from
 *                   the frontend.
 *   getpeername4/6  a translated socket's peer reads as the frontend.
 *
 * The backend follows the service's rules as lib/lb.h's lb_select_backend does, but keyed for
 * a socket: a frontend with sessionAffinity ClientIP gives the client's network namespace
 * (bpf_get_netns_cookie: one per pod) its backend of less than the timeout ago while that
 * backend is still active (ciliary_lb_affinity_netns, validated by lb_affinity_valid against
 * the service's affinity matches, as upstream's lb4_affinity_backend_id_by_netns); otherwise a
 * random slot 1..count for TCP and the socket's cookie modulo the slot count for UDP (one
 * socket keeps talking to one backend while the slots stay), as upstream's sock_select_slot.
 * Terminating backends sit beyond count and are never chosen. Maglev tables are not read here:
 * as upstream, Maglev applies to N-S traffic (NodePort, bpf_host.c); E-W connections
 * translated at connect() get a random slot. Each translation records (socket cookie, backend address, port) ->
 * (frontend address, port, rev_nat_index) in ciliary_lb{4,6}_reverse_sk (LRU, upstream's
 * cilium_lb{4,6}_reverse_sk), which recvmsg and getpeername read; an entry whose service is gone
 * (or now has another rev-NAT index) is deleted and not applied. A frontend without backends
 * refuses the connect()/sendmsg() with EHOSTUNREACH (upstream's); an address that is no
 * frontend, or a protocol other than TCP/UDP, is left alone (the tc path still sees it, so a
 * ClusterIP's unknown port is dropped there as before). IPv4-mapped IPv6 addresses are not
 * translated (upstream's sock6_xlate_v4_in_v6: not done). Translations are reported to Hubble as
 * trace-sock records as the monitor aggregation allows (lib/trace_sock.h: at medium one
 * connect() per report interval). */
#include "lib/common.h"
#include "lib/lb.h"
#include "lib/trace_sock.h"

/* errno values (asm-generic/errno.h; libc headers stay out of BPF objects) */
#define ENOMEM 12
#define ENXIO 6
#define EHOSTUNREACH 113

#define SYS_REJECT 0
#define SYS_PROCEED 1

#ifndef LB_REVERSE_SK_MAP_SIZE
#define LB_REVERSE_SK_MAP_SIZE 65536
#endif

struct lb4_reverse_sk_key {
	__u64 cookie;
	__be32 address; /* the backend's */
	__be16 port;
	__u16 pad;
};

struct lb4_reverse_sk {
	__be32 address; /* the frontend's */
	__be16 port;
	__u16 rev_nat_index;
};

struct lb6_reverse_sk_key {
	__u64 cookie;
	__u8 address[16];
	__be16 port;
	__u16 pad;
	__u32 pad2;
};

struct lb6_reverse_sk {
	__u8 address[16];
	__be16 port;
	__u16 rev_nat_index;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_reverse_sk_key);
	__type(value, struct lb4_reverse_sk);
	__uint(max_entries, LB_REVERSE_SK_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_lb4_reverse_sk SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb6_reverse_sk_key);
	__type(value, struct lb6_reverse_sk);
	__uint(max_entries, LB_REVERSE_SK_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_lb6_reverse_sk SEC(".maps");

/* Socket-LB's session affinity: (the client's network namespace, frontend, family) -> its
 * backend and when it was last chosen (lib/lb.h's lb_affinity_val), as upstream's affinity
 * entries with the netns flag: a connect() has no source address yet, its namespace is the
 * client. */
struct lb_affinity_netns_key {
	__u64 netns_cookie;
	__u16 rev_nat_id;
	__u8 family;
	__u8 pad[5];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb_affinity_netns_key);
	__type(value, struct lb_affinity_val);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_lb_affinity_netns SEC(".maps");

static __always_inline int sock_proto_ok(const struct bpf_sock_addr *ctx)
{
	return ctx->protocol == IPPROTO_TCP || ctx->protocol == IPPROTO_UDP;
}

static __always_inline __u32 sock_select_slot(struct bpf_sock_addr *ctx)
{
	return ctx->protocol == IPPROTO_TCP ? bpf_get_prandom_u32() : bpf_get_socket_cookie(ctx);
}

/* The client namespace's affinity backend of a frontend with SVC_FLAG_AFFINITY (slot 0's
 * backend_id below LB_ALGORITHM_SHIFT is the timeout in seconds), 0 when it has none (or the
 * frontend no affinity). */
static __always_inline __u32 sock_affinity_backend(struct bpf_sock_addr *ctx, __u8 flags,
						   __u16 rev_nat, __u32 timeout_s, __u8 family,
						   __u64 now)
{
	if (!(flags & SVC_FLAG_AFFINITY))
		return 0;
	struct lb_affinity_netns_key k = {};
	k.netns_cookie = bpf_get_netns_cookie(ctx);
	k.rev_nat_id = rev_nat;
	k.family = family;
	struct lb_affinity_val *v = bpf_map_lookup_elem(&ciliary_lb_affinity_netns, &k);
	return lb_affinity_valid(v, rev_nat, (__u64)timeout_s * 1000000000ULL, now);
}

static __always_inline void sock_affinity_update(struct bpf_sock_addr *ctx, __u8 flags,
						 __u16 rev_nat, __u8 family, __u32 id, __u64 now)
{
	if (!(flags & SVC_FLAG_AFFINITY))
		return;
	struct lb_affinity_netns_key k = {};
	k.netns_cookie = bpf_get_netns_cookie(ctx);
	k.rev_nat_id = rev_nat;
	k.family = family;
	struct lb_affinity_val v = {.last_used_ns = now, .backend_id = id};
	bpf_map_update_elem(&ciliary_lb_affinity_netns, &k, &v, BPF_ANY);
}

/* ---- IPv4 ---- */

/* 0: translated; -ENXIO: not a frontend (left alone); -EHOSTUNREACH: a frontend without a
 * usable backend; -ENOMEM: the reverse entry could not be written. */
static __always_inline int sock4_xlate_fwd(struct bpf_sock_addr *ctx, int is_connect)
{
	if (!sock_proto_ok(ctx))
		return -ENXIO;
	struct lb4_key key = {};
	key.address = ctx->user_ip4;
	key.dport = (__be16)ctx->user_port;
	key.proto = (__u8)ctx->protocol;
	struct lb_service *svc = bpf_map_lookup_elem(&ciliary_lb4_services, &key);
	if (!svc)
		return -ENXIO;
	if (svc->count == 0)
		return -EHOSTUNREACH;
	__u16 rev_nat = svc->rev_nat_index;
	__u16 count = svc->count;
	__u8 flags = svc->flags;
	__u64 now = bpf_ktime_get_ns();
	__u32 timeout_s = svc->backend_id & LB_AFFINITY_TIMEOUT_MASK;
	__u32 id = sock_affinity_backend(ctx, flags, rev_nat, timeout_s, AF_INET4, now);
	if (!id) {
		key.backend_slot = (__u16)(sock_select_slot(ctx) % count) + 1;
		struct lb_service *slot = bpf_map_lookup_elem(&ciliary_lb4_services, &key);
		if (!slot)
			return -EHOSTUNREACH;
		id = slot->backend_id;
		sock_affinity_update(ctx, flags, rev_nat, AF_INET4, id, now);
	}
	struct lb4_backend *be = bpf_map_lookup_elem(&ciliary_lb4_backends, &id);
	if (!be)
		return -EHOSTUNREACH;
	struct lb4_reverse_sk_key rk = {};
	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.address = be->address;
	rk.port = be->port;
	struct lb4_reverse_sk rv = {};
	rv.address = key.address;
	rv.port = key.dport;
	rv.rev_nat_index = rev_nat;
	if (bpf_map_update_elem(&ciliary_lb4_reverse_sk, &rk, &rv, BPF_ANY) < 0)
		return -ENOMEM;
	if (trace_sock_wanted(1, is_connect, now)) {
		__u8 addr[16] = {};
		__builtin_memcpy(addr, &key.address, 4);
		send_trace_sock_notify(ctx, XLATE_PRE_DIRECTION_FWD, addr, bpf_ntohs(key.dport), 0);
		__builtin_memcpy(addr, &be->address, 4);
		send_trace_sock_notify(ctx, XLATE_POST_DIRECTION_FWD, addr, bpf_ntohs(be->port), 0);
	}
	ctx->user_ip4 = be->address;
	ctx->user_port = (__u32)be->port;
	return 0;
}

static __always_inline void sock4_xlate_rev(struct bpf_sock_addr *ctx)
{
	struct lb4_reverse_sk_key rk = {};
	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.address = ctx->user_ip4;
	rk.port = (__be16)ctx->user_port;
	struct lb4_reverse_sk *rv = bpf_map_lookup_elem(&ciliary_lb4_reverse_sk, &rk);
	if (!rv)
		return;
	struct lb4_key key = {};
	key.address = rv->address;
	key.dport = rv->port;
	key.proto = (__u8)ctx->protocol;
	struct lb_service *svc = bpf_map_lookup_elem(&ciliary_lb4_services, &key);
	if (!svc || svc->rev_nat_index != rv->rev_nat_index) {
		bpf_map_delete_elem(&ciliary_lb4_reverse_sk, &rk); /* stale: the service is gone */
		return;
	}
	if (trace_sock_wanted(0, 0, 0)) {
		__u8 addr[16] = {};
		__builtin_memcpy(addr, &rk.address, 4);
		send_trace_sock_notify(ctx, XLATE_PRE_DIRECTION_REV, addr, bpf_ntohs(rk.port), 0);
		__builtin_memcpy(addr, &rv->address, 4);
		send_trace_sock_notify(ctx, XLATE_POST_DIRECTION_REV, addr, bpf_ntohs(rv->port), 0);
	}
	ctx->user_ip4 = rv->address;
	ctx->user_port = (__u32)rv->port;
}

static __always_inline int sock4_fwd_verdict(struct bpf_sock_addr *ctx, int is_connect)
{
	int err = sock4_xlate_fwd(ctx, is_connect);
	if (err == -EHOSTUNREACH || err == -ENOMEM) {
		bpf_set_retval(err);
		return SYS_REJECT;
	}
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int cil_sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock4_fwd_verdict(ctx, 1);
}

SEC("cgroup/sendmsg4")
int cil_sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock4_fwd_verdict(ctx, 0);
}

SEC("cgroup/recvmsg4")
int cil_sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	sock4_xlate_rev(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int cil_sock4_getpeername(struct bpf_sock_addr *ctx)
{
	sock4_xlate_rev(ctx);
	return SYS_PROCEED;
}

/* ---- IPv6 ---- */

static __always_inline void sock6_addr_get(const struct bpf_sock_addr *ctx, __u8 *addr)
{
	__u32 w[4];
	w[0] = ctx->user_ip6[0];
	w[1] = ctx->user_ip6[1];
	w[2] = ctx->user_ip6[2];
	w[3] = ctx->user_ip6[3];
	__builtin_memcpy(addr, w, 16);
}

static __always_inline void sock6_addr_set(struct bpf_sock_addr *ctx, const __u8 *addr)
{
	__u32 w[4];
	__builtin_memcpy(w, addr, 16);
	ctx->user_ip6[0] = w[0];
	ctx->user_ip6[1] = w[1];
	ctx->user_ip6[2] = w[2];
	ctx->user_ip6[3] = w[3];
}

static __always_inline int sock6_xlate_fwd(struct bpf_sock_addr *ctx, int is_connect)
{
	if (!sock_proto_ok(ctx))
		return -ENXIO;
	struct lb6_key key = {};
	sock6_addr_get(ctx, key.address);
	key.dport = (__be16)ctx->user_port;
	key.proto = (__u8)ctx->protocol;
	struct lb_service *svc = bpf_map_lookup_elem(&ciliary_lb6_services, &key);
	if (!svc)
		return -ENXIO;
	if (svc->count == 0)
		return -EHOSTUNREACH;
	__u16 rev_nat = svc->rev_nat_index;
	__u16 count = svc->count;
	__u8 flags = svc->flags;
	__u64 now = bpf_ktime_get_ns();
	__u32 timeout_s = svc->backend_id & LB_AFFINITY_TIMEOUT_MASK;
	__u32 id = sock_affinity_backend(ctx, flags, rev_nat, timeout_s, AF_INET6, now);
	if (!id) {
		key.backend_slot = (__u16)(sock_select_slot(ctx) % count) + 1;
		struct lb_service *slot = bpf_map_lookup_elem(&ciliary_lb6_services, &key);
		if (!slot)
			return -EHOSTUNREACH;
		id = slot->backend_id;
		sock_affinity_update(ctx, flags, rev_nat, AF_INET6, id, now);
	}
	struct lb6_backend *be = bpf_map_lookup_elem(&ciliary_lb6_backends, &id);
	if (!be)
		return -EHOSTUNREACH;
	struct lb6_reverse_sk_key rk = {};
	rk.cookie = bpf_get_socket_cookie(ctx);
	__builtin_memcpy(rk.address, be->address, 16);
	rk.port = be->port;
	struct lb6_reverse_sk rv = {};
	__builtin_memcpy(rv.address, key.address, 16);
	rv.port = key.dport;
	rv.rev_nat_index = rev_nat;
	if (bpf_map_update_elem(&ciliary_lb6_reverse_sk, &rk, &rv, BPF_ANY) < 0)
		return -ENOMEM;
	if (trace_sock_wanted(1, is_connect, now)) {
		send_trace_sock_notify(ctx, XLATE_PRE_DIRECTION_FWD, key.address,
				       bpf_ntohs(key.dport), 1);
		send_trace_sock_notify(ctx, XLATE_POST_DIRECTION_FWD, rk.address, bpf_ntohs(rk.port),
				       1);
	}
	sock6_addr_set(ctx, be->address);
	ctx->user_port = (__u32)be->port;
	return 0;
}

static __always_inline void sock6_xlate_rev(struct bpf_sock_addr *ctx)
{
	struct lb6_reverse_sk_key rk = {};
	rk.cookie = bpf_get_socket_cookie(ctx);
	sock6_addr_get(ctx, rk.address);
	rk.port = (__be16)ctx->user_port;
	struct lb6_reverse_sk *rv = bpf_map_lookup_elem(&ciliary_lb6_reverse_sk, &rk);
	if (!rv)
		return;
	struct lb6_key key = {};
	__builtin_memcpy(key.address, rv->address, 16);
	key.dport = rv->port;
	key.proto = (__u8)ctx->protocol;
	struct lb_service *svc = bpf_map_lookup_elem(&ciliary_lb6_services, &key);
	if (!svc || svc->rev_nat_index != rv->rev_nat_index) {
		bpf_map_delete_elem(&ciliary_lb6_reverse_sk, &rk);
		return;
	}
	if (trace_sock_wanted(0, 0, 0)) {
		send_trace_sock_notify(ctx, XLATE_PRE_DIRECTION_REV, rk.address, bpf_ntohs(rk.port),
				       1);
		send_trace_sock_notify(ctx, XLATE_POST_DIRECTION_REV, rv->address,
				       bpf_ntohs(rv->port), 1);
	}
	sock6_addr_set(ctx, rv->address);
	ctx->user_port = (__u32)rv->port;
}

static __always_inline int sock6_fwd_verdict(struct bpf_sock_addr *ctx, int is_connect)
{
	int err = sock6_xlate_fwd(ctx, is_connect);
	if (err == -EHOSTUNREACH || err == -ENOMEM) {
		bpf_set_retval(err);
		return SYS_REJECT;
	}
	return SYS_PROCEED;
}

SEC("cgroup/connect6")
int cil_sock6_connect(struct bpf_sock_addr *ctx)
{
	return sock6_fwd_verdict(ctx, 1);
}

SEC("cgroup/sendmsg6")
int cil_sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock6_fwd_verdict(ctx, 0);
}

SEC("cgroup/recvmsg6")
int cil_sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	sock6_xlate_rev(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername6")
int cil_sock6_getpeername(struct bpf_sock_addr *ctx)
{
	sock6_xlate_rev(ctx);
	return SYS_PROCEED;
}

char _license[] SEC("license") = "Dual BSD/GPL";
