/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Socket-LB's notifications (upstream's lib/trace_sock.h): one ciliary_events record per
 * translation point of a socket bpf_sock.c translates, which Hubble turns into a SOCK flow
 * (sock_xlate_point, socket_cookie, cgroup_id; the pod from the cgroup, destination_service from
 * the frontend). A connect() or sendmsg() to a frontend gives pre-xlate-fwd (the frontend) and
 * post-xlate-fwd (the backend); a recvmsg()/getpeername() translated back pre-xlate-rev (the
 * backend) and post-xlate-rev (the frontend). Sockets to no frontend send nothing.
 *
 * Monitor aggregation (ciliary_config, the agent's --monitor-aggregation) as upstream's
 * emit_trace_sock_notify and its rate limit: none: every point of every translation; medium:
 * the connect() points only (no sendmsg, no reverse ones), and of those one connect() per report
 * interval (--monitor-aggregation-interval, upstream's CT_REPORT_INTERVAL) node-wide: a token
 * bucket of one token topped up once per interval (lib/ratelimit.h, upstream's
 * RATELIMIT_USAGE_SOCKET_EVENTS_MAP with bucket_size 1, tokens_per_topup 1). Unlike upstream,
 * which takes a token per record (so the post-xlate record of the connect() it reports is
 * refused right after its pre-xlate one), the token is taken once per translation: the
 * reported connect() has both points, where it was going and where it went (at most 2 records
 * per interval instead of 1). A connect() not reported costs a config and a bucket lookup, no
 * ring-buffer record and nothing for the agent to decode.
 *
 * The record is not a struct trace_event: like every ring buffer record it starts with its type
 * (common.h EVENT_HDR_CHECK), on which the agent dispatches, as upstream's on data[0]. */
#ifndef __CILIARY_TRACE_SOCK_H
#define __CILIARY_TRACE_SOCK_H
#include "common.h"
#include "config.h"
#include "events.h"
#include "ratelimit.h"

#define EVENT_TRACE_SOCK 7 /* upstream's CILIUM_NOTIFY_TRACE_SOCK */

/* Hubble's SocketTranslationPoint */
#define XLATE_PRE_DIRECTION_FWD 1
#define XLATE_POST_DIRECTION_FWD 2
#define XLATE_PRE_DIRECTION_REV 3
#define XLATE_POST_DIRECTION_REV 4

/* upstream's enum l4_protocol */
#define L4_PROTOCOL_TCP 1
#define L4_PROTOCOL_UDP 2

#define TRACE_SOCK_F_IPV6 0x1

/* Upstream's struct trace_sock_notify (its ipv6 bit is flags' TRACE_SOCK_F_IPV6). */
struct trace_sock_notify {
	__u8 type;          /* EVENT_TRACE_SOCK */
	__u8 xlate_point;   /* XLATE_* */
	__u8 l4_proto;      /* L4_PROTOCOL_*, 0 unknown */
	__u8 flags;         /* TRACE_SOCK_F_* */
	__u16 dst_port;     /* host order */
	__u16 pad;
	__u64 sock_cookie;  /* bpf_get_socket_cookie */
	__u64 cgroup_id;    /* the calling process's cgroup (a pod's, in the lab) */
	__u8 dst_ip[16];    /* IPv4 in the first 4 bytes */
};
EVENT_HDR_CHECK(trace_sock_notify);

/* Whether one translation's records are sent: `fwd` a connect()/sendmsg() (pre- and
 * post-xlate-fwd), else a recvmsg()/getpeername() (the rev points); `now` bpf_ktime_get_ns(),
 * read only when the rate limit applies. Called once per translation, before its records. */
static __always_inline int trace_sock_wanted(int fwd, int is_connect, __u64 now)
{
	__u32 level;
	__u64 interval;
	load_config(&level, &interval);
	if (level == MONITOR_AGG_NONE)
		return 1;
	if (!fwd || !is_connect)
		return 0;
	return ratelimit_take(RATELIMIT_USAGE_SOCKET_EVENTS, 1, 1, interval, now);
}

/* One record; the caller asked trace_sock_wanted. `addr`: 16 bytes (IPv4 in the first 4),
 * `port` host order. */
static __always_inline void send_trace_sock_notify(struct bpf_sock_addr *ctx, __u8 point,
						   const __u8 *addr, __u16 port, int ipv6)
{
	struct trace_sock_notify *ev = bpf_ringbuf_reserve(&ciliary_events, sizeof(*ev), 0);
	if (!ev) {
		events_lost_inc();
		return;
	}
	ev->type = EVENT_TRACE_SOCK;
	ev->xlate_point = point;
	ev->l4_proto = ctx->protocol == IPPROTO_TCP   ? L4_PROTOCOL_TCP
		       : ctx->protocol == IPPROTO_UDP ? L4_PROTOCOL_UDP
						      : 0;
	ev->flags = ipv6 ? TRACE_SOCK_F_IPV6 : 0;
	ev->dst_port = port;
	ev->pad = 0;
	ev->sock_cookie = bpf_get_socket_cookie(ctx);
	ev->cgroup_id = bpf_get_current_cgroup_id();
	__builtin_memcpy(ev->dst_ip, addr, 16);
	bpf_ringbuf_submit(ev, 0);
}

/* As ciliary_trace_event_btf: puts the record's struct into the object's BTF. */
__attribute__((noinline)) int ciliary_trace_sock_btf(struct trace_sock_notify *ev)
{
	return ev ? 0 : 1;
}
#endif
