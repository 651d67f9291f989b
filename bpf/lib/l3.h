/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Acting as the pod's router: new L2 header towards the next hop and one less TTL/hop limit. */
#ifndef __CILIARY_L3_H
#define __CILIARY_L3_H
#include "common.h"
#include "parse.h"
#include "rewrite.h"

#define IPV4_TTL_OFF 8
#define IPV6_HOPLIMIT_OFF 7

/* One less TTL / hop limit. IPv4: TTL, protocol and the header checksum (computed here from
 * p->ip_csum, which follows) in one store. */
static __always_inline int l3_dec_ttl(struct __sk_buff *skb, struct pkt *p)
{
	if (p->ttl <= 1)
		return -DROP_TTL_EXCEEDED;
	__u8 ttl = p->ttl - 1;
	if (p->family == AF_INET4) {
		/* TTL and protocol share one 16-bit word of the header checksum */
		struct {
			__u8 ttl;
			__u8 proto;
			__be16 check;
		} h = {.ttl = ttl, .proto = p->proto};
		__u16 old = bpf_htons(((__u16)p->ttl << 8) | p->proto);
		__u16 new = bpf_htons(((__u16)ttl << 8) | p->proto);
		h.check = csum_replace2(p->ip_csum, old, new);
		if (bpf_skb_store_bytes(skb, p->l3_off + IPV4_TTL_OFF, &h, sizeof(h), 0) < 0)
			return -DROP_WRITE_ERROR;
		p->ip_csum = h.check;
	} else {
		if (bpf_skb_store_bytes(skb, p->l3_off + IPV6_HOPLIMIT_OFF, &ttl, 1, 0) < 0)
			return -DROP_WRITE_ERROR;
	}
	return 0;
}

/* l3_dec_ttl for a packet whose new source nat_rewrite_at left unwritten (store_addr 0): the
 * TTL, the header checksum and the source in one store (IPv4: bytes 8..15, with the destination
 * and the source port when they follow; IPv6: the hop limit and the source, bytes 7..23). A packet that may not be forwarded gets its source all the same
 * (its drop event shows what it was). */
static __always_inline int l3_dec_ttl_src(struct __sk_buff *skb, struct pkt *p)
{
	__u8 ttl = p->ttl > 1 ? p->ttl - 1 : p->ttl;
	if (p->family == AF_INET4) {
		/* with the destination and the source port when they follow (ipv4_ports_follow) */
		struct {
			__u8 ttl;
			__u8 proto;
			__be16 check;
			__be32 saddr;
			__be32 daddr;
			__be16 sport;
		} __attribute__((packed)) h = {.ttl = ttl, .proto = p->proto};
		__u16 old = bpf_htons(((__u16)p->ttl << 8) | p->proto);
		__u16 new = bpf_htons(((__u16)ttl << 8) | p->proto);
		h.check = csum_replace2(p->ip_csum, old, new);
		__builtin_memcpy(&h.saddr, p->saddr, 4);
		__builtin_memcpy(&h.daddr, p->daddr, 4);
		h.sport = bpf_htons(p->sport);
		int ret = ipv4_ports_follow(p)
				  ? bpf_skb_store_bytes(skb, p->l3_off + IPV4_TTL_OFF, &h, sizeof(h), 0)
				  : bpf_skb_store_bytes(skb, p->l3_off + IPV4_TTL_OFF, &h, 8, 0);
		if (ret < 0)
			return -DROP_WRITE_ERROR;
		p->ip_csum = h.check;
	} else {
		struct {
			__u8 hop_limit;
			__u8 saddr[16];
		} __attribute__((packed)) h = {.hop_limit = ttl};
		__builtin_memcpy(h.saddr, p->saddr, 16);
		if (bpf_skb_store_bytes(skb, p->l3_off + IPV6_HOPLIMIT_OFF, &h, sizeof(h), 0) < 0)
			return -DROP_WRITE_ERROR;
	}
	return p->ttl > 1 ? 0 : -DROP_TTL_EXCEEDED;
}

/* The Ethernet destination and source, adjacent: one store. */
static __always_inline int l2_rewrite(struct __sk_buff *skb, const __u8 *dmac, const __u8 *smac)
{
	__u8 macs[12];
	__builtin_memcpy(macs, dmac, 6);
	__builtin_memcpy(macs + 6, smac, 6);
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0) < 0)
		return -DROP_WRITE_ERROR;
	return 0;
}

/* One less TTL / hop limit written straight into the network header at `l3`, in the packet
 * (the caller checked that a struct iphdr's bytes are there; IPv6's hop limit is within them),
 * IPv4's checksum updated from p->ip_csum, which follows. */
static __always_inline void l3_write_ttl(__u8 *l3, struct pkt *p)
{
	__u8 ttl = p->ttl - 1;
	if (p->family == AF_INET4) {
		struct iphdr *ip = (struct iphdr *)l3;
		__u16 old = bpf_htons(((__u16)p->ttl << 8) | p->proto);
		__u16 new = bpf_htons(((__u16)ttl << 8) | p->proto);
		p->ip_csum = csum_replace2(p->ip_csum, old, new);
		ip->ttl = ttl;
		ip->check = p->ip_csum;
	} else {
		((struct ipv6hdr *)l3)->hop_limit = ttl;
	}
}

/* l3_dec_ttl and l2_rewrite together, written straight into the packet (direct packet access:
 * no helper call; the verifier's prologue makes a cloned skb's header writable first, as
 * bpf_skb_store_bytes would) when the Ethernet and IP headers are in the linear area, as
 * parse_fast_ipv4/6 read them; otherwise the two stores. (The prologue's pull failing, out of
 * memory, drops the packet without a drop event; the stores would have reported
 * DROP_WRITE_ERROR.) */
static __always_inline int l3_forward(struct __sk_buff *skb, struct pkt *p, const __u8 *dmac,
				      const __u8 *smac)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u8 *l3 = data + ETH_HLEN;

	if (p->l3_off != ETH_HLEN || (void *)(l3 + sizeof(struct iphdr)) > end) {
		int ret = l3_dec_ttl(skb, p);
		return ret ? ret : l2_rewrite(skb, dmac, smac);
	}
	if (p->ttl <= 1)
		return -DROP_TTL_EXCEEDED;
	l3_write_ttl(l3, p);
	__builtin_memcpy(data, dmac, 6);
	__builtin_memcpy(data + 6, smac, 6);
	return 0;
}
#endif
