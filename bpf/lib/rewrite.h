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

/* One's-complement arithmetic (RFC 1624) on values as they lie in the packet (network order
 * read as host words: the sum does not depend on the byte order as long as it is the same for
 * every word), so that a rewrite computes checksums itself instead of one helper call each. */
static __always_inline __u32 csum_fold32(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffffffff) + (s >> 32);
	return (__u32)s;
}

static __always_inline __u16 csum_fold16(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/* The checksum `check` after the 32-bit word `from` became `to` (RFC 1624 eq. 3). */
static __always_inline __be16 csum_replace4(__be16 check, __be32 from, __be32 to)
{
	__u32 s = (__u16)~check;
	s += (__u16)~from + (__u16)(~from >> 16);
	s += (__u16)to + (__u16)(to >> 16);
	return (__be16)~csum_fold16(s);
}

/* The checksum `check` after the 16-bit word `from` became `to`. */
static __always_inline __be16 csum_replace2(__be16 check, __be16 from, __be16 to)
{
	__u32 s = (__u16)~check;
	s += (__u16)~from;
	s += (__u16)to;
	return (__be16)~csum_fold16(s);
}

/* What bpf_csum_diff(from, 16, to, 16, 0) returns, up to one's-complement equivalence: the
 * 32-bit partial sum that turns a checksum over `from` into one over `to`. */
static __always_inline __u32 csum_diff16(const __u8 *from, const __u8 *to)
{
	__u32 f[4], t[4];
	__builtin_memcpy(f, from, 16);
	__builtin_memcpy(t, to, 16);
	__u64 s = 0;
#pragma unroll
	for (int i = 0; i < 4; i++)
		s += (__u64)(__u32)~f[i] + t[i];
	return csum_fold32(s);
}

/* IPv4 TCP/UDP without options: the ports follow the header's addresses, so a rewrite writes
 * them in the same store (nat_rewrite_at, l3_dec_ttl_src). */
static __always_inline int ipv4_ports_follow(const struct pkt *p)
{
	return p->family == AF_INET4 && p->l4_off == p->l3_off + 20 &&
	       (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP);
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
 * header checksum and the L4 checksum (pseudo header for addresses, except ICMPv4's); `p`'s
 * ip_csum follows (its addresses and ports are the caller's to update). IPv4: the header
 * checksum is computed here and written with the addresses in one bpf_skb_store_bytes; the L4
 * checksum takes one bpf_l4_csum_replace (the kernel's: it knows whether the skb's checksum is
 * CHECKSUM_PARTIAL, where only the pseudo header counts); a port that changes takes one more
 * of each, IPv4's store saved when the ports follow the header (no options: written with the
 * addresses). IPv6: the address diff is summed here, then one bpf_l4_csum_replace and one
 * store.
 * `store_addr` 0 (a source only): the address (and IPv4's header checksum, and a port that
 * follows the header) is left for l3_dec_ttl_src (lib/l3.h) to write with the TTL in one store; until then the packet's L4
 * checksum already counts the new address while its header still holds the old one, so
 * nothing may read or pass the packet on in between.
 * Returns 0 or -DROP_WRITE_ERROR. */
static __always_inline int nat_rewrite_at(struct __sk_buff *skb, struct pkt *p, int is_src,
					  const __u8 *new_addr, __u16 old_port, __u16 new_port,
					  int store_addr)
{
	__u32 csum_off = l4_csum_off(p);
	__u32 udp_flag = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	const __u8 *old_addr = is_src ? p->saddr : p->daddr;
	/* a port that changes is written with the addresses when it follows them
	 * (ipv4_ports_follow): one store less; left with them for l3_dec_ttl_src (!store_addr) */
	int ports = old_port != new_port && ipv4_ports_follow(p);
	int ports_stored = ports && !store_addr;
	__be16 sport = bpf_htons(is_src ? new_port : p->sport);
	__be16 dport = bpf_htons(is_src ? p->dport : new_port);

	if (p->family == AF_INET4) {
		/* checksum, source, destination (bytes 10..19 of the header) and maybe the ports */
		struct {
			__be16 check;
			__be32 saddr;
			__be32 daddr;
			__be16 sport;
			__be16 dport;
		} __attribute__((packed)) h;
		__be32 from, to;
		__builtin_memcpy(&from, old_addr, 4);
		__builtin_memcpy(&to, new_addr, 4);
		__builtin_memcpy(&h.saddr, is_src ? new_addr : p->saddr, 4);
		__builtin_memcpy(&h.daddr, is_src ? p->daddr : new_addr, 4);
		h.sport = sport;
		h.dport = dport;
		h.check = csum_replace4(p->ip_csum, from, to);
		if (p->proto != IPPROTO_ICMP &&
		    bpf_l4_csum_replace(skb, csum_off, from, to,
					BPF_F_PSEUDO_HDR | udp_flag | 4) < 0)
			return -DROP_WRITE_ERROR;
		if (ports && store_addr) {
			if (bpf_skb_store_bytes(skb, p->l3_off + 10, &h, sizeof(h), 0) < 0)
				return -DROP_WRITE_ERROR;
			ports_stored = 1;
		} else if (store_addr &&
			   bpf_skb_store_bytes(skb, p->l3_off + 10, &h, sizeof(h) - 4, 0) < 0) {
			return -DROP_WRITE_ERROR;
		}
		p->ip_csum = h.check;
	} else {
		__u32 off = p->l3_off + (is_src ? 8 : 24);
		if (bpf_l4_csum_replace(skb, csum_off, 0, csum_diff16(old_addr, new_addr),
					BPF_F_PSEUDO_HDR | udp_flag) < 0)
			return -DROP_WRITE_ERROR;
		if (store_addr && bpf_skb_store_bytes(skb, off, new_addr, 16, 0) < 0)
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
	if (!ports_stored && bpf_skb_store_bytes(skb, port_off, &to_port, 2, 0) < 0)
		return -DROP_WRITE_ERROR;
	return 0;
}

static __always_inline int nat_rewrite(struct __sk_buff *skb, struct pkt *p, int is_src,
				       const __u8 *new_addr, __u16 old_port, __u16 new_port)
{
	return nat_rewrite_at(skb, p, is_src, new_addr, old_port, new_port, 1);
}

#endif
