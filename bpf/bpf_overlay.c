/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Program of the node's tunnel device (ciliary_vxlan), as Cilium's bpf_overlay.c:
 *   tc ingress  cil_from_overlay: packets other nodes' pods sent through the tunnel, already
 *               decapsulated by the VXLAN driver. The sender's identity is the VNI (bpf_lxc of
 *               the sending node put it there), never an ipcache guess from the inner source.
 *               To a local endpoint: conntrack, that endpoint's ingress policy with the VNI's
 *               identity (replies of its own connections pass on conntrack), L2 rewrite and
 *               bpf_redirect_peer, as local pod-to-pod delivery. Anything else (the node's own
 *               addresses: replies to its own connections, which cil_from_host tunnelled) goes
 *               to the node's stack, as a packet for this host: the inner frame still carries
 *               the sending node's MACs, which the stack would discard as another host's.
 * It shares the node's pinned maps with bpf_lxc (conntrack, endpoints, policy, events), so a
 * connection is one conntrack entry whichever object saw which of its packets. */
#include "lib/common.h"
#include "lib/config.h"
#include "lib/parse.h"
#include "lib/endpoints.h"
#include "lib/ipcache.h"
#include "lib/conntrack.h"
#include "lib/events.h"
#include "lib/policy.h"
#include "lib/deliver.h"
#include "lib/encap.h"

/* Everything but the L7 proxy's tail, in a frame of its own (with to_proxy's the chain would
 * not fit the verifier's 512 bytes). */
static __attribute__((noinline)) int from_overlay(struct __sk_buff *skb, struct pkt *p)
{
	struct ct_result ct = {};
	struct event_meta m = {};
	struct policy_verdict none = {};
	__u32 level;
	__u64 interval;
	__u32 src_id = 0;
	int ret;

	ret = parse_packet(skb, p);
	if (ret == PARSE_PASS)
		return TC_ACT_OK;
	if (ret < 0)
		return drop_packet(skb, p, -ret, 0, 0, 0, OBS_FROM_OVERLAY);

	struct endpoint_info *dst = lookup_endpoint(p->daddr, p->family);
	__u16 dst_ep = dst ? dst->ep_id : 0;
	__u32 dst_id = dst ? dst->sec_id : ipcache_identity(p->daddr, p->family);

	ret = decap_identity(skb, &src_id);
	if (ret < 0)
		return drop_packet(skb, p, -ret, dst_ep, 0, dst_id, OBS_FROM_OVERLAY);

	load_config(&level, &interval);
	ret = ct_process(p, src_id, dst_id, level, interval, &ct);
	if (ret < 0)
		return drop_packet(skb, p, -ret, dst_ep, src_id, dst_id, OBS_FROM_OVERLAY);

	/* Above aggregation "none" a from-* point is not reported (upstream's emit_trace_notify):
	 * the packet's next point, to-endpoint or to-stack, says the same with the same identity. */
	if (ct.report && level == MONITOR_AGG_NONE) {
		trace_meta(&m, &ct, dst_ep, dst_ep, src_id, dst_id, OBS_FROM_OVERLAY, &none,
			   TRAFFIC_INGRESS);
		emit_event(skb, p, &m);
	}

	int skip_policy = ct.state == CT_REPLY || ct.state == CT_RELATED;
	if (dst)
		return local_deliver(skb, p, &ct, dst, dst_ep, src_id, dst_id, skip_policy, &none);

	trace_meta(&m, &ct, 0, 0, src_id, dst_id, OBS_TO_STACK, &none, TRAFFIC_INGRESS);
	if (ct.report)
		emit_event(skb, p, &m);
	bpf_skb_change_type(skb, PACKET_HOST);
	return TC_ACT_OK;
}

SEC("tc")
int cil_from_overlay(struct __sk_buff *skb)
{
	struct pkt p = {};
	int ret = from_overlay(skb, &p);
	if (ret == PROXY_TAIL)
		return to_proxy(skb, &p);
	return ret;
}

char __license[] SEC("license") = "Dual BSD/GPL";
