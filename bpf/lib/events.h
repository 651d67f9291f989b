/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliary_events: trace and drop notifications for the agent (monitor, Hubble). A full ring never
 * blocks the datapath: the record is counted in ciliary_events_lost, which the agent reports as
 * lost events instead of pretending nothing happened. */
#ifndef __CILIARY_EVENTS_H
#define __CILIARY_EVENTS_H
#include "common.h"
#include "parse.h"

#ifndef EVENTS_RING_SIZE
#define EVENTS_RING_SIZE (8 * 1024 * 1024)
#endif

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RING_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_events_lost SEC(".maps");

struct event_meta {
	__u64 ct_created_ns;
	__u32 src_sec_id;
	__u32 dst_sec_id;
	__u16 ep_id;
	__u16 dst_ep_id;
	__u8 type;
	__u8 obs_point;
	__u8 verdict;
	__u8 drop_reason;
	__u8 is_reply;
	__u8 ct_state;
	__u8 policy_match;
	__u8 traffic_direction;
	__u16 rev_nat_index;
	__u32 policy_cookie;
};

/* A record the ring had no room for: counted for the agent's lost-events report. */
static __always_inline void events_lost_inc(void)
{
	__u32 zero = 0;
	__u64 *lost = bpf_map_lookup_elem(&ciliary_events_lost, &zero);
	if (lost)
		*lost += 1;
}

#define TRAFFIC_INGRESS 1
#define TRAFFIC_EGRESS 2

static __always_inline void emit_event(struct __sk_buff *skb, const struct pkt *p,
				       const struct event_meta *m)
{
	struct trace_event *ev = bpf_ringbuf_reserve(&ciliary_events, sizeof(*ev), 0);
	if (!ev) {
		events_lost_inc();
		return;
	}
	ev->ts_ns = bpf_ktime_get_ns();
	ev->ct_created_ns = m->ct_created_ns;
	__builtin_memcpy(ev->saddr, p->saddr, 16);
	__builtin_memcpy(ev->daddr, p->daddr, 16);
	__builtin_memcpy(ev->smac, p->smac, 6);
	__builtin_memcpy(ev->dmac, p->dmac, 6);
	ev->sport = p->sport;
	ev->dport = p->dport;
	ev->src_sec_id = m->src_sec_id;
	ev->dst_sec_id = m->dst_sec_id;
	ev->ifindex = skb->ifindex;
	ev->pkt_len = skb->len;
	ev->ep_id = m->ep_id;
	ev->dst_ep_id = m->dst_ep_id;
	ev->type = m->type;
	ev->obs_point = m->obs_point;
	ev->verdict = m->verdict;
	ev->drop_reason = m->drop_reason;
	ev->family = p->family;
	ev->proto = p->proto;
	ev->tcp_flags = p->tcp_flags;
	ev->is_reply = m->is_reply;
	ev->icmp_type = p->icmp_type;
	ev->icmp_code = p->icmp_code;
	ev->ct_state = m->ct_state;
	ev->policy_match = m->policy_match;
	ev->traffic_direction = m->traffic_direction;
	ev->policy_cookie = m->policy_cookie;
	ev->pad = 0;
	ev->rev_nat_index = m->rev_nat_index;
	bpf_ringbuf_submit(ev, 0);
}

/* Report a drop (always, whatever the aggregation level) and return TC_ACT_SHOT. */
static __always_inline int drop_packet(struct __sk_buff *skb, const struct pkt *p, int reason,
				       __u16 ep_id, __u32 src_id, __u32 dst_id, __u8 obs)
{
	struct event_meta m = {};
	m.type = EVENT_DROP;
	m.verdict = VERDICT_DROPPED;
	m.drop_reason = (__u8)reason;
	m.ep_id = ep_id;
	m.src_sec_id = src_id;
	m.dst_sec_id = dst_id;
	m.obs_point = obs;
	m.ct_state = CT_UNTRACKED;
	emit_event(skb, p, &m);
	return TC_ACT_SHOT;
}
/* An event decided by policy (a policy drop or a policy verdict): CT_NEW, with the deciding
 * cookie, match type and direction. */
static __always_inline void emit_policy_event(struct __sk_buff *skb, const struct pkt *p,
					      __u8 type, int reason, __u8 obs, __u16 ep_id,
					      __u16 dst_ep_id, __u32 src_id, __u32 dst_id,
					      __u32 cookie, __u8 match, __u8 direction,
					      __u8 verdict)
{
	struct event_meta m = {};
	m.type = type;
	m.verdict = verdict;
	m.drop_reason = (__u8)reason;
	m.obs_point = obs;
	m.ep_id = ep_id;
	m.dst_ep_id = dst_ep_id;
	m.src_sec_id = src_id;
	m.dst_sec_id = dst_id;
	m.ct_state = CT_NEW;
	m.policy_cookie = cookie;
	m.policy_match = match;
	m.traffic_direction = direction;
	emit_event(skb, p, &m);
}

/* A policy drop: reason 133 (no rule allows) or 181 (a deny rule), with the deciding cookie. */
static __always_inline int drop_policy(struct __sk_buff *skb, const struct pkt *p, int reason,
				       __u16 ep_id, __u16 dst_ep_id, __u32 src_id, __u32 dst_id,
				       __u8 obs, __u32 cookie, __u8 match, __u8 direction)
{
	emit_policy_event(skb, p, EVENT_DROP, reason, obs, ep_id, dst_ep_id, src_id, dst_id, cookie,
			  match, direction, VERDICT_DROPPED);
	return TC_ACT_SHOT;
}

/* A policy verdict notification, as Cilium's send_policy_verdict_notify: one per new connection
 * (or denied packet) whose endpoint enforces policy in that direction, whatever the monitor
 * aggregation, so Hubble can say which rule allowed or denied a connection. A denial is followed
 * by its drop event; an allowed connection by its trace. No observation point (upstream's
 * policy-verdict flows have none). `ret` as upstream's verdict: < 0 the drop reason, > 0 the
 * L7 proxy port the connection is redirected to (VERDICT_REDIRECTED), 0 allowed. */
static __always_inline void policy_verdict_notify(struct __sk_buff *skb, const struct pkt *p,
						  __u16 ep_id, __u16 dst_ep_id, __u32 src_id,
						  __u32 dst_id, __u32 cookie, __u8 match,
						  __u8 direction, int ret)
{
	__u8 verdict = ret < 0 ? VERDICT_DROPPED : ret > 0 ? VERDICT_REDIRECTED : VERDICT_FORWARDED;
	emit_policy_event(skb, p, EVENT_POLICY_VERDICT, ret < 0 ? -ret : 0, 0, ep_id, dst_ep_id,
			  src_id, dst_id, cookie, match, direction, verdict);
}

/* The ring buffer map cannot name its record type, so this never-called global function puts
 * struct trace_event into the object's BTF, where the layout test (and bpftool) can see it. */
__attribute__((noinline)) int ciliary_trace_event_btf(struct trace_event *ev)
{
	return ev ? 0 : 1;
}

#endif
