/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliary_ipcache: longest-prefix match of an address to its security identity. A miss means
 * "outside everything we know": world-ipv4 / world-ipv6 as Cilium does for dual stack. */
#ifndef __CILIARY_IPCACHE_H
#define __CILIARY_IPCACHE_H
#include "common.h"
#include "revision.h"

#ifndef IPCACHE_MAP_SIZE
#define IPCACHE_MAP_SIZE 512000
#endif

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_info);
	__uint(max_entries, IPCACHE_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_ipcache SEC(".maps");

/* ciliary_ipcache_rev[0]: the ipcache's revision (lib/revision.h). The agent raises it after
 * every write of ciliary_ipcache (datapath/maps/ipcache.py, an entry added, changed or
 * deleted). */
REVISION_MAP(ciliary_ipcache_rev);

/* A per-CPU cache of the trie's answers in front of it, direct-mapped by address: an LPM
 * lookup walks a node per prefix level, each a cache miss on a busy CPU (the trie was a tenth of
 * the programs' time in a connection across nodes, two lookups per packet), where a slot is one
 * line. A slot answers only at the revision it was filled at, read before the trie: the agent
 * writes the trie first and raises the revision after, so a slot filled with an answer older
 * than a write always carries a revision older than the one that write raised. Negative answers
 * (nothing covers the address: world) are cached the same way. Pinned by name as the maps the
 * programs share, so that programs taken over by a restarted agent keep theirs. */
#define IPCACHE_CACHE_SLOTS 256

struct ipcache_slot {
	struct ipcache_key key;   /* the full-length key of the address (the trie's lookup key) */
	__u32 rev;                /* ciliary_ipcache_rev when filled; 0: never answers */
	__u8 found;               /* 0: nothing covers the address */
	__u8 pad[3];
	struct ipcache_info info; /* the longest prefix's, when found */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct ipcache_slot);
	__uint(max_entries, IPCACHE_CACHE_SLOTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_ipcache_cache SEC(".maps");

/* Fills slot `s` (index `idx`) with the trie's answer for the address (family, a0..a3: its
 * words as in the packet) at revision `rev`. A global function, verified once (inlined at each
 * lookup, it cost cil_from_container a fifth more instructions to verify): the hit stays
 * inline, the fill is the rare path. */
__attribute__((noinline)) int ipcache_fill(__u32 idx, __u32 rev, __u32 family, __u32 a0,
					   __u32 a1)
{
	struct ipcache_slot *s = bpf_map_lookup_elem(&ciliary_ipcache_cache, &idx);
	if (!s)
		return 0; /* not reached: idx < IPCACHE_CACHE_SLOTS */
	/* the key in the slot itself, its address words 2 and 3 written by the caller: this
	 * function's frame stays small (a call chain's frames add up to at most 512 bytes) */
	__u32 *ka = (__u32 *)s->key.addr;
	s->key.prefixlen = 32 + (family == AF_INET4 ? 32 : 128);
	s->key.family = family;
	ka[0] = a0;
	ka[1] = a1;
	struct ipcache_info *info = bpf_map_lookup_elem(&ciliary_ipcache, &s->key);
	s->rev = rev;
	s->found = info != 0;
	if (info)
		s->info = *info;
	return 0;
}

/* The longest prefix covering `addr`: its identity and, for a prefix on another node in tunnel
 * mode, the node to encapsulate to. NULL when nothing covers it. The answer lives in this CPU's
 * cache slot for the address: read it before the next ipcache_lookup (which may take the slot
 * for another address), never write it. */
static __always_inline struct ipcache_info *ipcache_lookup(const __u8 *addr, __u8 family)
{
	__u32 a[4] = {};
	__u32 rev = revision_of(&ciliary_ipcache_rev); /* before the trie (the contract above) */

	if (family == AF_INET4)
		__builtin_memcpy(a, addr, 4);
	else
		__builtin_memcpy(a, addr, 16);
	__u32 idx = addr_hash(addr, family) >> 24; /* IPCACHE_CACHE_SLOTS */
	struct ipcache_slot *s = bpf_map_lookup_elem(&ciliary_ipcache_cache, &idx);
	if (!s)
		return 0; /* not reached */
	__u32 *ka = (__u32 *)s->key.addr;
	if (!rev || s->rev != rev || s->key.family != family || ka[0] != a[0] || ka[1] != a[1] ||
	    ka[2] != a[2] || ka[3] != a[3]) {
		s->rev = 0; /* filled by ipcache_fill */
		ka[2] = a[2];
		ka[3] = a[3];
		ipcache_fill(idx, rev, family, a[0], a[1]);
	}
	return s->found ? &s->info : 0;
}

static __always_inline __u32 ipcache_info_identity(const struct ipcache_info *info, __u8 family)
{
	if (info)
		return info->sec_id;
	return family == AF_INET4 ? ID_WORLD_IPV4 : ID_WORLD_IPV6;
}

static __always_inline __u32 ipcache_identity(const __u8 *addr, __u8 family)
{
	return ipcache_info_identity(ipcache_lookup(addr, family), family);
}
#endif
