/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* What a node does with a packet another node's pod sent through the VXLAN tunnel, once
 * decapsulated: bpf_overlay.c's program runs it on what the tunnel device decapsulated, and
 * bpf_host.c's cil_from_netdev on what it decapsulated itself (lib/encap.h's encap_strip), so
 * both are one code path with the same events. See bpf_overlay.c. */
#ifndef __CILIARY_OVERLAY_H
#define __CILIARY_OVERLAY_H
#include "common.h"
#include "config.h"
#include "parse.h"
#include "endpoints.h"
#include "ipcache.h"
#include "conntrack.h"
#include "events.h"
#include "policy.h"
#include "deliver.h"
#include "encap.h"

/* A packet another node's pod sent through the tunnel, decapsulated (by the tunnel device, or
 * at the node's device by encap_strip), `vni` its VNI or -DROP_* when it could not be read:
 * everything but the tails, in a frame of its own (with to_proxy's or deliver_tail's the chain
 * would not fit the verifier's 512 bytes): a local endpoint's delivery answers DELIVER_TAIL with
 * `to` filled (lib/deliver.h), and the caller calls deliver_tail, then to_proxy on PROXY_TAIL. */
static __attribute__((noinline)) int from_overlay(struct __sk_buff *skb, struct pkt *p, int vni,
						  struct deliver_to *to)
{
	struct ct_result ct = {};
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

	ret = vni_identity(vni, &src_id);
	if (ret < 0)
		return drop_packet(skb, p, -ret, dst_ep, 0, dst_id, OBS_FROM_OVERLAY);

	load_config(&level, &interval);
	ret = ct_process(p, src_id, dst_id, level, interval, &ct);
	if (ret < 0)
		return drop_packet(skb, p, -ret, dst_ep, src_id, dst_id, OBS_FROM_OVERLAY);

	/* Above aggregation "none" a from-* point is not reported (upstream's emit_trace_notify):
	 * the packet's next point, to-endpoint or to-stack, says the same with the same identity. */
	if (level == MONITOR_AGG_NONE)
		trace_forwarded(skb, p, &ct, dst_ep, dst_ep, src_id, dst_id, OBS_FROM_OVERLAY, &none,
				TRAFFIC_INGRESS);

	int skip_policy = ct.state == CT_REPLY || ct.state == CT_RELATED;
	if (dst) /* deliver_tail, by the caller (lib/deliver.h) */
		return deliver_later(skb, to, &ct, dst, dst_ep, src_id, dst_id, skip_policy, &none);

	trace_forwarded(skb, p, &ct, 0, 0, src_id, dst_id, OBS_TO_STACK, &none, TRAFFIC_INGRESS);
	bpf_skb_change_type(skb, PACKET_HOST);
	return TC_ACT_OK;
}

#endif
