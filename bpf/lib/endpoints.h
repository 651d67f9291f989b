/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliary_lxc: local endpoints by address. The agent inserts an endpoint's addresses before the
 * pod's interface is up and removes them only after detaching its programs. */
#ifndef __CILIARY_ENDPOINTS_H
#define __CILIARY_ENDPOINTS_H
#include "common.h"
#include "parse.h"

#ifndef LXC_MAP_SIZE
#define LXC_MAP_SIZE 65536
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, LXC_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_lxc SEC(".maps");

static __always_inline struct endpoint_info *lookup_endpoint(const __u8 *addr, __u8 family)
{
	struct endpoint_key k = {};
	k.family = family;
	if (family == AF_INET4)
		__builtin_memcpy(k.addr, addr, 4);
	else
		__builtin_memcpy(k.addr, addr, 16);
	return bpf_map_lookup_elem(&ciliary_lxc, &k);
}
#endif
