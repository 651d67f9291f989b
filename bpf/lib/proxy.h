/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Redirect to the node's L7 proxies, as Cilium's BPF TPROXY path (bpf/lib/proxy.h upstream,
 * ctx_redirect_to_proxy_ingress4/6): a connection whose policy entry carries a proxy port is
 * handed to the proxy's socket in the node netns with bpf_sk_assign, the packet unchanged, so
 * the proxy sees the original destination as its socket's local address (UDP: in
 * IP_RECVORIGDSTADDR). The socket: the established one of the packet's own tuple first (a
 * connection the proxy already accepted), else the listener on (0.0.0.0 | ::, proxy_port).
 * Neither: DROP_PROXY_LOOKUP_FAILED (fail closed, no proxy listening); a refused assign:
 * DROP_PROXY_SET_FAILED. Of TCP sockets only a listener is assigned (a new connection's SYN): one
 * of the tuple itself goes up unassigned and the stack's early demux finds it, with its
 * cached input route; a TIME_WAIT one (the proxy closed an earlier connection of the tuple
 * first and the client reuses its port) that way too, the kernel's TIME_WAIT handling
 * finding the proxy's listener for a new SYN through bpf_sk_lookup.c (which says why neither
 * socket can be assigned). The packet goes up the node stack with MARK_MAGIC_TO_PROXY | port
 * << 16, which the agent's policy routing (fwmark 0x200/0xf00 → table 2004, local default
 * route: agent/proxyrouting.py) delivers locally whatever its destination.
 *
 * The proxy speaks to the destination as the pod: a transparent socket bound to the pod's
 * address *and port* (the redirected connection's tuple), so the destination's replies match
 * the connection's conntrack entry as replies; proxy_reply() hands them to that socket (the
 * established lookup alone) instead of delivering them to the pod, on any path a reply reaches
 * the node (lib/deliver.h, bpf_host's masquerade reply). The proxy's own packets never pass
 * cil_from_container, so they are not redirected again.
 *
 * Ingress (the receiver's policy names the proxy): lib/deliver.h's local_deliver, in tc ingress
 * for a sender on this node (bpf_lxc), another node (bpf_overlay, bpf_host's native delivery),
 * hands the connection to the proxy the same way (proxy_ingress, then the program's to_proxy).
 * The proxy's upstream connection to the pod reaches it through the node stack
 * (cil_to_container, tc egress), marked MARK_MAGIC_PROXY_INGRESS: never redirected again, and
 * the pod's replies are handed back to the proxy's upstream socket in its cil_from_container.
 * Other connections the stack delivers (the node's, an egress proxy's) whose ingress entry
 * names a proxy go back into the lxc's tc ingress for the assign (bpf_lxc's proxy_reinject). */
#ifndef __CILIARY_PROXY_H
#define __CILIARY_PROXY_H
#include "common.h"
#include "parse.h"
#include "conntrack.h"
#include "events.h"
#include "policy.h"
#include "endpoints.h"
#include "ipcache.h"

#define MARK_MAGIC_HOST_MASK 0x0F00
#define MARK_MAGIC_TO_PROXY 0x0200
/* SO_MARK of the proxies' upstream sockets (upstream's): the proxy applying a pod's ingress
 * policy (Envoy's cilium-http-ingress) or its egress policy; (mark & MARK_MAGIC_PROXY_MASK) ==
 * MARK_MAGIC_IS_PROXY: either. */
#define MARK_MAGIC_PROXY_INGRESS 0x0A00
#define MARK_MAGIC_PROXY_EGRESS 0x0B00
#define MARK_MAGIC_PROXY_MASK 0x0E00
#define MARK_MAGIC_IS_PROXY MARK_MAGIC_PROXY_INGRESS
/* With MARK_MAGIC_TO_PROXY on a packet cil_to_container sent back into the lxc's tc ingress
 * (proxy_reinject): its connection is new, its trace is due (monitor aggregation). */
#define PROXY_REINJECT_NEW 0x1
#define PROXY_REINJECT_REPORT 0x2

/* The tuple of a socket lookup in the node netns: the packet's own (listener_port 0) or the
 * proxy's listener (wildcard address, listener_port, network order). Returns its length. */
static __always_inline __u32 proxy_tuple(struct bpf_sock_tuple *t, const struct pkt *p,
					 __be16 listener_port)
{
	__builtin_memset(t, 0, sizeof(*t));
	if (p->family == AF_INET4) {
		if (listener_port) {
			t->ipv4.dport = listener_port;
		} else {
			__builtin_memcpy(&t->ipv4.saddr, p->saddr, 4);
			__builtin_memcpy(&t->ipv4.daddr, p->daddr, 4);
			t->ipv4.sport = bpf_htons(p->sport);
			t->ipv4.dport = bpf_htons(p->dport);
		}
		return sizeof(t->ipv4);
	}
	if (listener_port) {
		t->ipv6.dport = listener_port;
	} else {
		__builtin_memcpy(t->ipv6.saddr, p->saddr, 16);
		__builtin_memcpy(t->ipv6.daddr, p->daddr, 16);
		t->ipv6.sport = bpf_htons(p->sport);
		t->ipv6.dport = bpf_htons(p->dport);
	}
	return sizeof(t->ipv6);
}

/* Whether a connection of this protocol can go through a proxy. */
static __always_inline int proxy_proto_ok(const struct pkt *p)
{
	return p->has_l4 && !p->has_related &&
	       (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP);
}

/* Assigns the packet to the proxy's socket: listener_port (network order) 0 looks for the
 * established socket of the packet's tuple only (a reply to the proxy's upstream socket).
 * Returns 0 or -DROP_PROXY_*; the caller returns TC_ACT_OK (up the node stack). */
static __always_inline int proxy_assign(struct __sk_buff *skb, const struct pkt *p,
					__be16 listener_port)
{
	struct bpf_sock_tuple t;
	__u32 len;
	long err;
	if (p->proto == IPPROTO_TCP) {
		/* the connection's own socket (accepted by the proxy, or its upstream one for a
		 * reply); a listener found on the original port is not the proxy, one on the
		 * proxy's port is: the lookup ran bpf_sk_lookup.c, which names the proxy's
		 * listener for this redirected tuple (one listener lookup less per connection) */
		len = proxy_tuple(&t, p, 0);
		struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
		if (sk && sk->state == BPF_TCP_LISTEN &&
		    (!listener_port || sk->src_port != bpf_ntohs(listener_port))) {
			bpf_sk_release(sk);
			sk = 0;
		}
		if (sk && sk->state != BPF_TCP_LISTEN) {
			/* a socket of the tuple in the established hash: not assigned, the stack's
			 * early demux finds the same socket by the same tuple. An established one
			 * (the proxy's accepted or upstream socket) then gives its cached input
			 * route, where an assigned packet skips early demux and routes each packet
			 * through the policy rules (ip_route_input_slow: #15's per-connection cost).
			 * A TIME_WAIT one (the proxy closed an earlier connection of this tuple
			 * first) must not be assigned either: a SYN would get its old ACK, and the
			 * listener's request socket would be refused as its duplicate; the kernel's
			 * own TIME_WAIT handling takes the packet, a SYN through bpf_sk_lookup.c
			 * to the proxy */
			bpf_sk_release(sk);
			goto deliver;
		}
		if (!sk && listener_port) {
			len = proxy_tuple(&t, p, listener_port);
			sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
		}
		if (!sk)
			return -DROP_PROXY_LOOKUP_FAILED;
		err = bpf_sk_assign(skb, sk, 0);
		bpf_sk_release(sk);
	} else {
		/* a request goes to the listener (an unconnected socket on the original port in the
		 * node netns is not the proxy's); a reply to the proxy's upstream socket */
		len = proxy_tuple(&t, p, listener_port);
		struct bpf_sock *sk = bpf_sk_lookup_udp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return -DROP_PROXY_LOOKUP_FAILED;
		err = bpf_sk_assign(skb, sk, 0);
		bpf_sk_release(sk);
	}
	if (err)
		return -DROP_PROXY_SET_FAILED;
deliver:
	skb->mark = MARK_MAGIC_TO_PROXY | ((__u32)listener_port << 16);
	bpf_skb_change_type(skb, PACKET_HOST);
	return 0;
}
/* Whether a packet is a reply of a connection the proxy took over (conntrack says so): it is
 * for the proxy's upstream socket, not for the pod. */
static __always_inline int proxy_ct_reply(const struct pkt *p, const struct ct_entry *e,
					  __u8 ct_state)
{
	return ct_state == CT_REPLY && e && (e->flags & CT_F_PROXY_REDIRECT) && proxy_proto_ok(p);
}

/* A packet a proxy sent to a destination as the pod from a port of its own (its upstream
 * socket carries SO_MARK MARK_MAGIC_IS_PROXY): its connection's conntrack entry is marked
 * CT_F_PROXY_REDIRECT like a redirected one, so that the replies go to the proxy's socket of
 * the tuple (Envoy's upstream connections; the DNS proxy reuses the pod's tuple, whose entry
 * has the flag already). Called where such packets leave: cil_to_container (a pod of this
 * node), bpf_host's cil_from_host (tunnel) and cil_to_netdev (native routing, the world). */
static __always_inline int proxy_sent(const struct __sk_buff *skb, const struct pkt *p)
{
	return (skb->mark & MARK_MAGIC_PROXY_MASK) == MARK_MAGIC_IS_PROXY && proxy_proto_ok(p);
}

/* Sent by the proxy that applies the receiver's ingress policy (never redirected again). */
static __always_inline int proxy_from_ingress_proxy(const struct __sk_buff *skb)
{
	return (skb->mark & MARK_MAGIC_HOST_MASK) == MARK_MAGIC_PROXY_INGRESS;
}

static __always_inline void proxy_track_upstream(const struct __sk_buff *skb,
						 const struct pkt *p, __u32 src_id,
						 __u32 dst_id)
{
	struct ct_result ct = {};
	if (!proxy_sent(skb, p))
		return;
	if (ct_process(p, src_id, dst_id, MONITOR_AGG_MEDIUM, 0, &ct) == 0 && ct.entry &&
	    ct.state == CT_NEW)
		ct.entry->flags |= CT_F_PROXY_REDIRECT | CT_F_PROXY_UPSTREAM;
}

/* Such a reply that arrives from another node or the world (bpf_overlay, bpf_host): up the
 * node stack with the to-proxy mark, whose policy route delivers it locally, where the stack's
 * own lookup finds the proxy's upstream socket by the tuple (a transparent socket bound to the
 * pod's address and port). No socket lookup here: those programs' frames have no room for the
 * tuple under the verifier's 512 bytes; a reply nobody owns gets the stack's answer (RST). */
static __always_inline int proxy_reply_to_stack(struct __sk_buff *skb)
{
	skb->mark = MARK_MAGIC_TO_PROXY;
	bpf_skb_change_type(skb, PACKET_HOST);
	return TC_ACT_OK;
}

/* What the to-proxy tail needs of a packet's connection and verdict, handed from the step that
 * decided (bpf_lxc's route, lib/deliver.h's local_deliver for the receiver's ingress) to
 * to_proxy through a per-CPU slot: the program's top-level function calls to_proxy itself (the
 * frames of a step and a callee of it would not fit the verifier's 512 bytes). Written and read
 * in one run of the program on one CPU. */
struct proxy_req {
	__u32 src_id;
	__u32 dst_id;
	__u32 cookie;
	__u16 ep_id;
	__be16 port;  /* the listener's port, network order; 0: a reply (established socket) */
	__u8 state;
	__u8 report;
	__u8 match;
	__u8 direction; /* TRAFFIC_INGRESS | TRAFFIC_EGRESS: whose policy named the proxy */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct proxy_req);
	__uint(max_entries, 1);
} ciliary_proxy_req SEC(".maps");

/* A step's answer: "call to_proxy", ciliary_proxy_req says where (no tc verdict is negative
 * but TC_ACT_UNSPEC, -1). */
#define PROXY_TAIL -2

/* Fills the request slot; returns PROXY_TAIL, or a drop without a slot. */
static __always_inline int proxy_request(struct __sk_buff *skb, const struct pkt *p,
					 const struct ct_result *ct, __u16 ep_id, __u32 src_id,
					 __u32 dst_id, const struct policy_verdict *pv,
					 __be16 port, __u8 direction)
{
	__u32 zero = 0;
	struct proxy_req *r = bpf_map_lookup_elem(&ciliary_proxy_req, &zero);
	if (!r)
		return drop_packet(skb, p, DROP_PROXY_LOOKUP_FAILED, ep_id, src_id, dst_id,
				   OBS_TO_PROXY);
	r->src_id = src_id;
	r->dst_id = dst_id;
	r->cookie = pv->cookie;
	r->ep_id = ep_id;
	r->port = port;
	r->state = ct->state;
	r->report = ct->report;
	r->match = pv->match;
	r->direction = direction;
	return PROXY_TAIL;
}

/* The receiver's side (lib/deliver.h): a new connection to a local endpoint whose ingress
 * entry names a proxy goes to it for its whole life (the conntrack entry remembers the port),
 * as upstream's ingress redirect; later requests of it too. Returns PROXY_TAIL or 0 (deliver). */
static __always_inline int proxy_ingress(struct __sk_buff *skb, const struct pkt *p,
					 struct ct_result *ct, __u16 ep_id, __u32 src_id,
					 __u32 dst_id, const struct policy_verdict *pv)
{
	if (!ct->entry || !proxy_proto_ok(p))
		return 0;
	if (ct->state == CT_NEW && pv->proxy_port) {
		ct->entry->flags |= CT_F_PROXY_REDIRECT;
		ct->entry->proxy_port = pv->proxy_port;
	}
	if (!(ct->entry->flags & CT_F_PROXY_REDIRECT) || !ct->entry->proxy_port ||
	    (ct->state != CT_NEW && ct->state != CT_ESTABLISHED))
		return 0;
	return proxy_request(skb, p, ct, ep_id, src_id, dst_id, pv, ct->entry->proxy_port,
			     TRAFFIC_INGRESS);
}

/* The tail of a packet that goes to the L7 proxy instead of its destination, as
 * ciliary_proxy_req describes it. A new connection that finds no proxy is forgotten by
 * conntrack and dropped (fail closed). */
static __attribute__((noinline)) int to_proxy(struct __sk_buff *skb, struct pkt *p)
{
	__u32 zero = 0;
	struct proxy_req *r = bpf_map_lookup_elem(&ciliary_proxy_req, &zero);
	if (!r)
		return drop_packet(skb, p, DROP_PROXY_LOOKUP_FAILED, 0, 0, 0, OBS_TO_PROXY);
	int ret = proxy_assign(skb, p, r->port);
	if (ret < 0) {
		if (r->state == CT_NEW) {
			struct ct_key k = {};
			ct_build_key(&k, p, 0);
			bpf_map_delete_elem(&ciliary_ct, &k);
		}
		return drop_packet(skb, p, -ret, r->ep_id, r->src_id, r->dst_id, OBS_TO_PROXY);
	}
	if (r->report) {
		struct event_meta m = {};
		m.type = EVENT_TRACE;
		m.verdict = VERDICT_FORWARDED;
		m.obs_point = OBS_TO_PROXY;
		m.ep_id = r->ep_id;
		m.src_sec_id = r->src_id;
		m.dst_sec_id = r->dst_id;
		m.is_reply = r->state == CT_REPLY;
		m.ct_state = r->state;
		m.policy_cookie = r->cookie;
		m.policy_match = r->match;
		m.traffic_direction = r->direction;
		emit_event(skb, p, &m);
	}
	return TC_ACT_OK;
}
#endif
