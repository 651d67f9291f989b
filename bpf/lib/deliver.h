/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Delivery to a local endpoint, the tail both ways into a pod share: from another pod of this
 * node (bpf_lxc) and from a pod of another node out of the tunnel (bpf_overlay). The receiver's
 * ingress policy is checked with the sender's identity (unless conntrack says the packet answers
 * a connection the receiver opened), then the node acts as the pod's router: TTL−1, the
 * endpoint's own MACs, and bpf_redirect_peer straight into its eth0 (no second pass through the
 * node stack, so the lxc's tc egress never sees these packets). A reply of a connection the
 * receiver opened to a service gets the frontend back as its source here (lib/lb.h), whichever
 * program delivers it. A reply of a connection the L7 proxy took over goes to the proxy's
 * upstream socket instead, and a connection whose ingress entry names a proxy goes to that
 * proxy (lib/proxy.h): local_deliver then answers PROXY_TAIL, and the program's top-level
 * function calls to_proxy (in a frame of its own). The programs run it as deliver_tail, a global
 * function their top level calls (below). */
#ifndef __CILIARY_DELIVER_H
#define __CILIARY_DELIVER_H
#include "common.h"
#include "parse.h"
#include "conntrack.h"
#include "events.h"
#include "l3.h"
#include "policy.h"
#include "lb.h"
#include "proxy.h"

/* Metadata of a FORWARDED trace for a packet conntrack has just classified. */
static __always_inline void trace_meta(struct event_meta *m, const struct ct_result *ct,
				       __u16 ep_id, __u16 dst_ep_id, __u32 src_id, __u32 dst_id,
				       __u8 obs, const struct policy_verdict *pv, __u8 direction)
{
	m->policy_cookie = pv->cookie;
	m->policy_match = pv->match;
	m->traffic_direction = direction;
	m->type = EVENT_TRACE;
	m->verdict = VERDICT_FORWARDED;
	m->obs_point = obs;
	m->ep_id = ep_id;
	m->dst_ep_id = dst_ep_id;
	m->src_sec_id = src_id;
	m->dst_sec_id = dst_id;
	m->is_reply = ct->state == CT_REPLY;
	m->ct_state = ct->state;
	if (ct->entry) {
		m->ct_created_ns = ct->entry->created_ns;
		m->rev_nat_index = ct->entry->rev_nat_index;
	}
}

/* A FORWARDED trace of `p` at `obs`, when conntrack says one is due (ct->report): its metadata
 * is only built then (an established packet reports nothing). */
static __always_inline void trace_forwarded(struct __sk_buff *skb, const struct pkt *p,
					    const struct ct_result *ct, __u16 ep_id,
					    __u16 dst_ep_id, __u32 src_id, __u32 dst_id, __u8 obs,
					    const struct policy_verdict *pv, __u8 direction)
{
	if (!ct->report)
		return;
	struct event_meta m = {};
	trace_meta(&m, ct, ep_id, dst_ep_id, src_id, dst_id, obs, pv, direction);
	emit_event(skb, p, &m);
}

/* `ev_ep` is the endpoint events are reported for (the sending pod in bpf_lxc, the receiving
 * one in bpf_overlay); `pv_out` the sender's egress verdict when this node checked it (its
 * cookie names the rule in the trace when the receiver enforces nothing). Returns the tc verdict. */
static __always_inline int local_deliver(struct __sk_buff *skb, struct pkt *p,
					 struct ct_result *ct, const struct endpoint_info *dst,
					 __u16 ev_ep, __u32 src_id, __u32 dst_id, int skip_policy,
					 const struct policy_verdict *pv_out)
{
	struct policy_verdict pv_in = {};
	__u32 dst_ifindex = dst->ifindex;
	__u8 dmac[6], smac[6];
	int ret;

	if (!(dst->flags & EP_F_READY))
		return drop_packet(skb, p, DROP_EP_NOT_READY, ev_ep, src_id, dst_id, OBS_TO_ENDPOINT);
	/* a reply to the L7 proxy's upstream socket (lib/proxy.h): the proxy speaks for the pod */
	if (skip_policy && proxy_ct_reply(p, ct->entry, ct->state)) {
		trace_forwarded(skb, p, ct, ev_ep, 0, src_id, dst_id, OBS_TO_PROXY, pv_out,
				TRAFFIC_EGRESS);
		return proxy_reply_to_stack(skb);
	}
	/* a reply of a connection the client sent to a service: from the frontend again; its new
	 * source is written with the TTL below (one store: a reply passes no policy, proxy or
	 * event in between) */
	ret = lb_rev_nat_ct_at(skb, p, ct, !skip_policy);
	if (ret < 0)
		return drop_packet(skb, p, -ret, ev_ep, src_id, dst_id, OBS_TO_ENDPOINT);
	int src_pending = ret > 0 && skip_policy;
	__builtin_memcpy(dmac, dst->mac, 6);
	__builtin_memcpy(smac, dst->node_mac, 6);
	__u16 dst_ep = dst->ep_id;
	__u32 rev = skip_policy ? 0 : policy_revision();
	if (!skip_policy && ct->state == CT_ESTABLISHED && !ct->report && ct->entry &&
	    policy_cached(ct->entry, rev, src_id, dst_id, POLICY_CACHED_INGRESS)) {
		/* allowed at this revision, no proxy (lib/policy.h): pv_in stays empty */
	} else if (!skip_policy) {
		ret = policy_check(dst_ep, src_id, POLICY_INGRESS, p, &pv_in);
		if (pv_in.enforced && (ret < 0 || ct->state == CT_NEW))
			policy_verdict_notify(skb, p, ev_ep, dst_ep, src_id, dst_id, pv_in.cookie,
					      pv_in.match, TRAFFIC_INGRESS,
					      ret < 0 ? ret : bpf_ntohs(pv_in.proxy_port));
		if (ret < 0) {
			ct_forget_new(p, ct);
			return drop_policy(skb, p, -ret, ev_ep, dst_ep, src_id, dst_id,
					   OBS_TO_ENDPOINT, pv_in.cookie, pv_in.match,
					   TRAFFIC_INGRESS);
		}
		/* the receiver's L7 proxy (lib/proxy.h): the caller's to_proxy hands it over */
		ret = proxy_ingress(skb, p, ct, ev_ep, src_id, dst_id, &pv_in);
		if (ret)
			return ret;
		if (ct->entry && !pv_in.proxy_port)
			policy_cache(ct->entry, rev, src_id, dst_id, POLICY_CACHED_INGRESS);
	}
	if (src_pending) {
		ret = l3_dec_ttl_src(skb, p);
		if (ret == 0)
			ret = l2_rewrite(skb, dmac, smac);
	} else {
		ret = l3_forward(skb, p, dmac, smac);
	}
	if (ret < 0)
		return drop_packet(skb, p, -ret, ev_ep, src_id, dst_id, OBS_TO_ENDPOINT);
	trace_forwarded(skb, p, ct, ev_ep, dst_ep, src_id, dst_id, OBS_TO_ENDPOINT,
			pv_in.enforced ? &pv_in : pv_out, TRAFFIC_INGRESS);
	return bpf_redirect_peer(dst_ifindex, 0);
}
/* local_deliver as a global function, called by a program's top level (not under its steps'
 * frames, which leave no room for its own): verified once, not once for every path of the steps
 * that reach it. A step ends with deliver_later, which leaves the scalar arguments in the skb's
 * control block (tc's scratch words, one store each) and the endpoint and the conntrack entry
 * (NULL: none) in its caller's struct deliver_to, and answers DELIVER_TAIL; the caller then
 * calls deliver_tail, whose verdict is local_deliver's (PROXY_TAIL: to_proxy next). `p` is the
 * caller's, unknown to the verifier after the call. */
#define DELIVER_TAIL -5

struct deliver_to {
	struct ct_entry *entry;
	const struct endpoint_info *dst;
};

#define CB_DLV_SRC_ID 0
#define CB_DLV_DST_ID 1
#define CB_DLV_COOKIE 2 /* the sender's egress verdict (pv_out): its cookie */
#define CB_DLV_PV 3     /* ... its match | enforced << 8 | proxy_port << 16 */
#define CB_DLV_MISC 4   /* ev_ep | skip_policy << 16 | ct state << 20 | ct report << 24 */

static __always_inline int deliver_later(struct __sk_buff *skb, struct deliver_to *to,
					 const struct ct_result *ct, const struct endpoint_info *dst,
					 __u16 ev_ep, __u32 src_id, __u32 dst_id, int skip_policy,
					 const struct policy_verdict *pv_out)
{
	to->entry = ct->entry;
	to->dst = dst;
	skb->cb[CB_DLV_SRC_ID] = src_id;
	skb->cb[CB_DLV_DST_ID] = dst_id;
	skb->cb[CB_DLV_COOKIE] = pv_out->cookie;
	skb->cb[CB_DLV_PV] = pv_out->match | (__u32)pv_out->enforced << 8 |
			     (__u32)pv_out->proxy_port << 16;
	skb->cb[CB_DLV_MISC] = ev_ep | (__u32)!!skip_policy << 16 | (__u32)(ct->state & 0xf) << 20 |
			       (__u32)!!ct->report << 24;
	return DELIVER_TAIL;
}

__attribute__((noinline)) int deliver_tail(struct __sk_buff *skb, struct pkt *p,
					   struct ct_entry *entry, const struct endpoint_info *dst)
{
	if (!skb || !p || !dst)
		return TC_ACT_SHOT; /* not reached: the context, a frame's packet, the endpoint */
	__u32 pvw = skb->cb[CB_DLV_PV], misc = skb->cb[CB_DLV_MISC];
	struct policy_verdict pv_out = {
		.cookie = skb->cb[CB_DLV_COOKIE],
		.match = pvw & 0xff,
		.enforced = (pvw >> 8) & 0xff,
		.proxy_port = pvw >> 16,
	};
	struct ct_result ct = {
		.entry = entry,
		.state = (misc >> 20) & 0xf,
		.report = (misc >> 24) & 1,
	};
	return local_deliver(skb, p, &ct, dst, misc & 0xffff, skb->cb[CB_DLV_SRC_ID],
			     skb->cb[CB_DLV_DST_ID], (misc >> 16) & 1, &pv_out);
}
#endif
