/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* NodePort, externalIPs and LoadBalancer addresses from outside the cluster, as Cilium's
 * lib/nodeport.h in its default SNAT mode (bpf_host.c's cil_from_netdev / cil_to_netdev on the
 * node's --devices):
 *
 *   request  a packet from the network to a frontend the agent flagged external (SVC_FLAG_NODEPORT,
 *            _EXTERNAL_IP, _LOADBALANCER: the node's own IPs x nodePort, spec.externalIPs,
 *            status.loadBalancer.ingress) gets a backend the way a pod's does (lib/lb.h
 *            lb_translate → lb_select_backend: affinity, Maglev or a random slot; the service
 *            conntrack entry keeps it) and is DNATed;
 *            - a local backend: conntrack (the entry remembers the frontend's rev-NAT index),
 *              the backend's ingress policy with the client's identity (world), delivered into
 *              the pod (lib/deliver.h); the client's address is kept;
 *            - a backend on another node: SNAT to this node's address with a NAT port (lib/nat.h's
 *              maps and allocation; the IN entry keeps the rev-NAT index) and straight to that
 *              node: into the tunnel (tunnel mode, the client's identity as VNI: world for a
 *              world host, as upstream) or routed with the FIB (native mode, lib/fib.h). The
 *              stack cannot forward it: a packet from the node's own address is a martian to it.
 *            A frontend with no backends (externalTrafficPolicy Local on a node without one: the
 *            agent gives it only local backends) drops with DROP_NO_SERVICE, as upstream.
 *   reply    of a remote backend: it arrives addressed to the node's address and NAT port; the
 *            IN entry gives the client's address back as destination, the rev-NAT entry the
 *            frontend as source, and the FIB sends it back out. Of a local backend: the pod's
 *            reply leaves by the device (stack or FIB) and cil_to_netdev gives it the frontend as
 *            source, by its conntrack entry's rev-NAT index.
 *   Hubble  a local backend's request is traced to-endpoint by lib/deliver.h; a forwarded
 *            request (to-overlay / to-network, before its SNAT) and its reply (to-network, after
 *            its translation) here, with the frontend's rev-NAT index, aggregated on the service
 *            conntrack entry; from-network at aggregation "none" only.
 * TCP and UDP only (other protocols to an external frontend pass to the stack untouched). */
#ifndef __CILIARY_NODEPORT_H
#define __CILIARY_NODEPORT_H
#include "common.h"
#include "parse.h"
#include "endpoints.h"
#include "ipcache.h"
#include "conntrack.h"
#include "nat.h"
#include "lb.h"
#include "encap.h"
#include "fib.h"
#include "config.h"
#include "events.h"

#define SVC_FLAGS_EXTERNAL                                                                         \
	(SVC_FLAG_NODEPORT | SVC_FLAG_EXTERNAL_IP | SVC_FLAG_LOADBALANCER | SVC_FLAG_HOSTPORT)
#define NP_PASS -1 /* not a NodePort packet: the caller goes on */

/* The node's address of the packet's family for NodePort SNAT, NULL when the agent set none. */
static __always_inline const __u8 *nodeport_node_addr(const struct nat_config *cfg, __u8 family)
{
	if (family == AF_INET4)
		return (cfg->flags & NAT_F_NODE_V4) ? cfg->node_ipv4 : 0;
	return (cfg->flags & NAT_F_NODE_V6) ? cfg->node_ipv6 : 0;
}

/* The packet goes to an external frontend (not a ClusterIP: those are the cluster's only). */
/* A request to an external frontend from a client outside its loadBalancerSourceRanges: 0
 * (dropped as upstream's DROP_NOT_IN_SRC_RANGE), else 1. */
static __attribute__((noinline)) int nodeport_src_range_ok(const struct pkt *p)
{
	struct lb_service *svc = lb_lookup_service(p);
	return !svc || lb_src_range_ok(svc, p);
}

/* The exact (address, port, protocol) entry only: an address's wildcard entry is a ClusterIP's
 * (agent/services.py), whose flags are never external, so looking it up on a miss (every packet
 * to the node or, in native routing, to a local pod) could only answer "no". */
static __always_inline int nodeport_is_frontend(const struct pkt *p)
{
	if (!p->has_l4 || (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP))
		return 0;
	struct lb_service *svc = lb_lookup_frontend(p, 0);
	return svc && (svc->flags & SVC_FLAGS_EXTERNAL);
}

/* Whether a NodePort packet this node translates without an endpoint's conntrack entry (a
 * request forwarded to another node's backend, or its reply) is reported under monitor
 * aggregation `level`, as ct_should_report decides for the others: the connection's service
 * entry (keyed on the client's tuple) keeps the flags and counts seen each way; its first packet
 * each way is always reported. Sets *state to the packet's CT_* state. */
static __always_inline int nodeport_report(struct ct_entry *svc, const struct pkt *p, int is_reply,
					   __u32 level, __u64 interval, __u8 *state)
{
	*state = is_reply ? CT_REPLY : CT_ESTABLISHED;
	if (!svc)
		return level == MONITOR_AGG_NONE;
	__u64 now = ct_now();
	__u8 seen;
	if (is_reply) {
		seen = svc->rx_flags_seen;
		svc->rx_packets++;
		svc->rx_bytes += p->len;
		svc->rx_flags_seen |= p->tcp_flags;
		return ct_should_report(svc, seen, p->tcp_flags, 1, now, level, interval);
	}
	seen = svc->tx_flags_seen;
	svc->tx_packets++;
	svc->tx_bytes += p->len;
	svc->tx_flags_seen |= p->tcp_flags;
	if (svc->tx_packets == 1) {
		*state = CT_NEW;
		svc->last_report_ns = now;
		return 1;
	}
	return ct_should_report(svc, seen, p->tcp_flags, 0, now, level, interval);
}

static __always_inline void nodeport_emit(struct __sk_buff *skb, const struct pkt *p, __u8 obs,
					  __u8 state, __u16 rev_nat, __u64 ids)
{
	struct event_meta m = {};
	m.type = EVENT_TRACE;
	m.verdict = VERDICT_FORWARDED;
	m.obs_point = obs;
	m.src_sec_id = (__u32)ids;
	m.dst_sec_id = ids >> 32;
	m.ct_state = state;
	m.is_reply = state == CT_REPLY;
	m.rev_nat_index = rev_nat;
	emit_event(skb, p, &m);
}

/* A FORWARDED trace of a NodePort packet (no endpoint: the node's own path) with the frontend's
 * rev-NAT index, so Hubble names the Service (destination_service of a request, source_service
 * of a reply). `what` packs the observation point (bits 0-7), 1 for a reply (8-15) and the
 * rev-NAT index (16-31); `ids` the source identity (low half; 0: the packet source's, from the
 * ipcache) and the destination's. Without `svc` the service entry is looked up here: a reply's
 * client tuple is the packet's reversed, a translated request's is its source and the frontend
 * (the rev-NAT entry). Returns the source identity. Five arguments at most, and a frame of its
 * own: its locals would push the forwarding path's call chain past 512 bytes of stack. */
#define NP_TRACE(obs, is_reply, rev_nat)                                                           \
	((__u32)(obs) | (__u32)(is_reply) << 8 | (__u32)(rev_nat) << 16)
#define NP_IDS(src, dst) ((__u64)(src) | (__u64)(dst) << 32)

static __attribute__((noinline)) __u32 nodeport_trace(struct __sk_buff *skb, const struct pkt *p,
						      struct ct_entry *svc, __u32 what, __u64 ids)
{
	__u32 level;
	__u64 interval;
	__u8 state;
	int is_reply = (what >> 8) & 0xff;
	if (!p)
		return ID_WORLD;
	if (!(__u32)ids)
		ids |= ipcache_identity(p->saddr, p->family);
	if (!svc) {
		struct ct_key sk = {};
		ct_build_key(&sk, p, is_reply);
		if (!is_reply) {
			__u16 rev_nat = what >> 16;
			struct lb4_reverse_nat *r4;
			struct lb6_reverse_nat *r6;
			if (p->family == AF_INET4) {
				r4 = bpf_map_lookup_elem(&ciliary_lb4_reverse_nat, &rev_nat);
				if (r4) {
					__builtin_memset(sk.daddr, 0, 16);
					__builtin_memcpy(sk.daddr, &r4->address, 4);
					sk.dport = bpf_ntohs(r4->port);
				}
			} else {
				r6 = bpf_map_lookup_elem(&ciliary_lb6_reverse_nat, &rev_nat);
				if (r6) {
					__builtin_memcpy(sk.daddr, r6->address, 16);
					sk.dport = bpf_ntohs(r6->port);
				}
			}
		}
		sk.scope = CT_SCOPE_SERVICE;
		svc = bpf_map_lookup_elem(&ciliary_ct, &sk);
	}
	load_config(&level, &interval);
	if (nodeport_report(svc, p, is_reply, level, interval, &state))
		nodeport_emit(skb, p, what & 0xff, state, what >> 16, ids);
	return (__u32)ids;
}

/* from-network of a NodePort packet (a request to an external frontend, a reply to a NAT port
 * of a forwarded one), as received: reported at aggregation "none" only, as every from-* point
 * (upstream's emit_trace_notify). */
static __always_inline void nodeport_trace_from_network(struct __sk_buff *skb, const struct pkt *p,
							__u16 rev_nat, int is_reply)
{
	__u32 level;
	__u64 interval;
	load_config(&level, &interval);
	if (level != MONITOR_AGG_NONE)
		return;
	nodeport_emit(skb, p, OBS_FROM_NETWORK, is_reply ? CT_REPLY : CT_ESTABLISHED, rev_nat,
		      NP_IDS(ipcache_identity(p->saddr, p->family),
			     ipcache_identity(p->daddr, p->family)));
}

/* SNAT of a NodePort request to this node's address with the frontend kept for the reply. A
 * global function, verified once on its own: the port allocation's retry loop verified in
 * every path of the service translation before it is more than the verifier's budget.
 * Returns 0 or -DROP_*; `p` carries the new source. */
__attribute__((noinline)) int nodeport_snat(struct __sk_buff *skb, struct pkt *p, __u32 rev_nat)
{
	if (!p)
		return -DROP_INVALID;
	struct nat_config *cfg = nat_config_get();
	const __u8 *node = cfg ? nodeport_node_addr(cfg, p->family) : 0;
	if (!node)
		return -DROP_NAT_NO_MAPPING;
	return snat_masquerade(skb, p, node, (__u16)rev_nat);
}

/* The trace of a request nodeport_forward sends to another node's backend (to-overlay, or
 * to-network in native mode), taken before the SNAT as upstream's: the client and its identity
 * to the backend, with the frontend's rev-NAT index; as monitor aggregation says. Returns the
 * client's identity (world for a world host), which is also the tunnel's VNI. */
static __always_inline __u32 nodeport_forward_trace(struct __sk_buff *skb, const struct pkt *p,
						    const struct lb_result *lb)
{
	struct ipcache_info *info = ipcache_lookup(p->daddr, p->family);
	__u8 obs = info && info->tunnel_ep && encap_ifindex() ? OBS_TO_OVERLAY : OBS_TO_NETWORK;
	return nodeport_trace(skb, p, lb->svc_ct, NP_TRACE(obs, 0, lb->rev_nat_index),
			      NP_IDS(0, ipcache_info_identity(info, p->family)));
}

/* The SNATed request on to the backend's node: into the tunnel (tunnel mode: the VNI is the
 * client's identity `src_id`, nodeport_forward_trace's, as upstream's WORLD_ID: the backend's
 * node must not take a request from outside for one of a cluster node's) or routed with the FIB.
 * A frame of its own (the FIB's parameters), apart from nodeport_snat's: each call chain's frames
 * add up to at most 512 bytes. Returns the tc verdict or -DROP_*. */
static __attribute__((noinline)) int nodeport_forward_route(struct __sk_buff *skb, struct pkt *p,
							    __u32 src_id)
{
	if (!p)
		return -DROP_INVALID;
	struct ipcache_info *info = ipcache_lookup(p->daddr, p->family);
	__u32 encap_dev = encap_ifindex();
	if (encap_dev && info && info->tunnel_ep)
		return encap_and_redirect(skb, info->tunnel_ep, src_id, encap_dev);
	int ret = fib_redirect(skb, p, FIB_HOW(0, 0));
	if (ret == FIB_PASS)
		return -DROP_NO_FIB;
	return ret;
}

/* A translated request whose backend is on another node: SNAT, then the tunnel or the FIB
 * (nodeport_forward_route). Returns the tc verdict or -DROP_*. */
static __always_inline int nodeport_forward(struct __sk_buff *skb, struct pkt *p,
					    const struct lb_result *lb, __u32 src_id)
{
	if (lb->svc_ct) /* no connection entry on this node: the service entry lives by traffic */
		lb->svc_ct->expires_ns = ct_now() +
					 (p->proto == IPPROTO_TCP ? CT_LIFETIME_TCP : CT_LIFETIME_NONTCP);
	int ret = nodeport_snat(skb, p, lb->rev_nat_index);
	if (ret < 0)
		return ret;
	return nodeport_forward_route(skb, p, src_id);
}

/* The reply of a connection nodeport_forward sent to another node: back to the client, from
 * the frontend, traced at to-network (the backend's identity to the client's) as monitor
 * aggregation says. Returns NP_PASS (not one), the tc verdict, or -DROP_*. */
static __always_inline int nodeport_reply(struct __sk_buff *skb, struct pkt *p)
{
	if (!p->has_l4 || (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP) ||
	    p->dport < NAT_PORT_MIN)
		return NP_PASS;
	struct nat_key rk = {};
	__builtin_memcpy(rk.saddr, p->saddr, 16);
	__builtin_memcpy(rk.daddr, p->daddr, 16);
	rk.sport = p->sport;
	rk.dport = p->dport;
	rk.proto = p->proto;
	rk.dir = NAT_DIR_IN;
	struct nat_entry *in = bpf_map_lookup_elem(nat_map(p->family), &rk);
	if (!in || !in->rev_nat_index)
		return NP_PASS; /* a masqueraded pod connection's (snat_reverse) or nothing */
	__u16 rev_nat = in->rev_nat_index;
	__u16 to_port = in->to_port;
	__u8 to_addr[16] = {};
	__builtin_memcpy(to_addr, in->to_addr, 16);
	nodeport_trace_from_network(skb, p, rev_nat, 1);
	__u32 src_id = ipcache_identity(p->saddr, p->family);
	int ret = nat_rewrite(skb, p, 0, to_addr, p->dport, to_port);
	if (ret < 0)
		return ret;
	addr_copy(p->daddr, to_addr, p->family);
	p->dport = to_port;
	ret = lb_rev_nat(skb, p, rev_nat);
	if (ret < 0)
		return ret;
	nodeport_trace(skb, p, 0, NP_TRACE(OBS_TO_NETWORK, 1, rev_nat),
		       NP_IDS(src_id, ipcache_identity(p->daddr, p->family)));
	ret = fib_redirect(skb, p, FIB_HOW(0, 0));
	if (ret == FIB_PASS)
		return -DROP_NO_FIB;
	return ret;
}

/* cil_to_netdev: a local backend's reply to an external client (its connection's conntrack entry
 * names the frontend) leaves with the frontend as source. Returns 1 translated, 0 not one, or
 * -DROP_*. */
static __always_inline int nodeport_rev_dnat(struct __sk_buff *skb, struct pkt *p)
{
	if (!p->has_l4 || (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP))
		return 0;
	if (!lookup_endpoint(p->saddr, p->family))
		return 0;
	struct ct_key k = {};
	ct_build_key(&k, p, 1);
	struct ct_entry *e = bpf_map_lookup_elem(&ciliary_ct, &k);
	if (!e || !e->rev_nat_index)
		return 0;
	int ret = lb_rev_nat(skb, p, e->rev_nat_index);
	return ret < 0 ? ret : 1;
}
#endif
