/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliary_nat_config: what the agent says of the node's addresses and its native routing CIDRs
 * (agent/masquerade.py), in a header of its own: lib/nat.h's masquerade reads it, and so does
 * lib/fib.h, whose table-direct route lookup is only taken for destinations in the native
 * routing CIDR (bpf_lxc has no NAT state of its own). */
#ifndef __CILIARY_NATCONFIG_H
#define __CILIARY_NATCONFIG_H
#include "common.h"

#define NAT_F_IPV4 0x1        /* masquerade IPv4 (node_ipv4 set) */
#define NAT_F_IPV6 0x2
#define NAT_F_NATIVE_V4 0x4   /* native_cidr_v4/native_plen_v4 valid */
#define NAT_F_NATIVE_V6 0x8
#define NAT_F_NODE_V4 0x10    /* node_ipv4 is the node's address for NodePort SNAT */
#define NAT_F_NODE_V6 0x20

/* ciliary_nat_config[0], written whole by the agent; zero (unwritten) = masquerade nothing.
 * The node addresses are also the source NodePort traffic forwarded to another node's backend
 * is given (NAT_F_NODE_V4/V6, set whether or not the family is masqueraded). */
struct nat_config {
	__u8 node_ipv4[4];
	__u8 native_cidr_v4[4];
	__u8 node_ipv6[16];
	__u8 native_cidr_v6[16];
	__u8 native_plen_v4;
	__u8 native_plen_v6;
	__u8 flags;         /* NAT_F_* */
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct nat_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_nat_config SEC(".maps");

static __always_inline struct nat_config *nat_config_get(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&ciliary_nat_config, &zero);
}

static __always_inline int prefix_contains(const __u8 *net, __u8 plen, const __u8 *addr)
{
	for (int i = 0; i < 16; i++) {
		if (plen == 0)
			return 1;
		__u8 bits = plen >= 8 ? 8 : plen;
		__u8 mask = (__u8)(0xff << (8 - bits));
		if ((net[i] & mask) != (addr[i] & mask))
			return 0;
		plen -= bits;
	}
	return 1;
}

/* Whether `addr` of `family` is in the native routing CIDR the agent wrote (none: no). */
static __always_inline int native_cidr_contains(const struct nat_config *cfg, __u8 family,
						const __u8 *addr)
{
	if (family == AF_INET4)
		return (cfg->flags & NAT_F_NATIVE_V4) &&
		       prefix_contains(cfg->native_cidr_v4, cfg->native_plen_v4, addr);
	return (cfg->flags & NAT_F_NATIVE_V6) &&
	       prefix_contains(cfg->native_cidr_v6, cfg->native_plen_v6, addr);
}
#endif
