/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* BPF host routing (as Cilium's fib.h with enable-host-legacy-routing=false): a pod's packet
 * that leaves the node in native routing mode is routed by the program itself, with the node's
 * own FIB (bpf_fib_lookup: its routes, its rules, its neighbours; the main table alone where
 * the agent has found the rules cannot change the answer, fib_lookup_flags), and handed
 * straight to the egress device, instead of a pass through the node's IP stack (ip_rcv, the
 * forwarding path, netfilter's hooks), which costs a connection of short requests a third of
 * its rate.
 *
 * Only what the stack would merely forward is taken: a lookup that does not end in "forward
 * through this device" (the node's own address, an unreachable or prohibited destination, a
 * packet too big for the route's MTU, a TTL about to expire: each needs the stack's ICMP or
 * delivery) leaves the packet to the stack, which then does exactly what it did before. The
 * egress device's own tc programs still run (bpf_host's masquerade on --devices). */
#ifndef __CILIARY_FIB_H
#define __CILIARY_FIB_H
#include "common.h"
#include "parse.h"
#include "l3.h"
#include "config.h"
#include "natconfig.h"
#include "ipcache.h"

#define FIB_PASS 1 /* not taken: let the stack route it */

/* skb->mark of a pod's packet bpf_lxc routed here whose conntrack entry has no service
 * translation to reverse (no rev-NAT index): bpf_host's cil_to_netdev, next on the egress
 * device, then skips its check for a local NodePort backend's reply (an endpoint and a
 * conntrack lookup on every pod packet that leaves the node). Under lib/proxy.h's
 * MARK_MAGIC_HOST_MASK, no proxy mark and no ip rule's (the proxy's is 0x200/0xf00; after the
 * redirect no rule is consulted anyway); the veth into the lab network clears it with the
 * netns crossing, as MARK_MAGIC_OVERLAY. */
#define MARK_MAGIC_NO_REVNAT 0x0300
/* MARK_MAGIC_NO_REVNAT's, for a packet whose route was looked up in the main table alone
 * (fib_lookup_flags): its destination is in the native routing CIDR, which lib/nat.h never
 * masquerades, so cil_to_netdev has nothing to do with it at all. */
#define MARK_MAGIC_NATIVE_PLAIN 0x0500

/* The length the FIB's MTU check compares with the route's: the packet's from its network
 * header, or a GSO packet's largest segment's (the network and transport headers and gso_size),
 * which is what the stack's forwarding checks (skb_gso_validate_network_len in ip_exceeds_mtu /
 * ip6_pkt_too_big). With the whole GSO packet's length every bulk TCP packet was "too big"
 * (BPF_FIB_LKUP_RET_FRAG_NEEDED) and took the stack's forwarding path after all. A GSO packet
 * that is not TCP or UDP keeps its whole length: the stack decides, as before. */
static __always_inline __u16 fib_tot_len(struct __sk_buff *skb, const struct pkt *p)
{
	__u32 whole = skb->len - p->l3_off;
	__u32 seg = skb->gso_size;
	__u32 l4_hdr;
	__u8 doff;

	if (!seg || !p->has_l4)
		return whole;
	if (p->proto == IPPROTO_TCP) {
		if (bpf_skb_load_bytes(skb, p->l4_off + 12, &doff, 1) < 0)
			return whole;
		l4_hdr = (doff >> 4) * 4;
	} else if (p->proto == IPPROTO_UDP) {
		l4_hdr = 8;
	} else {
		return whole;
	}
	return p->l4_off - p->l3_off + l4_hdr + seg;
}

/* The flags of the FIB lookup for a packet of `family` to d0..d3 (the address's words as in
 * the packet), whose ipcache entry gives it to another node when `remote`: BPF_FIB_LOOKUP_DIRECT
 * (the main table alone, no ip rules: on a lab node the rule walk, the local table's lookup
 * included, cost cil_from_container a quarter of its time per packet) when that gives what the
 * full lookup would:
 *   - the destination is in the native routing CIDR of its family, and the agent has found that
 *     no ip rule before the main table's can match a lookup there (DP_F_FIB_MAIN_*,
 *     agent/fibdirect.py: fwmark rules, as the L7 proxy's, never match the mark-0 lookups made
 *     here; rules whose destination is outside the CIDR, as the lab's API fence, never match;
 *     rules that look up main give main's answer). The agent checks again on every change of
 *     the rules, the addresses or the local table, and clears the bit when the answer changes;
 *   - the ipcache gives it to another node (IPCACHE_F_REMOTE, from the caller's own lookup of
 *     the destination: the node manager writes no address of this node so, and this node's own
 *     addresses are host entries the longest prefix match prefers), so the local table, which
 *     the rules consult first, has nothing for it.
 * A destination the main table has no route for is NOT_FWDED either way: the stack routes it,
 * with every rule. Anything else takes the full lookup (0). A global function, verified once
 * against its prototype (inlined, its compares multiplied cil_from_container's paths past the
 * verifier's limit), hence the scalars: `family_remote` is the family, with `remote` in bit 8. */
__attribute__((noinline)) __u32 fib_lookup_flags(__u32 family_remote, __u32 d0, __u32 d1,
						 __u32 d2, __u32 d3)
{
	__u32 family = family_remote & 0xff;
	__u32 zero = 0;
	__u32 addr[4] = {d0, d1, d2, d3};

	if (!(family_remote >> 8))
		return 0;
	struct dp_config *dp = bpf_map_lookup_elem(&ciliary_config, &zero);
	if (!dp || !(dp->flags & (family == AF_INET4 ? DP_F_FIB_MAIN_V4 : DP_F_FIB_MAIN_V6)))
		return 0;
	struct nat_config *cfg = bpf_map_lookup_elem(&ciliary_nat_config, &zero);
	return cfg && native_cidr_contains(cfg, family, (const __u8 *)addr) ? BPF_FIB_LOOKUP_DIRECT
									       : 0;
}

/* fib_lookup_flags for `p`, whose destination's ipcache entry says IPCACHE_F_REMOTE when
 * `remote`. */
static __always_inline __u32 fib_flags(const struct pkt *p, int remote)
{
	const __u32 *d = (const __u32 *)p->daddr; /* struct pkt keeps it 4-byte aligned */
	return fib_lookup_flags(p->family | (remote ? 1 << 8 : 0), d[0], d[1], d[2], d[3]);
}

#define FIB_HOW(mark, flags) ((mark) | (flags) << 16) /* fib_redirect's `how` */
#define FIB_L3_OFF_MAX 63 /* the Ethernet header and two VLAN tags, with room to spare */

/* fib_redirect's working memory, off the stack (its callers' frames take most of the
 * verifier's 512 bytes per call chain). */
struct fib_scratch {
	struct bpf_fib_lookup fib;
	struct bpf_redir_neigh nh;
	__u32 mark; /* fib_redirect's, kept here rather than in a register spilled to its frame */
	__u32 slot; /* the ciliary_fib_cache slot's index (a key in memory) */
	__u64 now;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct fib_scratch);
	__uint(max_entries, 1);
} ciliary_fib_scratch SEC(".maps");

/* The FIB's recent answers, per CPU (256 slots, direct-mapped by destination), for the lookups
 * that consult the main table alone (BPF_FIB_LOOKUP_DIRECT, fib_lookup_flags: a packet to
 * another node's pod in native routing): where to forward (device, the next hop's and the
 * device's MACs) and the route's MTU. An answer is used for FIB_CACHE_NS after the lookup that
 * gave it, for packets no longer than that MTU: a route or neighbour change reaches forwarded
 * packets within that time, as the stack's own cached routes take a moment to see a neighbour's
 * new address. Why: bpf_fib_lookup (the table walk, the next hop, the neighbour, the device) was
 * the biggest helper cost of a connection across nodes, paid by every packet of it. A miss, an
 * answer that is not "forward" (no neighbour yet: bpf_redirect_neigh) or a longer packet takes
 * the lookup. Pinned by name as the maps the programs share. */
#define FIB_CACHE_SLOTS 256
#define FIB_CACHE_NS (50 * 1000 * 1000ULL)

struct fib_slot {
	__u32 daddr[4]; /* the packet's destination (IPv4: daddr[0]) */
	__u64 until;    /* bpf_ktime_get_coarse_ns() after which the answer is not used; 0: none */
	__u32 ifindex;  /* the egress device */
	__u16 mtu;      /* the longest packet (network header on) the answer holds for */
	__u8 family;
	__u8 pad;
	__u8 dmac[6];
	__u8 smac[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct fib_slot);
	__uint(max_entries, FIB_CACHE_SLOTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_fib_cache SEC(".maps");

/* The cache slot of `p`'s destination for a lookup with `flags` (NULL: not a cached kind of
 * lookup); `w` holds the slot index and the time. */
static __always_inline struct fib_slot *fib_cache_slot(struct fib_scratch *w, const struct pkt *p,
						       __u32 flags)
{
	if (flags != BPF_FIB_LOOKUP_DIRECT)
		return 0;
	w->slot = addr_hash(p->daddr, p->family) >> 24; /* FIB_CACHE_SLOTS */
	w->now = bpf_ktime_get_coarse_ns();
	return bpf_map_lookup_elem(&ciliary_fib_cache, &w->slot);
}

/* Whether slot `c` answers for `p` (its destination, its length `tot_len`) at `now`. */
static __always_inline int fib_cache_hit(const struct fib_slot *c, const struct pkt *p,
					 __u16 tot_len, __u64 now)
{
	const __u32 *d = (const __u32 *)p->daddr;
	if (c->until <= now || c->family != p->family || tot_len > c->mtu || c->daddr[0] != d[0])
		return 0;
	return p->family == AF_INET4 ||
	       (c->daddr[1] == d[1] && c->daddr[2] == d[2] && c->daddr[3] == d[3]);
}

/* Fills slot `c` with the lookup's answer `fib` for `p` (asked with `tot_len`). */
static __always_inline void fib_cache_fill(struct fib_slot *c, const struct pkt *p,
					   const struct bpf_fib_lookup *fib, __u16 tot_len,
					   __u64 now)
{
	const __u32 *d = (const __u32 *)p->daddr;
	c->daddr[0] = d[0];
	c->daddr[1] = p->family == AF_INET4 ? 0 : d[1];
	c->daddr[2] = p->family == AF_INET4 ? 0 : d[2];
	c->daddr[3] = p->family == AF_INET4 ? 0 : d[3];
	c->family = p->family;
	c->ifindex = fib->ifindex;
	/* on success the kernel leaves the route's MTU where the length was (mtu_result) */
	c->mtu = fib->mtu_result >= tot_len ? fib->mtu_result : tot_len;
	__builtin_memcpy(c->dmac, fib->dmac, 6);
	__builtin_memcpy(c->smac, fib->smac, 6);
	c->until = now + FIB_CACHE_NS;
}

/* Route `p` with the node's FIB and redirect it to the egress device; `how` is FIB_HOW(mark,
 * flags): the lookup's flags (fib_lookup_flags, or 0 for the full lookup), and the skb->mark
 * the packet leaves with when that is not 0 (MARK_MAGIC_NO_REVNAT; a packet the stack gets keeps
 * its own). Returns the tc verdict (TC_ACT_REDIRECT), or FIB_PASS when the stack must handle it
 * (nothing written then).
 * The TTL and the MACs are written straight into the packet (direct packet access, the network
 * header pulled into the linear area first when it is not there: no helper call per write; two
 * bpf_skb_store_bytes took a tenth of cil_from_container's time per packet).
 * A global function: verified once against its prototype, not once for every path of its
 * callers that reaches it; after the call the verifier knows nothing of the caller's `p`. Its
 * frame stays within 32 bytes (bpf_lxc's call chain has no more room under it): one argument
 * for the mark and the flags, its working memory in a per-CPU slot. */
__attribute__((noinline)) int fib_redirect(struct __sk_buff *skb, struct pkt *p, __u32 how)
{
	__u32 zero = 0;
	struct fib_scratch *w = bpf_map_lookup_elem(&ciliary_fib_scratch, &zero);

	if (!skb || !p || !w)
		return FIB_PASS; /* not reached: the context, a frame's packet, a per-CPU slot */
	if (p->ttl <= 1 || p->l3_off > FIB_L3_OFF_MAX)
		return FIB_PASS;
	w->mark = how & 0xffff;
	struct bpf_fib_lookup *fib = &w->fib;
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->ifindex = skb->ingress_ifindex;
	fib->l4_protocol = p->proto;
	fib->sport = bpf_htons(p->sport);
	fib->dport = bpf_htons(p->dport);
	fib->tot_len = fib_tot_len(skb, p);
	if (p->family == AF_INET4) {
		fib->family = AF_INET4;
		__builtin_memcpy(&fib->ipv4_src, p->saddr, 4);
		__builtin_memcpy(&fib->ipv4_dst, p->daddr, 4);
	} else {
		fib->family = AF_INET6;
		__builtin_memcpy(fib->ipv6_src, p->saddr, 16);
		__builtin_memcpy(fib->ipv6_dst, p->daddr, 16);
	}
	__u16 tot_len = fib->tot_len;
	struct fib_slot *c = fib_cache_slot(w, p, how >> 16);
	int rc;
	if (c && fib_cache_hit(c, p, tot_len, w->now)) {
		rc = BPF_FIB_LKUP_RET_SUCCESS;
		fib->ifindex = c->ifindex;
		__builtin_memcpy(fib->dmac, c->dmac, 6);
		__builtin_memcpy(fib->smac, c->smac, 6);
	} else {
		rc = bpf_fib_lookup(skb, fib, sizeof(*fib), how >> 16);
		if (c && rc == BPF_FIB_LKUP_RET_SUCCESS)
			fib_cache_fill(c, p, fib, tot_len, w->now);
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return FIB_PASS;

	/* the network header in the linear area (pulled in when it is not: a write needs it) */
	__u32 l3_off = p->l3_off & FIB_L3_OFF_MAX; /* checked above: a bound for the verifier */
	__u32 l3_len = p->family == AF_INET4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	if (data + l3_off + l3_len > end) {
		if (bpf_skb_pull_data(skb, l3_off + l3_len) < 0)
			return FIB_PASS; /* nothing written yet: the stack routes it */
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
	}
	__u8 *l3 = data + l3_off;
	if ((void *)(l3 + sizeof(struct iphdr)) > end || (void *)(data + ETH_HLEN) > end ||
	    (p->family != AF_INET4 && (void *)(l3 + sizeof(struct ipv6hdr)) > end))
		return FIB_PASS; /* not reached: pulled */
	l3_write_ttl(l3, p);
	if (w->mark)
		skb->mark = w->mark;
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		__builtin_memcpy(data, fib->dmac, 6);
		__builtin_memcpy(data + 6, fib->smac, 6);
		return bpf_redirect(fib->ifindex, 0);
	}
	/* no neighbour entry yet: the kernel resolves the next hop and queues the packet */
	struct bpf_redir_neigh *nh = &w->nh;
	__builtin_memset(nh, 0, sizeof(*nh));
	nh->nh_family = fib->family;
	if (fib->family == AF_INET4)
		nh->ipv4_nh = fib->ipv4_dst;
	else
		__builtin_memcpy(nh->ipv6_nh, fib->ipv6_dst, 16);
	return bpf_redirect_neigh(fib->ifindex, nh, sizeof(*nh), 0);
}
#endif
