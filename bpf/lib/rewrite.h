/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Rewriting a packet's source or destination address and port with its checksums: the one home
 * of address translation on the wire, shared by the masquerade (lib/nat.h) and the service
 * translation (lib/lb.h). */
#ifndef __CILIARY_REWRITE_H
#define __CILIARY_REWRITE_H
#include "common.h"
#include "parse.h"

static __always_inline void addr_copy(__u8 *dst, const __u8 *src, __u8 family)
{
	if (family == AF_INET4)
		__builtin_memcpy(dst, src, 4);
	else
		__builtin_memcpy(dst, src, 16);
}

static __always_inline int addr_eq(const __u8 *a, const __u8 *b, __u8 family)
{
	int n = family == AF_INET4 ? 4 : 16;
	for (int i = 0; i < 16; i++) {
		if (i >= n)
			break;
		if (a[i] != b[i])
			return 0;
	}
	return 1;
}

/* Offsets of the rewritten fields; 0 = none (e.g. no L4 checksum for ICMPv4's addresses). */
static __always_inline __u32 l4_csum_off(const struct pkt *p)
{
	switch (p->proto) {
	case IPPROTO_TCP:
		return p->l4_off + 16;
	case IPPROTO_UDP:
		return p->l4_off + 6;
	default:
		return p->l4_off + 2; /* ICMP, ICMPv6 */
	}
}

/* Rewrite the source (is_src) or destination address and port of the packet, fixing the IPv4
 * header checksum and the L4 checksum (pseudo header for addresses, except ICMPv4's).
 * Returns 0 or -DROP_WRITE_ERROR. */
static __always_inline int nat_rewrite(struct __sk_buff *skb, const struct pkt *p, int is_src,
				       const __u8 *new_addr, __u16 old_port, __u16 new_port)
{
	__u32 csum_off = l4_csum_off(p);
	__u32 udp_flag = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	const __u8 *old_addr = is_src ? p->saddr : p->daddr;

	if (p->family == AF_INET4) {
		__be32 from, to;
		__builtin_memcpy(&from, old_addr, 4);
		__builtin_memcpy(&to, new_addr, 4);
		__u32 off = p->l3_off + (is_src ? 12 : 16);
		if (bpf_l3_csum_replace(skb, p->l3_off + 10, from, to, 4) < 0)
			return -DROP_WRITE_ERROR;
		if (p->proto != IPPROTO_ICMP &&
		    bpf_l4_csum_replace(skb, csum_off, from, to,
					BPF_F_PSEUDO_HDR | udp_flag | 4) < 0)
			return -DROP_WRITE_ERROR;
		if (bpf_skb_store_bytes(skb, off, &to, 4, 0) < 0)
			return -DROP_WRITE_ERROR;
	} else {
		__be32 from[4], to[4];
		__builtin_memcpy(from, old_addr, 16);
		__builtin_memcpy(to, new_addr, 16);
		__u32 off = p->l3_off + (is_src ? 8 : 24);
		__s64 diff = bpf_csum_diff(from, 16, to, 16, 0);
		if (diff < 0)
			return -DROP_WRITE_ERROR;
		if (bpf_l4_csum_replace(skb, csum_off, 0, (__u32)diff,
					BPF_F_PSEUDO_HDR | udp_flag) < 0)
			return -DROP_WRITE_ERROR;
		if (bpf_skb_store_bytes(skb, off, to, 16, 0) < 0)
			return -DROP_WRITE_ERROR;
	}
	if (old_port == new_port)
		return 0;
	__be16 from_port = bpf_htons(old_port), to_port = bpf_htons(new_port);
	__u32 port_off;
	if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP)
		port_off = p->l4_off + (is_src ? 0 : 2);
	else
		port_off = p->l4_off + 4; /* ICMP echo identifier */
	if (bpf_l4_csum_replace(skb, csum_off, from_port, to_port, udp_flag | 2) < 0)
		return -DROP_WRITE_ERROR;
	if (bpf_skb_store_bytes(skb, port_off, &to_port, 2, 0) < 0)
		return -DROP_WRITE_ERROR;
	return 0;
}

#endif
