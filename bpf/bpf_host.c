/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Programs of the node's native devices (--devices, e.g. the lab network's eth0), as Cilium's
 * bpf_host.c with bpf.masquerade:
 *   tc egress   cil_to_netdev: a packet a local endpoint sends to the world (lib/nat.h decides)
 *               leaves with the node IP as source and a NAT port; everything else (the node's
 *               own traffic, pod traffic to the cluster or the native routing CIDR) untouched.
 *   tc ingress  cil_from_netdev: a reply addressed to the node IP and a NAT port of a
 *               masqueraded connection gets the pod's address and port back, then the stack
 *               routes it to the pod's lxc, where cil_to_container does conntrack and policy as
 *               for any packet from outside. Anything else untouched.
 * And on ciliary_host (as Cilium's cil_from_host on cilium_host), tunnel mode:
 *   tc egress   cil_from_host: the node's own packets to a remote pod CIDR, which the agent
 *               routes through ciliary_host from the router address, go into the tunnel like
 *               bpf_lxc's, with the source identity HOST (the receiving node reads it as
 *               remote-node) or, for a local endpoint's packet the stack forwarded, the
 *               endpoint's. Anything without a tunnel endpoint in the ipcache is untouched.
 * It shares the node's pins with bpf_lxc (endpoints, ipcache, conntrack: a pod's reply to a
 * connection the peer opened is never masqueraded) and owns the NAT maps, so the
 * translation state outlives an agent restart as conntrack does. */
#include "lib/common.h"
#include "lib/config.h"
#include "lib/parse.h"
#include "lib/endpoints.h"
#include "lib/ipcache.h"
#include "lib/events.h"
#include "lib/nat.h"
#include "lib/encap.h"
#include "lib/overlay.h"
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/deliver.h"
#include "lib/nodeport.h"

/* In a frame of its own: cil_to_netdev's has no room for conntrack's. */
static __attribute__((noinline)) void to_netdev_track_proxy(struct __sk_buff *skb,
							    const struct pkt *p)
{
	struct endpoint_info *src = lookup_endpoint(p->saddr, p->family);
	if (src)
		proxy_track_upstream(skb, p, src->sec_id, ipcache_identity(p->daddr, p->family));
}

/* A local backend's reply to a NodePort client: from the frontend (lib/nodeport.h). */
static __attribute__((noinline)) int to_netdev_rev_dnat(struct __sk_buff *skb, struct pkt *p)
{
	int ret = nodeport_rev_dnat(skb, p);
	if (ret < 0)
		return drop_packet(skb, p, -ret, 0, 0, 0, OBS_TO_NETWORK);
	return ret > 0 ? TC_ACT_OK : NP_PASS;
}

/* A pod's packet to the world: the node's address and a NAT port (lib/nat.h). */
static __attribute__((noinline)) int to_netdev_masq(struct __sk_buff *skb, struct pkt *p)
{
	struct nat_config *cfg = nat_config_get();
	if (!cfg)
		return TC_ACT_OK;
	const __u8 *node = nat_node_addr(cfg, p->family);
	if (!node || !snat_needs_masquerade(p, cfg))
		return TC_ACT_OK;
	if (!nat_proto_ok(p, 1))
		return drop_packet(skb, p, DROP_NAT_UNSUPP_PROTO, 0, 0, 0, OBS_TO_NETWORK);
	int ret = snat_masquerade(skb, p, node, 0);
	if (ret < 0)
		return drop_packet(skb, p, -ret, 0, 0, 0, OBS_TO_NETWORK);
	return TC_ACT_OK;
}

/* Steps in frames of their own (each call chain's frames add up to at most 512 bytes). An outer
 * VXLAN packet (lib/encap.h's mark) is left alone unparsed: it is from the node's address to
 * another node's, neither a pod's packet to masquerade or rev-NAT nor a proxy's. A pod's packet
 * bpf_lxc routed here with lib/fib.h's MARK_MAGIC_NO_REVNAT has no service translation to
 * reverse (its conntrack entry said so) and is no proxy's: only the masquerade may apply; with
 * MARK_MAGIC_NATIVE_PLAIN its destination is in the native routing CIDR besides, never
 * masqueraded: left alone unparsed. */
SEC("tc")
int cil_to_netdev(struct __sk_buff *skb)
{
	struct pkt p = {};
	__u32 host_mark = skb->mark & MARK_MAGIC_HOST_MASK;
	if (host_mark == MARK_MAGIC_OVERLAY || host_mark == MARK_MAGIC_NATIVE_PLAIN)
		return TC_ACT_OK;
	if (!nat_config_get() || parse_packet(skb, &p) != PARSE_OK)
		return TC_ACT_OK;
	if (host_mark == MARK_MAGIC_NO_REVNAT)
		return to_netdev_masq(skb, &p);
	int ret = to_netdev_rev_dnat(skb, &p);
	if (ret != NP_PASS)
		return ret;
	/* an L7 proxy's upstream connection as a local pod (lib/proxy.h): tracked for its replies */
	if (proxy_sent(skb, &p))
		to_netdev_track_proxy(skb, &p);
	return to_netdev_masq(skb, &p);
}

/* Native routing: a packet from the network to a local endpoint goes straight into the pod (BPF
 * host routing), as one out of the tunnel does: conntrack, the endpoint's ingress policy with
 * the sender's identity from the ipcache, bpf_redirect_peer. Anything else is the stack's.
 * Also the tail of a NodePort request given a local backend (any routing mode): `lb` names the
 * frontend, which the connection's entry remembers for the reply (cil_to_netdev). */
static __attribute__((noinline)) int netdev_deliver(struct __sk_buff *skb, struct pkt *p,
						    const struct lb_result *lb,
						    struct deliver_to *to)
{
	struct ct_result ct = {};
	struct policy_verdict none = {};
	__u32 level;
	__u64 interval;

	if (skb->pkt_type != PACKET_HOST)
		return TC_ACT_OK; /* flooded by the L2 segment to us: not ours to deliver */
	struct endpoint_info *dst = lookup_endpoint(p->daddr, p->family);
	if (!dst)
		return TC_ACT_OK;
	__u16 dst_ep = dst->ep_id;
	__u32 dst_id = dst->sec_id;
	__u32 src_id = ipcache_identity(p->saddr, p->family);
	load_config(&level, &interval);
	int ret = ct_process(p, src_id, dst_id, level, interval, &ct);
	if (ret < 0)
		return drop_packet(skb, p, -ret, dst_ep, src_id, dst_id, OBS_FROM_NETWORK);
	if (lb && lb->rev_nat_index && ct.entry) {
		ct.entry->rev_nat_index = lb->rev_nat_index;
		if (lb->svc_ct)
			lb->svc_ct->expires_ns = ct.entry->expires_ns;
	}
	int skip_policy = ct.state == CT_REPLY || ct.state == CT_RELATED;
	/* deliver_tail, by from_netdev_host (lib/deliver.h) */
	return deliver_later(skb, to, &ct, dst, dst_ep, src_id, dst_id, skip_policy, &none);
}

/* The reply of a NodePort connection forwarded to another node's backend (lib/nodeport.h). */
static __attribute__((noinline)) int from_netdev_nodeport_reply(struct __sk_buff *skb,
								struct pkt *p)
{
	int ret = nodeport_reply(skb, p);
	if (ret != NP_PASS && ret < 0)
		return drop_packet(skb, p, -ret, 0, 0, 0, OBS_FROM_NETWORK);
	return ret;
}

/* The backend of a request to an external frontend (lib/lb.h), in a frame of its own. */
static __attribute__((noinline)) int from_netdev_nodeport_lb(struct __sk_buff *skb,
							     struct pkt *p, struct lb_result *lb)
{
	if (skb->pkt_type != PACKET_HOST || !nodeport_is_frontend(p))
		return NP_PASS;
	nodeport_trace_from_network(skb, p, 0, 0);
	if (!nodeport_src_range_ok(p))
		return drop_packet(skb, p, DROP_NOT_IN_SRC_RANGE, 0,
				   ipcache_identity(p->saddr, p->family), 0, OBS_FROM_NETWORK);
	int ret = lb_translate(skb, p, lb);
	if (ret < 0)
		return drop_packet(skb, p, -ret, 0, ipcache_identity(p->saddr, p->family), 0,
				   OBS_FROM_NETWORK);
	return 0;
}

/* Its trace, in a frame of its own (lib/nodeport.h); returns the client's identity. */
static __attribute__((noinline)) __u32 from_netdev_nodeport_fwd_trace(struct __sk_buff *skb,
								      struct pkt *p,
								      const struct lb_result *lb)
{
	return nodeport_forward_trace(skb, p, lb);
}

/* A request to an external frontend given a backend on another node (lib/nodeport.h). */
static __attribute__((noinline)) int from_netdev_nodeport_fwd(struct __sk_buff *skb,
							      struct pkt *p,
							      const struct lb_result *lb,
							      __u32 src_id)
{
	int ret = nodeport_forward(skb, p, lb, src_id);
	if (ret < 0)
		return drop_packet(skb, p, -ret, 0, 0, 0, OBS_TO_NETWORK);
	return ret;
}

/* A reply of a masqueraded pod connection (lib/nat.h). */
static __attribute__((noinline)) int from_netdev_masq_reply(struct __sk_buff *skb, struct pkt *p)
{
	struct nat_config *cfg = nat_config_get();
	if (!cfg)
		return NP_PASS;
	int ret = snat_reverse(skb, p, cfg);
	if (ret < 0)
		return drop_packet(skb, p, -ret, 0, 0, 0, OBS_FROM_NETWORK);
	if (ret > 0) {
		/* translated back: the stack routes it to the pod's lxc, or delivers it to the L7
		 * proxy's upstream socket when it answers a connection the proxy took over */
		struct ct_key k = {};
		if (parse_packet(skb, p) == PARSE_OK) {
			ct_build_key(&k, p, 1);
			struct ct_entry *e = bpf_map_lookup_elem(&ciliary_ct, &k);
			if (proxy_ct_reply(p, e, CT_REPLY))
				return proxy_reply_to_stack(skb);
		}
		return TC_ACT_OK;
	}
	return NP_PASS;
}

/* from_netdev_parse's answer for a parsed packet whose destination address some service entry
 * may be keyed on (lib/lb.h's frontend bits): only then is from_netdev_nodeport_lb called. */
#define NETDEV_PARSED_FRONTEND (PARSE_OK | 0x100)

/* parse_packet, and for a packet it parsed (PARSE_OK) the frontend bit of its destination
 * (NETDEV_PARSED_FRONTEND): read here, in a frame of its own (the array key's room is not in
 * from_netdev_host's, whose call chains reach the verifier's 512 bytes). */
static __attribute__((noinline)) int from_netdev_parse(struct __sk_buff *skb, struct pkt *p)
{
	int ret = parse_packet(skb, p);
	if (ret == PARSE_OK && lb_maybe_frontend(p->daddr, p->family))
		return NETDEV_PARSED_FRONTEND;
	return ret;
}

/* Whether `p` is addressed to the node's own address, the only one lib/nat.h translates to:
 * every reverse NAT entry (a NodePort connection's reply, a masqueraded pod connection's) is
 * keyed on it, so a packet to any other address (a pod's, in native routing) needs no lookup. */
static __always_inline int to_nat_addr(const struct pkt *p)
{
	struct nat_config *cfg = nat_config_get();
	return cfg && addr_eq(p->daddr, p->family == AF_INET4 ? cfg->node_ipv4 : cfg->node_ipv6,
			      p->family);
}

#define NETDEV_NOT_TUNNEL -4 /* from_netdev_overlay: not a tunnelled packet (no tc verdict) */

/* Another node's tunnelled packet (encap_received_fast): decapsulated here when it is for a local
 * endpoint (no UDP socket, no tunnel device on its path: lib/encap.h's encap_strip) and taken on
 * as the tunnel device's program takes what the device decapsulated (lib/overlay.h), else left
 * to the stack's VXLAN socket. Anything else: NETDEV_NOT_TUNNEL. A global function: verified
 * once, so the host path after it is too (not once per verdict the verifier does not know). */
__attribute__((noinline)) int from_netdev_overlay(struct __sk_buff *skb)
{
	struct pkt p = {};
	if (!skb || !encap_received_fast(skb))
		return NETDEV_NOT_TUNNEL;
	int vni = encap_strip(skb);
	if (vni == ENCAP_TO_STACK)
		return TC_ACT_OK;
	struct deliver_to to = {};
	int ret = from_overlay(skb, &p, vni, &to);
	if (ret == DELIVER_TAIL)
		ret = deliver_tail(skb, &p, to.entry, to.dst);
	if (ret == PROXY_TAIL)
		return to_proxy(skb, &p);
	return ret;
}

/* Steps in functions of their own (each call chain's frames add up to at most 512 bytes): a
 * NodePort reply, a request to an external frontend (NodePort, externalIPs, LoadBalancer: a
 * backend, then a local one's delivery or SNAT and forwarding to another node's), a
 * masqueraded connection's reply, BPF host routing; the L7 proxy's tail (lib/proxy.h). */
static __attribute__((noinline)) int from_netdev_host(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct lb_result lb = {};
	struct deliver_to to = {};
	int parsed = from_netdev_parse(skb, &p);
	if ((parsed != PARSE_OK && parsed != NETDEV_PARSED_FRONTEND) || encap_received(&p))
		return TC_ACT_OK;
	int to_node = to_nat_addr(&p);
	int np = to_node ? from_netdev_nodeport_reply(skb, &p) : NP_PASS;
	if (np != NP_PASS)
		return np;
	/* no call for an address no service entry is keyed on, or a frame not for this host */
	if (parsed == NETDEV_PARSED_FRONTEND && skb->pkt_type == PACKET_HOST)
		np = from_netdev_nodeport_lb(skb, &p, &lb);
	if (np == 0) {
		if (!lookup_endpoint(p.daddr, p.family))
			return from_netdev_nodeport_fwd(skb, &p, &lb,
							from_netdev_nodeport_fwd_trace(skb, &p, &lb));
		np = netdev_deliver(skb, &p, &lb, &to);
	} else if (np == NP_PASS) {
		np = to_node ? from_netdev_masq_reply(skb, &p) : NP_PASS;
		if (np != NP_PASS)
			return np;
		if (routing_mode() != ROUTING_MODE_NATIVE)
			return TC_ACT_OK;
		np = netdev_deliver(skb, &p, 0, &to);
	}
	if (np == DELIVER_TAIL)
		np = deliver_tail(skb, &p, to.entry, to.dst);
	/* to a local endpoint whose ingress entry names an L7 proxy (lib/deliver.h) */
	if (np == PROXY_TAIL)
		return to_proxy(skb, &p);
	return np;
}

/* Two paths, each in a frame of its own below a frameless entry (the tunnel's, with
 * from_overlay's and the policy lookup's, would not fit the 512 bytes under the other's). */
SEC("tc")
int cil_from_netdev(struct __sk_buff *skb)
{
	/* no call for what cannot be a tunnel packet (not IPv4 UDP) */
	if (encap_maybe(skb)) {
		int ret = from_netdev_overlay(skb);
		if (ret != NETDEV_NOT_TUNNEL)
			return ret;
	}
	return from_netdev_host(skb);
}

SEC("tc")
int cil_from_host(struct __sk_buff *skb)
{
	struct pkt p = {};
	__u32 encap_dev = encap_ifindex();
	if (!encap_dev || parse_packet(skb, &p) != PARSE_OK)
		return TC_ACT_OK;
	struct ipcache_info *info = ipcache_lookup(p.daddr, p.family);
	if (!info || !info->tunnel_ep)
		return TC_ACT_OK;
	struct endpoint_info *src = lookup_endpoint(p.saddr, p.family);
	__u32 src_id = src ? src->sec_id : ID_HOST;
	if (src)
		proxy_track_upstream(skb, &p, src_id, ipcache_info_identity(info, p.family));
	int ret = encap_and_redirect(skb, info->tunnel_ep, src_id, encap_dev);
	if (ret < 0)
		return drop_packet(skb, &p, -ret, 0, src_id, 0, OBS_TO_OVERLAY);
	return ret;
}

char __license[] SEC("license") = "Dual BSD/GPL";
