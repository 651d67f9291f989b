/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* BPF masquerade (SNAT to the node IP) of pod -> world traffic, as Cilium's lib/nat.h with
 * bpf.masquerade: world hosts have no route to pod CIDRs, so a packet a local endpoint sends to
 * an address outside the cluster leaves the node's device with the node IP as source and a NAT
 * port, and the reply, addressed to that node IP and port, is translated back before the stack
 * routes it to the pod.
 *
 * Which packets (snat_needs_masquerade): the source is a local endpoint (ciliary_lxc), the
 * destination is outside the native routing CIDR of its family and its ipcache identity is the
 * world (world, world-ipv4/6, a node-local CIDR identity or no entry), never an entry the node
 * manager wrote (IPCACHE_F_REMOTE: remote pods, nodes and their pod CIDRs are the cluster),
 * and the packet is not a reply of a connection the peer opened (ciliary_ct knows its reversed
 * tuple: a world host with a route to the pod must see the pod answer, as upstream's
 * ct_is_reply check).
 *
 * State: one LRU hash per family (upstream's cilium_snat_v4_external / _v6_external), two
 * entries per connection: OUT keyed by the pod's tuple -> the node address and NAT port, IN keyed
 * by the reply's tuple (world -> node:natport) -> the pod's address and port. Ports are host
 * order; an ICMP echo's id is its port (the request's source, the reply's destination, as
 * parse.h reads them). The maps are pinned: a restarted agent's programs keep translating the
 * connections the old ones opened. */
#ifndef __CILIARY_NAT_H
#define __CILIARY_NAT_H
#include "common.h"
#include "parse.h"
#include "natconfig.h"
#include "endpoints.h"
#include "ipcache.h"
#include "conntrack.h"
#include "rewrite.h"

#define NAT_PORT_MIN 32768 /* upstream NODEPORT_PORT_MIN_NAT (NODEPORT_PORT_MAX + 1) */
#define NAT_PORT_MAX 65535 /* upstream NODEPORT_PORT_MAX_NAT */
#define NAT_COLLISION_RETRIES 32
#ifndef NAT_MAP_SIZE
#define NAT_MAP_SIZE 16384
#endif

#define NAT_DIR_OUT 0 /* key: the pod's packet; value: the source it leaves with */
#define NAT_DIR_IN 1  /* key: the reply as it arrives; value: the destination it is given */

/* Shared with user space (mirrors in ciliary.datapath.maps.nat). */
struct nat_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 dir;           /* NAT_DIR_* */
	__u8 pad[2];
};

struct nat_entry {
	__u64 created_ns;
	__u8 to_addr[16];   /* OUT: new source; IN: new destination */
	__u16 to_port;
	__u16 rev_nat_index; /* IN of a NodePort SNAT (lib/nodeport.h): the frontend, else 0 */
	__u32 pad2;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct nat_key);
	__type(value, struct nat_entry);
	__uint(max_entries, NAT_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_snat_v4_external SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct nat_key);
	__type(value, struct nat_entry);
	__uint(max_entries, NAT_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_snat_v6_external SEC(".maps");

static __always_inline void *nat_map(__u8 family)
{
	return family == AF_INET4 ? (void *)&ciliary_snat_v4_external
				  : (void *)&ciliary_snat_v6_external;
}

/* The node address of the packet's family, NULL when that family is not masqueraded. */
static __always_inline const __u8 *nat_node_addr(const struct nat_config *cfg, __u8 family)
{
	if (family == AF_INET4)
		return (cfg->flags & NAT_F_IPV4) ? cfg->node_ipv4 : 0;
	return (cfg->flags & NAT_F_IPV6) ? cfg->node_ipv6 : 0;
}

static __always_inline int identity_is_world(__u32 id)
{
	/* node-local CIDR identities carry the local scope bit (1 << 24) */
	return id == ID_WORLD || id == ID_WORLD_IPV4 || id == ID_WORLD_IPV6 || (id >> 24) != 0;
}

/* The packet's own tuple opened no connection but its reversed one did. */
static __always_inline int ct_is_reply(const struct pkt *p)
{
	struct ct_key k = {};
	ct_build_key(&k, p, 0);
	if (bpf_map_lookup_elem(&ciliary_ct, &k))
		return 0;
	ct_build_key(&k, p, 1);
	return bpf_map_lookup_elem(&ciliary_ct, &k) != 0;
}

static __always_inline int snat_needs_masquerade(const struct pkt *p, const struct nat_config *cfg)
{
	if (native_cidr_contains(cfg, p->family, p->daddr))
		return 0;
	if (!lookup_endpoint(p->saddr, p->family))
		return 0;
	struct ipcache_info *info = ipcache_lookup(p->daddr, p->family);
	if (info && ((info->flags & IPCACHE_F_REMOTE) || !identity_is_world(info->sec_id)))
		return 0;
	return !ct_is_reply(p);
}

/* TCP, UDP and ICMP echo requests (outbound) / echo replies (inbound) carry a port we can
 * translate; anything else a pod sends to the world cannot be masqueraded. */
static __always_inline int nat_proto_ok(const struct pkt *p, int outbound)
{
	if (!p->has_l4)
		return 0;
	if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP)
		return 1;
	if (p->proto == IPPROTO_ICMP)
		return p->icmp_type == (outbound ? ICMP_ECHO : ICMP_ECHOREPLY);
	if (p->proto == IPPROTO_ICMPV6)
		return p->icmp_type == (outbound ? ICMPV6_ECHO_REQUEST : ICMPV6_ECHO_REPLY);
	return 0;
}

static __always_inline void nat_reverse_key(struct nat_key *rk, const struct pkt *p,
					    const __u8 *node, __u16 nat_port)
{
	__builtin_memcpy(rk->saddr, p->daddr, 16);
	addr_copy(rk->daddr, node, p->family);
	rk->sport = p->dport;
	rk->dport = nat_port;
	rk->proto = p->proto;
	rk->dir = NAT_DIR_IN;
}

/* The mapping of snat_masquerade: returns the NAT port (> 0) or -DROP_*. */
static __always_inline int snat_translate(struct __sk_buff *skb, struct pkt *p,
					  const __u8 *node, __u16 rev_nat)
{
	void *map = nat_map(p->family);
	struct nat_key ok = {};
	__builtin_memcpy(ok.saddr, p->saddr, 16);
	__builtin_memcpy(ok.daddr, p->daddr, 16);
	ok.sport = p->sport;
	ok.dport = p->dport;
	ok.proto = p->proto;
	ok.dir = NAT_DIR_OUT;

	struct nat_entry *out = bpf_map_lookup_elem(map, &ok);
	if (out) {
		__u16 have = out->to_port;
		int ret = nat_rewrite(skb, p, 1, out->to_addr, p->sport, have);
		return ret < 0 ? ret : have;
	}

	/* an ICMP echo's id has no reply "port" on the peer's side: dport is 0 in both keys */
	struct nat_entry in_val = {}, out_val = {};
	struct nat_key rk = {};
	in_val.created_ns = out_val.created_ns = bpf_ktime_get_ns();
	__builtin_memcpy(in_val.to_addr, p->saddr, 16);
	in_val.to_port = p->sport;
	in_val.rev_nat_index = rev_nat;
	addr_copy(out_val.to_addr, node, p->family);

	__u16 port = p->sport >= NAT_PORT_MIN ? p->sport
					      : NAT_PORT_MIN + bpf_get_prandom_u32() %
								  (NAT_PORT_MAX - NAT_PORT_MIN + 1);
	int claimed = 0;
	for (int i = 0; i < NAT_COLLISION_RETRIES; i++) {
		nat_reverse_key(&rk, p, node, port);
		if (bpf_map_update_elem(map, &rk, &in_val, BPF_NOEXIST) == 0) {
			claimed = 1;
			break;
		}
		port = NAT_PORT_MIN + bpf_get_prandom_u32() % (NAT_PORT_MAX - NAT_PORT_MIN + 1);
	}
	if (!claimed)
		return -DROP_NAT_NO_MAPPING;
	out_val.to_port = port;
	if (bpf_map_update_elem(map, &ok, &out_val, BPF_ANY) < 0) {
		bpf_map_delete_elem(map, &rk);
		return -DROP_NAT_NO_MAPPING;
	}
	int ret = nat_rewrite(skb, p, 1, out_val.to_addr, p->sport, port);
	return ret < 0 ? ret : port;
}

/* Masquerade a packet snat_needs_masquerade accepted: find or create its mapping, rewrite the
 * source. A new mapping claims its IN entry first (BPF_NOEXIST: a port another connection to the
 * same peer holds is a collision, retried with another port), then publishes OUT. `rev_nat`: the
 * frontend of a NodePort connection (lib/nodeport.h), kept in the IN entry; 0 for a pod's.
 * Returns 0 or -DROP_*; `p` carries the new source. */
static __always_inline int snat_masquerade(struct __sk_buff *skb, struct pkt *p,
					   const __u8 *node, __u16 rev_nat)
{
	int ret = snat_translate(skb, p, node, rev_nat);
	if (ret < 0)
		return ret;
	addr_copy(p->saddr, node, p->family);
	p->sport = (__u16)ret;
	return 0;
}
/* A packet to the node address: a reply of a masqueraded connection gets the pod's address and
 * port back. Returns 1 translated, 0 not ours (untouched), or -DROP_*. */
static __always_inline int snat_reverse(struct __sk_buff *skb, struct pkt *p,
					const struct nat_config *cfg)
{
	const __u8 *node = nat_node_addr(cfg, p->family);
	if (!node || !addr_eq(p->daddr, node, p->family) || !nat_proto_ok(p, 0))
		return 0;
	if (p->dport < NAT_PORT_MIN)
		return 0;
	struct nat_key rk = {};
	__builtin_memcpy(rk.saddr, p->saddr, 16);
	__builtin_memcpy(rk.daddr, p->daddr, 16);
	rk.sport = p->sport;
	rk.dport = p->dport;
	rk.proto = p->proto;
	rk.dir = NAT_DIR_IN;
	struct nat_entry *in = bpf_map_lookup_elem(nat_map(p->family), &rk);
	if (!in)
		return 0;
	int ret = nat_rewrite(skb, p, 0, in->to_addr, p->dport, in->to_port);
	return ret < 0 ? ret : 1;
}
#endif
