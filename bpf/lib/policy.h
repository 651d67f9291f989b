/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-endpoint policy, as Cilium's policy maps: ciliary_policy maps an endpoint id to that
 * endpoint's own LPM trie of (remote identity, direction, protocol, destination port prefix)
 * → allow | deny, plus a cookie naming the rule that put the entry there.
 *
 * Lookup contract (the agent's map state is computed for it):
 *   - two lookups: the remote identity, and identity 0 ("any peer", L4-only rules); each returns
 *     its longest match, where wildcard protocol/port are shorter prefixes;
 *   - a deny from either lookup wins (deny beats allow at any specificity: the agent never
 *     leaves an allow entry that is longer than a deny covering it for the same identity);
 *   - otherwise the longer of the two allows decides, identity-specific on a tie;
 *   - no match: default deny (DROP_POLICY). An endpoint without an inner map is not enforced
 *     in either direction; a direction that is not enforced holds an allow-all entry (identity
 *     0, prefix 40).
 * ICMP rules key the ICMP type in the port field, as Cilium does. An allow entry with a
 * proxy_port sends the connection to that L7 proxy (lib/proxy.h). */
#ifndef __CILIARY_POLICY_H
#define __CILIARY_POLICY_H
#include "common.h"
#include "parse.h"
#include "revision.h"

#ifndef POLICY_MAP_SIZE
#define POLICY_MAP_SIZE 65536
#endif
#define POLICY_FULL_PREFIX 64

#define POLICY_INGRESS 0
#define POLICY_EGRESS 1
#define POLICY_F_DENY 0x1

/* Cilium's policy match types (monitor / Hubble policy_match_type) */
#define POLICY_MATCH_NONE 0
#define POLICY_MATCH_L3_ONLY 1
#define POLICY_MATCH_L3_L4 2
#define POLICY_MATCH_L4_ONLY 3
#define POLICY_MATCH_ALL 4

/* Map definitions only reference the key/value types through pointers, which clang emits as
 * forward declarations; this never-called function puts the full structs into the BTF. */
__attribute__((noinline)) int ciliary_policy_btf(struct policy_key *k, struct policy_entry *e)
{
	return k && e ? 0 : 1;
}

/* Sizes, not BTF types: a type reached only through the nested inner definition would be
 * emitted as a forward declaration and libbpf could not size it. */
struct policy_inner {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(key_size, sizeof(struct policy_key));
	__uint(value_size, sizeof(struct policy_entry));
	__uint(max_entries, POLICY_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct policy_inner);
} ciliary_policy SEC(".maps");

/* The node's policy revision (ciliary_policy_rev[0], lib/revision.h): the agent raises it after
 * each write of any endpoint's policy (its entries, its inner map linked or unlinked:
 * datapath/maps/policy.py), never to 0. A connection's conntrack entry remembers the revision its forward packets passed
 * policy at, per direction (policy_rev, POLICY_CACHED_*), with the identities it was opened with;
 * an established packet whose revision and identities are still those, whose connection has no
 * L7 proxy and which reports no event skips the check: the verdict could not have changed. Any
 * policy write changes the revision, so the next packet of every established connection is
 * checked again: a policy change still reaches open connections at their next packet, as when
 * every packet was checked (upstream checks each non-reply packet). What it leaves out: the
 * entries' packet/byte counters count a connection's packets while they are checked (its first,
 * those after a policy write or an identity change, those reported under aggregation). */
REVISION_MAP(ciliary_policy_rev);

#define POLICY_CACHED_EGRESS 0x1  /* the sender's egress policy allowed (no proxy) */
#define POLICY_CACHED_INGRESS 0x2 /* the local receiver's ingress policy allowed (no proxy) */
#define POLICY_REV_MASK 0x3fffffff

/* The current revision, 0 while the agent has written no policy (nothing is cached then). */
static __always_inline __u32 policy_revision(void)
{
	return revision_of(&ciliary_policy_rev) & POLICY_REV_MASK;
}

/* Whether an established packet of `e` with identities (src_id, dst_id) passed `which`
 * (POLICY_CACHED_*) at revision `rev` already: its check can be skipped. */
static __always_inline int policy_cached(const struct ct_entry *e, __u32 rev, __u32 src_id,
					 __u32 dst_id, __u32 which)
{
	return rev && e->policy_rev == ((rev << 2) | (e->policy_rev & 3)) &&
	       (e->policy_rev & which) && e->src_sec_id == src_id && e->dst_sec_id == dst_id &&
	       !(e->flags & CT_F_PROXY_REDIRECT);
}

/* Remembers that `which` allowed the connection at `rev` (read before the check, so a write the
 * check may have missed leaves a newer revision behind), as one 32-bit store: a concurrent
 * packet of the connection may overwrite it, which only costs a check. */
static __always_inline void policy_cache(struct ct_entry *e, __u32 rev, __u32 src_id,
					 __u32 dst_id, __u32 which)
{
	if (!rev || e->src_sec_id != src_id || e->dst_sec_id != dst_id)
		return;
	__u32 old = e->policy_rev;
	__u32 keep = (old >> 2) == rev ? old & 3 : 0;
	e->policy_rev = (rev << 2) | keep | which;
}

struct policy_verdict {
	__u32 cookie;
	__u8 match;
	__u8 enforced;
	__be16 proxy_port;  /* the deciding allow entry's L7 proxy (lib/proxy.h), 0 = none */
};

static __always_inline __u8 policy_match_type(const struct policy_entry *e, int specific)
{
	if (e->prefixlen <= 40)
		return specific ? POLICY_MATCH_L3_ONLY : POLICY_MATCH_ALL;
	return specific ? POLICY_MATCH_L3_L4 : POLICY_MATCH_L4_ONLY;
}

/* The lookup behind policy_check, a global function: the verifier checks it once against its
 * prototype instead of once per path that reaches one of its call sites (cil_from_container
 * reaches them on many; its count of processed instructions was 986,505 of the kernel's
 * 1,000,000 with this inlined, 867,934 without). Global functions take at most five arguments,
 * scalars or pointers to memory it must check: the endpoint, direction and protocol share one,
 * `dport_be` is the port (the ICMP type) in network order. */
__attribute__((noinline)) int policy_check_lookup(__u32 ep_dir_proto, __u32 remote_id,
						  __u32 dport_be, __u32 len,
						  struct policy_verdict *v)
{
	if (!v)
		return -DROP_POLICY;
	__u32 outer_key = ep_dir_proto & 0xffff;
	__u8 egress = (ep_dir_proto >> 16) & 0xff;
	__u8 proto = ep_dir_proto >> 24;
	void *inner = bpf_map_lookup_elem(&ciliary_policy, &outer_key);
	v->cookie = 0;
	v->match = POLICY_MATCH_NONE;
	v->enforced = 0;
	v->proxy_port = 0;
	if (!inner)
		return 0;
	v->enforced = 1;

	struct policy_key k = {};
	k.prefixlen = POLICY_FULL_PREFIX;
	k.sec_label = remote_id;
	k.egress = egress;
	k.protocol = proto;
	k.dport = (__be16)dport_be;
	struct policy_entry *specific = bpf_map_lookup_elem(inner, &k);
	k.sec_label = 0;
	struct policy_entry *any = bpf_map_lookup_elem(inner, &k);

	if (specific && (specific->flags & POLICY_F_DENY)) {
		v->cookie = specific->cookie;
		v->match = policy_match_type(specific, 1);
		return -DROP_POLICY_DENY;
	}
	if (any && (any->flags & POLICY_F_DENY)) {
		v->cookie = any->cookie;
		v->match = policy_match_type(any, 0);
		return -DROP_POLICY_DENY;
	}
	struct policy_entry *best = specific;
	int is_specific = 1;
	if (any && (!best || any->prefixlen > best->prefixlen)) {
		best = any;
		is_specific = 0;
	}
	if (!best)
		return -DROP_POLICY;
	__sync_fetch_and_add(&best->packets, 1);
	__sync_fetch_and_add(&best->bytes, len);
	v->cookie = best->cookie;
	v->match = policy_match_type(best, is_specific);
	v->proxy_port = best->proxy_port;
	return 0;
}

/* Returns 0 (allowed) or -DROP_POLICY / -DROP_POLICY_DENY; fills *v for the event. */
static __always_inline int policy_check(__u16 ep_id, __u32 remote_id, __u8 egress,
					const struct pkt *p, struct policy_verdict *v)
{
	int icmp = p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6;
	__u16 port = icmp ? p->icmp_type : p->dport;
	return policy_check_lookup((__u32)ep_id | ((__u32)egress << 16) | ((__u32)p->proto << 24),
				   remote_id, bpf_htons(port), p->len, v);
}
#endif
