/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Programs of an endpoint's node-side veth (lxc…), as Cilium's bpf_lxc.c:
 *   tc ingress  cil_from_container: packets the pod sends. Source validated against the endpoint
 *               map (anti-spoofing), identities resolved, conntrack updated, then delivered to a
 *               local destination pod with bpf_redirect_peer (straight into its eth0, skipping the
 *               node stack), into the VXLAN tunnel for a pod of another node (tunnel mode: the
 *               ipcache names its node), or handed to the node's stack. Replies of connections that came in
 *               through the stack (CT_F_VIA_STACK) go back through it, whoever the destination:
 *               the stack may have NATed the request (hostPort), and only it can undo that.
 *               A packet to a service frontend is first given a backend (lib/lb.h: DNAT, before
 *               identity, conntrack, policy and routing look at its destination). A connection
 *               whose egress policy entry, or a local receiver's ingress entry, names an L7
 *               proxy is assigned to the proxy's socket in the node netns instead (lib/proxy.h),
 *               unchanged.
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
#include "lib/deliver.h"
#include "lib/encap.h"
#include "lib/fib.h"
#include "lib/lb.h"
#include "lib/proxy.h"

#define FC_CONTINUE -1
/* from_container_source: go on, and the destination's address may be a service frontend
 * (lib/lb.h's frontend bits): only then is from_container_lb called */
#define FC_CONTINUE_FRONTEND -4
#define FC_TO_PROXY PROXY_TAIL /* from_container_route: ciliary_proxy_req says where; call to_proxy */
#define FC_TO_OVERLAY -3 /* from_container_route: into the tunnel towards st->tunnel_ep */

/* What the steps of cil_from_container learn of a packet for the next ones. */
struct fc_state {
	__u32 sec_id;              /* the sender's */
	__u16 ep_id;
	__u8 dst_known;            /* dst looked up for the packet's (final) destination */
	__u8 pad;
	/* to.dst, when dst_known: the local endpoint of the destination, or NULL; the whole of
	 * it from_container_route's DELIVER_TAIL (lib/deliver.h) */
	struct deliver_to to;
};

/* What from_container_route leaves to_overlay (FC_TO_OVERLAY), in the skb's control block
 * (tc's scratch words, as upstream's ctx_store_meta: one store each, no lookup, and
 * cil_from_container's frame has no room to spare): */
#define CB_ENCAP_TUNNEL_EP 0 /* the destination's node (its ipcache entry's), network order */
#define CB_ENCAP_SRC_ID 1    /* the sender's identity: the VNI */
#define CB_ENCAP_DST_ID 2
#define CB_ENCAP_EP_ID 3     /* the sender's endpoint */

/* A packet of a connection the node stack delivers to a pod (cil_to_container, tc egress, where
 * bpf_sk_assign cannot be used) that belongs to a proxy: back into the lxc's own tc ingress
 * (cil_from_container, proxy_reinjected), with MARK_MAGIC_TO_PROXY, the listener's port (0: the
 * established socket of its tuple) and PROXY_REINJECT_* in the mark. A pod's own packets never
 * carry a mark there (crossing the veth from its netns clears it). */
static __attribute__((noinline)) int proxy_reinject(struct __sk_buff *skb, __be16 port,
						    __u32 flags)
{
	skb->mark = MARK_MAGIC_TO_PROXY | ((__u32)port << 16) | flags;
	return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

/* cil_from_container's first step for a packet proxy_reinject sent back (its mark: the caller
 * tests it, no call for a pod's own packet): fills the request slot for to_proxy (PROXY_TAIL). */
static __attribute__((noinline)) int proxy_reinjected(struct __sk_buff *skb, struct pkt *p)
{
	__u32 mark = skb->mark;
	if (parse_packet(skb, p) != PARSE_OK || !proxy_proto_ok(p))
		return drop_packet(skb, p, DROP_PROXY_LOOKUP_FAILED, 0, 0, 0, OBS_TO_PROXY);
	__u32 zero = 0;
	struct proxy_req *r = bpf_map_lookup_elem(&ciliary_proxy_req, &zero);
	if (!r)
		return drop_packet(skb, p, DROP_PROXY_LOOKUP_FAILED, 0, 0, 0, OBS_TO_PROXY);
	struct endpoint_info *dst = lookup_endpoint(p->daddr, p->family);
	r->port = (__be16)(mark >> 16);
	r->src_id = ipcache_identity(p->saddr, p->family);
	r->dst_id = dst ? dst->sec_id : ipcache_identity(p->daddr, p->family);
	r->ep_id = dst ? dst->ep_id : 0;
	r->cookie = 0;
	r->match = 0;
	r->state = r->port ? (mark & PROXY_REINJECT_NEW ? CT_NEW : CT_ESTABLISHED) : CT_REPLY;
	r->report = !!(mark & PROXY_REINJECT_REPORT);
	r->direction = TRAFFIC_INGRESS;
	return PROXY_TAIL;
}
/* Whether a packet of connection `ct` goes to the L7 proxy: a request (not a reply) of a
 * connection redirected when it was new, or, `reply`, a reply of one to the proxy's upstream
 * socket (the proxy speaks to the destination as the pod, with the pod's tuple). */
static __always_inline int proxy_redirected(const struct pkt *p, const struct ct_result *ct,
					    int reply)
{
	if (!ct->entry || !(ct->entry->flags & CT_F_PROXY_REDIRECT) || !proxy_proto_ok(p))
		return 0;
	if (reply)
		return ct->state == CT_REPLY;
	return ct->state == CT_NEW || ct->state == CT_ESTABLISHED;
}

/* The local endpoint at `addr`, or NULL. An address the ipcache gives to another node
 * (IPCACHE_F_REMOTE: the node manager writes no address of this node so) is no local
 * endpoint's: not looked for (the route step's ipcache lookup of it is then the cache's). */
static __always_inline const struct endpoint_info *lookup_local_endpoint(const __u8 *addr,
									 __u8 family)
{
	struct ipcache_info *info = ipcache_lookup(addr, family);
	if (info && (info->flags & IPCACHE_F_REMOTE))
		return 0;
	return lookup_endpoint(addr, family);
}

/* cil_from_container after the service translation: the destination's identity, conntrack,
 * policy, delivery. */
static __attribute__((noinline)) int from_container_route(struct __sk_buff *skb, struct pkt *p,
							  struct fc_state *st,
							  const struct lb_result *lb)
{
	struct ct_result ct = {};
	__u16 src_ep = st->ep_id;
	__u32 src_id = st->sec_id;
	__u32 level;
	__u64 interval;
	int ret;

	const struct endpoint_info *dst =
		st->dst_known ? st->to.dst : lookup_local_endpoint(p->daddr, p->family);
	__u32 dst_id, tunnel_ep = 0, dst_flags = 0;
	if (dst) {
		dst_id = dst->sec_id;
	} else {
		struct ipcache_info *info = ipcache_lookup(p->daddr, p->family);
		dst_id = ipcache_info_identity(info, p->family);
		if (info) {
			tunnel_ep = info->tunnel_ep;
			dst_flags = info->flags; /* fib_flags (lib/fib.h) takes IPCACHE_F_REMOTE */
		}
	}

	load_config(&level, &interval);
	ret = ct_process_at(p, src_id, dst_id, level, interval,
			    lb->now ? lb->now : ct_now(), &ct);
	if (ret < 0)
		return drop_packet(skb, p, -ret, src_ep, src_id, dst_id, OBS_FROM_ENDPOINT);
	if (ct.state == CT_ESTABLISHED && ct.entry && ct.entry->rev_nat_index != lb->rev_nat_index) {
		/* a stale entry (as upstream's "stale non-service entry? recreate"): the client reused
		 * the port of a closed connection whose translated tuple was the same, to the pod's
		 * address after one through the service or the other way; its translation is now
		 * this connection's, and the old one's closing state goes */
		ct.entry->rev_nat_index = lb->rev_nat_index;
		ct.entry->flags &= ~(CT_F_LOOPBACK | CT_F_TX_CLOSING | CT_F_RX_CLOSING);
	}
	if (lb->rev_nat_index && ct.entry) {
		/* the connection's replies get the frontend back; its service entry lives as long */
		ct.entry->rev_nat_index = lb->rev_nat_index;
		if (lb->loopback)
			ct.entry->flags |= CT_F_LOOPBACK;
		if (lb->svc_ct)
			lb->svc_ct->expires_ns = ct.entry->expires_ns;
	} else if (ct.state == CT_REPLY && ct.entry && (ct.entry->flags & CT_F_LOOPBACK)) {
		/* a hairpinned connection's reply: to the pod itself, from the frontend */
		ret = lb_loopback_reply(skb, p);
		if (ret < 0)
			return drop_packet(skb, p, -ret, src_ep, src_id, dst_id, OBS_FROM_ENDPOINT);
		dst = lookup_endpoint(p->daddr, p->family);
		dst_id = src_id;
		tunnel_ep = 0;
	}

	/* Policy: replies of allowed connections pass on conntrack; everything else is checked
	 * against the sender's egress policy and, for a local receiver, its ingress policy (an
	 * established packet whose verdict conntrack holds for the current policy revision, and
	 * that reports nothing, is not checked again: lib/policy.h). */
	struct policy_verdict pv_out = {};
	int skip_policy = ct.state == CT_REPLY || ct.state == CT_RELATED;
	__u32 rev = policy_revision();
	if (!skip_policy && ct.state == CT_ESTABLISHED && !ct.report && ct.entry &&
	    policy_cached(ct.entry, rev, src_id, dst_id, POLICY_CACHED_EGRESS)) {
		/* allowed at this revision, no proxy: pv_out stays empty */
	} else if (!skip_policy) {
		ret = policy_check(src_ep, dst_id, POLICY_EGRESS, p, &pv_out);
		if (pv_out.enforced && (ret < 0 || ct.state == CT_NEW))
			policy_verdict_notify(skb, p, src_ep, dst ? dst->ep_id : 0, src_id, dst_id,
					      pv_out.cookie, pv_out.match, TRAFFIC_EGRESS,
					      ret < 0 ? ret : bpf_ntohs(pv_out.proxy_port));
		if (ret < 0) {
			ct_forget_new(p, &ct);
			return drop_policy(skb, p, -ret, src_ep, dst ? dst->ep_id : 0, src_id,
					   dst_id, OBS_FROM_ENDPOINT, pv_out.cookie, pv_out.match,
					   TRAFFIC_EGRESS);
		}
		if (ct.entry && !pv_out.proxy_port)
			policy_cache(ct.entry, rev, src_id, dst_id, POLICY_CACHED_EGRESS);
	}

	/* L7 (lib/proxy.h): a new connection whose egress entry names a proxy goes to it for its
	 * whole life (the entry remembers the port); a reply to the proxy's upstream socket too */
	if (ct.state == CT_NEW && ct.entry && pv_out.proxy_port && proxy_proto_ok(p)) {
		ct.entry->flags |= CT_F_PROXY_REDIRECT;
		ct.entry->proxy_port = pv_out.proxy_port;
	}
	if (proxy_redirected(p, &ct, skip_policy))
		/* a request of a connection the receiver's ingress redirected (lib/deliver.h) has
		 * no egress proxy port */
		return proxy_request(skb, p, &ct, src_ep, src_id, dst_id, &pv_out,
				     ct.state == CT_REPLY ? 0 : ct.entry->proxy_port,
				     pv_out.proxy_port || skip_policy ? TRAFFIC_EGRESS
								      : TRAFFIC_INGRESS);

	/* A reply (or ICMP error) of a connection whose requests the stack delivered: back through
	 * the stack, so that its NAT is reversed (a hairpin to a hostPort of this node). */
	int via_stack = skip_policy && ct.entry && (ct.entry->flags & CT_F_VIA_STACK);
	if (dst && !via_stack) /* deliver_tail, by the top level (lib/deliver.h) */
		return deliver_later(skb, &st->to, &ct, dst, src_ep, src_id, dst_id, skip_policy,
				     &pv_out);

	/* A prefix of another node, in tunnel mode: into the tunnel with our identity as VNI (the
	 * receiving node checks its ingress policy on it). The node routes: TTL−1 first. */
	__u32 encap_dev = tunnel_ep && !via_stack ? encap_ifindex() : 0;
	if (encap_dev) {
		/* a local backend's reply to a pod of another node that came in through this node's
		 * NodePort (lib/nodeport.h): from the frontend, before the tunnel hides it */
		ret = lb_rev_nat_ct(skb, p, &ct);
		if (ret < 0)
			return drop_packet(skb, p, -ret, src_ep, src_id, dst_id, OBS_TO_OVERLAY);
		ret = l3_dec_ttl(skb, p);
		if (ret < 0)
			return drop_packet(skb, p, -ret, src_ep, src_id, dst_id, OBS_TO_OVERLAY);
		/* to_overlay encapsulates, below cil_from_container (this frame's and the policy
		 * lookup's leave no room for encap_and_redirect's); reported first, before the
		 * outer headers exist (the length is the inner packet's, as on the device's path) */
		skb->cb[CB_ENCAP_TUNNEL_EP] = tunnel_ep;
		skb->cb[CB_ENCAP_SRC_ID] = src_id;
		skb->cb[CB_ENCAP_DST_ID] = dst_id;
		skb->cb[CB_ENCAP_EP_ID] = src_ep;
		trace_forwarded(skb, p, &ct, src_ep, 0, src_id, dst_id, OBS_TO_OVERLAY, &pv_out,
				TRAFFIC_EGRESS);
		return FC_TO_OVERLAY;
	}

	/* Native routing: routed here with the node's FIB, straight to the egress device (BPF host
	 * routing, lib/fib.h); what the FIB does not simply forward goes to the stack. */
	if (!via_stack && routing_mode() == ROUTING_MODE_NATIVE) {
		/* marked when no service translation is to be reversed on the way out (lib/fib.h) */
		int plain = ct.entry && !ct.entry->rev_nat_index && ct.state != CT_RELATED;
		__u32 fl = fib_flags(p, dst_flags & IPCACHE_F_REMOTE);
		ret = fib_redirect(
			skb, p,
			FIB_HOW(plain ? (fl ? MARK_MAGIC_NATIVE_PLAIN : MARK_MAGIC_NO_REVNAT) : 0, fl));
		if (ret < 0)
			return drop_packet(skb, p, -ret, src_ep, src_id, dst_id, OBS_TO_NETWORK);
		if (ret != FIB_PASS) {
			trace_forwarded(skb, p, &ct, src_ep, 0, src_id, dst_id, OBS_TO_NETWORK,
					&pv_out, TRAFFIC_EGRESS);
			return ret;
		}
	}

	trace_forwarded(skb, p, &ct, src_ep, 0, src_id, dst_id, OBS_TO_STACK, &pv_out,
			TRAFFIC_EGRESS);
	return TC_ACT_OK;
}

/* cil_from_container's tail for FC_TO_OVERLAY: into the tunnel as the control block says
 * (lib/encap.h). A global function of the skb alone: verified once, not once for every path of
 * the steps before whose verdict the verifier does not know (a pointer into the caller's frame
 * would make all of it live in every one of them). A packet that could not be encapsulated is
 * reported as parsed again here: encap_and_redirect fails before it changes it (but for the
 * bounds check of the headers after bpf_skb_adjust_room made room for them, which holds). */
__attribute__((noinline)) int to_overlay(struct __sk_buff *skb)
{
	if (!skb)
		return TC_ACT_SHOT; /* not reached: the context */
	__u32 src_id = skb->cb[CB_ENCAP_SRC_ID];
	int ret = encap_and_redirect(skb, skb->cb[CB_ENCAP_TUNNEL_EP], src_id, encap_ifindex());
	if (ret >= 0)
		return ret;
	struct pkt p = {};
	parse_packet(skb, &p);
	return drop_packet(skb, &p, -ret, (__u16)skb->cb[CB_ENCAP_EP_ID], src_id,
			   skb->cb[CB_ENCAP_DST_ID], OBS_TO_OVERLAY);
}

/* Parsing and the sender's checks (anti-spoofing, endpoint ready). */
static __attribute__((noinline)) int from_container_source(struct __sk_buff *skb, struct pkt *p,
							   struct fc_state *out)
{
	int ret = parse_packet(skb, p);
	if (ret == PARSE_PASS)
		return TC_ACT_OK;
	if (ret < 0)
		return drop_packet(skb, p, -ret, 0, 0, 0, OBS_FROM_ENDPOINT);

	struct endpoint_info *src = lookup_endpoint(p->saddr, p->family);
	if (!src || src->ifindex != skb->ifindex)
		return drop_packet(skb, p, DROP_INVALID_SIP, 0, 0, 0, OBS_FROM_ENDPOINT);
	out->ep_id = src->ep_id;
	out->sec_id = src->sec_id;
	if (!(src->flags & EP_F_READY))
		return drop_packet(skb, p, DROP_EP_NOT_READY, out->ep_id, out->sec_id, 0,
				   OBS_FROM_ENDPOINT);
	return lb_maybe_frontend(p->daddr, p->family) ? FC_CONTINUE_FRONTEND : FC_CONTINUE;
}

/* Service translation (lib/lb.h) of what the sender addressed: lb_lookup_service's lookups,
 * except that the wildcard entry is not looked for at a local pod's address (wildcards are
 * ClusterIPs' only, agent/services.py, and a ClusterIP is never a pod's address): pod-to-pod
 * packets pay one miss here, and the endpoint found is the route step's. Called only for an
 * address whose frontend bit is set (from_container_source). */
static __attribute__((noinline)) int from_container_lb(struct __sk_buff *skb, struct pkt *p,
						       struct fc_state *st, struct lb_result *lb)
{
	struct lb_service *svc = lb_lookup_frontend(p, 0);
	if (!svc) {
		st->to.dst = lookup_local_endpoint(p->daddr, p->family);
		st->dst_known = 1;
		if (st->to.dst)
			return FC_CONTINUE;
		svc = lb_lookup_frontend(p, 1);
		if (!svc)
			return FC_CONTINUE;
	}
	int ret = lb_translate_service(skb, p, svc, lb);
	if (ret < 0)
		return drop_packet(skb, p, -ret, st->ep_id, st->sec_id, 0, OBS_FROM_ENDPOINT);
	st->dst_known = 0; /* sent to the backend now */
	return FC_CONTINUE;
}

/* Three steps in functions of their own, so that no two of their stack frames add up beyond the
 * verifier's 512 bytes per call chain; service translation first: identity, conntrack, policy
 * and routing see the backend. Then the tail the route step chose, each a global function
 * verified once (a local endpoint's delivery, the tunnel, the L7 proxy). */
SEC("tc")
int cil_from_container(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct fc_state st = {};
	struct lb_result lb = {};

	/* a packet cil_to_container sent back for the L7 proxy (lib/proxy.h) */
	int ret;
	if ((skb->mark & MARK_MAGIC_HOST_MASK) == MARK_MAGIC_TO_PROXY) {
		ret = proxy_reinjected(skb, &p);
		return ret == FC_TO_PROXY ? to_proxy(skb, &p) : ret;
	}
	ret = from_container_source(skb, &p, &st);
	if (ret == FC_CONTINUE_FRONTEND) /* else no service entry is keyed on the address */
		ret = from_container_lb(skb, &p, &st, &lb);
	if (ret != FC_CONTINUE)
		return ret;
	ret = from_container_route(skb, &p, &st, &lb);
	if (ret == FC_TO_PROXY)
		return to_proxy(skb, &p);
	if (ret == FC_TO_OVERLAY)
		return to_overlay(skb);
	if (ret == DELIVER_TAIL) {
		ret = deliver_tail(skb, &p, st.to.entry, st.to.dst);
		if (ret == FC_TO_PROXY)
			return to_proxy(skb, &p);
	}
	return ret;
}

SEC("tc")
int cil_to_container(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct ct_result ct = {};
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
	/* an L7 proxy's upstream connection from a port of its own: replies go to its socket */
	if (ct.entry && ct.state == CT_NEW && proxy_sent(skb, &p))
		ct.entry->flags |= CT_F_PROXY_REDIRECT | CT_F_PROXY_UPSTREAM;

	struct policy_verdict pv = {};
	__u32 rev = policy_revision();
	if (ct.state == CT_ESTABLISHED && !ct.report && ct.entry &&
	    policy_cached(ct.entry, rev, src_id, dst_id, POLICY_CACHED_INGRESS)) {
		/* allowed at this revision, no proxy (lib/policy.h): pv stays empty */
	} else if (ct.state != CT_REPLY && ct.state != CT_RELATED) {
		ret = policy_check(dst_ep, src_id, POLICY_INGRESS, &p, &pv);
		if (pv.enforced && (ret < 0 || ct.state == CT_NEW))
			policy_verdict_notify(skb, &p, dst_ep, dst_ep, src_id, dst_id, pv.cookie,
					      pv.match, TRAFFIC_INGRESS,
					      ret < 0 || proxy_from_ingress_proxy(skb)
						      ? ret
						      : bpf_ntohs(pv.proxy_port));
		if (ret < 0) {
			ct_forget_new(&p, &ct);
			return drop_policy(skb, &p, -ret, dst_ep, dst_ep, src_id, dst_id,
					   OBS_TO_ENDPOINT, pv.cookie, pv.match, TRAFFIC_INGRESS);
		}
		if (ct.entry && !pv.proxy_port)
			policy_cache(ct.entry, rev, src_id, dst_id, POLICY_CACHED_INGRESS);
	}
	/* L7 (lib/proxy.h) on a connection the stack delivers: a request whose ingress entry names
	 * a proxy (unless the ingress proxy sent it: another proxy's upstream connection, the
	 * node's own), or a reply to a proxy's upstream socket that a proxy here answered; both
	 * back into the lxc's tc ingress, where the socket can be assigned */
	if (ct.entry && proxy_proto_ok(&p)) {
		__u32 flags = ct.report ? PROXY_REINJECT_REPORT : 0;
		if (ct.state == CT_REPLY) {
			if (ct.entry->flags & CT_F_PROXY_UPSTREAM)
				return proxy_reinject(skb, 0, flags);
		} else if (ct.state != CT_RELATED && pv.proxy_port &&
			   !proxy_from_ingress_proxy(skb)) {
			/* the ingress entry's port (checked on every request), never the entry's: a
			 * proxy speaking with the pod's tuple shares its egress-redirected entry */
			if (ct.state == CT_NEW) {
				ct.entry->flags |= CT_F_PROXY_REDIRECT;
				ct.entry->proxy_port = pv.proxy_port;
				flags |= PROXY_REINJECT_NEW;
			}
			return proxy_reinject(skb, pv.proxy_port, flags);
		}
	}
	/* a reply the stack routed here (not delivered by lib/deliver.h): from the frontend again */
	ret = lb_rev_nat_ct(skb, &p, &ct);
	if (ret < 0)
		return drop_packet(skb, &p, -ret, dst_ep, src_id, dst_id, OBS_TO_ENDPOINT);
	/* a packet an L7 proxy sent as a pod (lib/proxy.h): seen leaving the proxy first */
	if (ct.report && proxy_sent(skb, &p))
		trace_forwarded(skb, &p, &ct, dst_ep, dst_ep, src_id, dst_id, OBS_FROM_PROXY, &pv,
				TRAFFIC_INGRESS);
	trace_forwarded(skb, &p, &ct, dst_ep, dst_ep, src_id, dst_id, OBS_TO_ENDPOINT, &pv,
			TRAFFIC_INGRESS);
	return TC_ACT_OK;
}

char __license[] SEC("license") = "Dual BSD/GPL";
