/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliary_ipcache: longest-prefix match of an address to its security identity. A miss means
 * "outside everything we know": world-ipv4 / world-ipv6 as Cilium does for dual stack. */
#ifndef __CILIARY_IPCACHE_H
#define __CILIARY_IPCACHE_H
#include "common.h"

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

/* The longest prefix covering `addr`: its identity and, for a prefix on another node in tunnel
 * mode, the node to encapsulate to. NULL when nothing covers it. */
static __always_inline struct ipcache_info *ipcache_lookup(const __u8 *addr, __u8 family)
{
	struct ipcache_key k = {};
	k.family = family;
	if (family == AF_INET4) {
		k.prefixlen = 32 + 32;
		__builtin_memcpy(k.addr, addr, 4);
	} else {
		k.prefixlen = 32 + 128;
		__builtin_memcpy(k.addr, addr, 16);
	}
	return bpf_map_lookup_elem(&ciliary_ipcache, &k);
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
