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
 *              node: into the tunnel (tunnel mode, the source identity HOST, which the backend's
 *              node reads as remote-node) or routed with the FIB (native mode, lib/fib.h). The
 *              stack cannot forward it: a packet from the node's own address is a martian to it.
 *            A frontend with no backends (externalTrafficPolicy Local on a node without one: the
 *            agent gives it only local backends) drops with DROP_NO_SERVICE, as upstream.
 *   reply    of a remote backend: it arrives addressed to the node's address and NAT port; the
 *            IN entry gives the client's address back as destination, the rev-NAT entry the
 *            frontend as source, and the FIB sends it back out. Of a local backend: the pod's
 *            reply leaves by the device (stack or FIB) and cil_to_netdev gives it the frontend as
 *            source, by its conntrack entry's rev-NAT index.
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

#define SVC_FLAGS_EXTERNAL (SVC_FLAG_NODEPORT | SVC_FLAG_EXTERNAL_IP | SVC_FLAG_LOADBALANCER)
#define NP_PASS -1 /* not a NodePort packet: the caller goes on */

/* The node's address of the packet's family for NodePort SNAT, NULL when the agent set none. */
static __always_inline const __u8 *nodeport_node_addr(const struct nat_config *cfg, __u8 family)
{
	if (family == AF_INET4)
		return (cfg->flags & NAT_F_NODE_V4) ? cfg->node_ipv4 : 0;
	return (cfg->flags & NAT_F_NODE_V6) ? cfg->node_ipv6 : 0;
}

/* The packet goes to an external frontend (not a ClusterIP: those are the cluster's only). */
static __always_inline int nodeport_is_frontend(const struct pkt *p)
{
	if (!p->has_l4 || (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP))
		return 0;
	struct lb_service *svc = lb_lookup_service(p);
	return svc && (svc->flags & SVC_FLAGS_EXTERNAL);
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

/* A translated request whose backend is on another node: SNAT, then the tunnel or the FIB.
 * Returns the tc verdict or -DROP_*. */
static __always_inline int nodeport_forward(struct __sk_buff *skb, struct pkt *p,
					    const struct lb_result *lb)
{
	if (lb->svc_ct) /* no connection entry on this node: the service entry lives by traffic */
		lb->svc_ct->expires_ns = bpf_ktime_get_ns() +
					 (p->proto == IPPROTO_TCP ? CT_LIFETIME_TCP : CT_LIFETIME_NONTCP);
	int ret = nodeport_snat(skb, p, lb->rev_nat_index);
	if (ret < 0)
		return ret;
	struct ipcache_info *info = ipcache_lookup(p->daddr, p->family);
	__u32 encap_dev = encap_ifindex();
	if (encap_dev && info && info->tunnel_ep)
		return encap_and_redirect(skb, info->tunnel_ep, ID_HOST, encap_dev);
	ret = fib_redirect(skb, p);
	if (ret == FIB_PASS)
		return -DROP_NO_FIB;
	return ret;
}

/* The reply of a connection nodeport_forward sent to another node: back to the client, from
 * the frontend. Returns NP_PASS (not one), the tc verdict, or -DROP_*. */
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
	int ret = nat_rewrite(skb, p, 0, to_addr, p->dport, to_port);
	if (ret < 0)
		return ret;
	addr_copy(p->daddr, to_addr, p->family);
	p->dport = to_port;
	ret = lb_rev_nat(skb, p, rev_nat);
	if (ret < 0)
		return ret;
	ret = fib_redirect(skb, p);
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
