/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Programs of an endpoint's node-side veth (lxc…), as Cilium's bpf_lxc.c:
 *   tc ingress  cil_from_container: packets the pod sends. Source validated against the endpoint
 *               map (anti-spoofing), identities resolved, conntrack updated, then delivered to a
 *               local destination pod with bpf_redirect_peer (straight into its eth0, skipping the
 *               node stack) or handed to the node's stack. Replies of connections that came in
 *               through the stack (CT_F_VIA_STACK) go back through it, whoever the destination:
 *               the stack may have NATed the request (hostPort), and only it can undo that.
 *   tc egress   cil_to_container: packets the node's stack sends to the pod.
 * One object is loaded per node; each endpoint's lxc gets the same pinned programs, and which
 * endpoint a packet belongs to comes from ciliary_lxc, so adding a pod is a map update plus an
 * attach, never a compile. */
#include "lib/common.h"
#include "lib/config.h"
#include "lib/parse.h"
#include "lib/endpoints.h"
#include "lib/ipcache.h"
#include "lib/conntrack.h"
#include "lib/events.h"
#include "lib/l3.h"
#include "lib/policy.h"

#define DEFAULT_AGG_INTERVAL (5 * NSEC_PER_SEC)

static __always_inline void load_config(__u32 *level, __u64 *interval)
{
	/* An array slot always exists; an interval of 0 means the agent has not configured it yet. */
	struct dp_config *cfg = dp_config_get();
	if (!cfg || cfg->aggregation_interval_ns == 0) {
		*level = MONITOR_AGG_MEDIUM;
		*interval = DEFAULT_AGG_INTERVAL;
		return;
	}
	*level = cfg->monitor_aggregation;
	*interval = cfg->aggregation_interval_ns;
}

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
	if (ct->entry)
		m->ct_created_ns = ct->entry->created_ns;
}

SEC("tc")
int cil_from_container(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct ct_result ct = {};
	struct event_meta m = {};
	__u32 level;
	__u64 interval;
	int ret;

	ret = parse_packet(skb, &p);
	if (ret == PARSE_PASS)
		return TC_ACT_OK;
	if (ret < 0)
		return drop_packet(skb, &p, -ret, 0, 0, 0, OBS_FROM_ENDPOINT);

	struct endpoint_info *src = lookup_endpoint(p.saddr, p.family);
	if (!src || src->ifindex != skb->ifindex)
		return drop_packet(skb, &p, DROP_INVALID_SIP, 0, 0, 0, OBS_FROM_ENDPOINT);
	__u16 src_ep = src->ep_id;
	__u32 src_id = src->sec_id;
	if (!(src->flags & EP_F_READY))
		return drop_packet(skb, &p, DROP_EP_NOT_READY, src_ep, src_id, 0, OBS_FROM_ENDPOINT);

	struct endpoint_info *dst = lookup_endpoint(p.daddr, p.family);
	__u32 dst_id = dst ? dst->sec_id : ipcache_identity(p.daddr, p.family);

	load_config(&level, &interval);
	ret = ct_process(&p, src_id, dst_id, level, interval, &ct);
	if (ret < 0)
		return drop_packet(skb, &p, -ret, src_ep, src_id, dst_id, OBS_FROM_ENDPOINT);

	/* Policy: replies of allowed connections pass on conntrack; everything else is checked
	 * against the sender's egress policy and, for a local receiver, its ingress policy. */
	struct policy_verdict pv_out = {}, pv_in = {};
	int skip_policy = ct.state == CT_REPLY || ct.state == CT_RELATED;
	if (!skip_policy) {
		ret = policy_check(src_ep, dst_id, POLICY_EGRESS, &p, &pv_out);
		if (pv_out.enforced && (ret < 0 || ct.state == CT_NEW))
			policy_verdict_notify(skb, &p, src_ep, dst ? dst->ep_id : 0, src_id, dst_id,
					      pv_out.cookie, pv_out.match, TRAFFIC_EGRESS, ret);
		if (ret < 0) {
			ct_forget_new(&p, &ct);
			return drop_policy(skb, &p, -ret, src_ep, dst ? dst->ep_id : 0, src_id,
					   dst_id, OBS_FROM_ENDPOINT, pv_out.cookie, pv_out.match,
					   TRAFFIC_EGRESS);
		}
	}

	/* A reply (or ICMP error) of a connection whose requests the stack delivered: back through
	 * the stack, so that its NAT is reversed (a hairpin to a hostPort of this node). */
	int via_stack = skip_policy && ct.entry && (ct.entry->flags & CT_F_VIA_STACK);
	if (dst && !via_stack) {
		__u32 dst_ifindex = dst->ifindex;
		__u8 dmac[6], smac[6];
		if (!(dst->flags & EP_F_READY))
			return drop_packet(skb, &p, DROP_EP_NOT_READY, src_ep, src_id, dst_id,
					   OBS_TO_ENDPOINT);
		__builtin_memcpy(dmac, dst->mac, 6);
		__builtin_memcpy(smac, dst->node_mac, 6);
		__u16 dst_ep = dst->ep_id;
		if (!skip_policy) {
			ret = policy_check(dst_ep, src_id, POLICY_INGRESS, &p, &pv_in);
			if (pv_in.enforced && (ret < 0 || ct.state == CT_NEW))
				policy_verdict_notify(skb, &p, src_ep, dst_ep, src_id, dst_id,
						      pv_in.cookie, pv_in.match, TRAFFIC_INGRESS,
						      ret);
			if (ret < 0) {
				ct_forget_new(&p, &ct);
				return drop_policy(skb, &p, -ret, src_ep, dst_ep, src_id, dst_id,
						   OBS_TO_ENDPOINT, pv_in.cookie, pv_in.match,
						   TRAFFIC_INGRESS);
			}
		}
		trace_meta(&m, &ct, src_ep, dst_ep, src_id, dst_id, OBS_TO_ENDPOINT,
			   pv_in.enforced ? &pv_in : &pv_out, TRAFFIC_INGRESS);
		ret = l3_dec_ttl(skb, &p);
		if (ret == 0)
			ret = l2_rewrite(skb, dmac, smac);
		if (ret < 0)
			return drop_packet(skb, &p, -ret, src_ep, src_id, dst_id, OBS_TO_ENDPOINT);
		if (ct.report)
			emit_event(skb, &p, &m);
		return bpf_redirect_peer(dst_ifindex, 0);
	}

	trace_meta(&m, &ct, src_ep, 0, src_id, dst_id, OBS_TO_STACK, &pv_out, TRAFFIC_EGRESS);
	if (ct.report)
		emit_event(skb, &p, &m);
	return TC_ACT_OK;
}

SEC("tc")
int cil_to_container(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct ct_result ct = {};
	struct event_meta m = {};
	__u32 level;
	__u64 interval;
	int ret;

	ret = parse_packet(skb, &p);
	if (ret == PARSE_PASS)
		return TC_ACT_OK;
	if (ret < 0)
		return drop_packet(skb, &p, -ret, 0, 0, 0, OBS_TO_ENDPOINT);

	struct endpoint_info *dst = lookup_endpoint(p.daddr, p.family);
	if (!dst || dst->ifindex != skb->ifindex)
		return drop_packet(skb, &p, DROP_UNKNOWN_TARGET, 0, 0, 0, OBS_TO_ENDPOINT);
	__u16 dst_ep = dst->ep_id;
	__u32 dst_id = dst->sec_id;
	__u32 src_id = ipcache_identity(p.saddr, p.family);

	load_config(&level, &interval);
	ret = ct_process(&p, src_id, dst_id, level, interval, &ct);
	if (ret < 0)
		return drop_packet(skb, &p, -ret, dst_ep, src_id, dst_id, OBS_TO_ENDPOINT);

	/* Forward packets of a connection reach the pod here only through the node stack (local
	 * pod-to-pod traffic is redirected straight into the peer), so its replies take the stack */
	if (ct.entry && (ct.state == CT_NEW || ct.state == CT_ESTABLISHED))
		ct.entry->flags |= CT_F_VIA_STACK;

	struct policy_verdict pv = {};
	if (ct.state != CT_REPLY && ct.state != CT_RELATED) {
		ret = policy_check(dst_ep, src_id, POLICY_INGRESS, &p, &pv);
		if (pv.enforced && (ret < 0 || ct.state == CT_NEW))
			policy_verdict_notify(skb, &p, dst_ep, dst_ep, src_id, dst_id, pv.cookie,
					      pv.match, TRAFFIC_INGRESS, ret);
		if (ret < 0) {
			ct_forget_new(&p, &ct);
			return drop_policy(skb, &p, -ret, dst_ep, dst_ep, src_id, dst_id,
					   OBS_TO_ENDPOINT, pv.cookie, pv.match, TRAFFIC_INGRESS);
		}
	}
	trace_meta(&m, &ct, dst_ep, dst_ep, src_id, dst_id, OBS_TO_ENDPOINT, &pv, TRAFFIC_INGRESS);
	if (ct.report)
		emit_event(skb, &p, &m);
	return TC_ACT_OK;
}

char __license[] SEC("license") = "Dual BSD/GPL";
