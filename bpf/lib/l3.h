/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Acting as the pod's router: new L2 header towards the next hop and one less TTL/hop limit. */
#ifndef __CILIARY_L3_H
#define __CILIARY_L3_H
#include "common.h"
#include "parse.h"

#define IPV4_TTL_OFF 8
#define IPV4_CSUM_OFF 10
#define IPV6_HOPLIMIT_OFF 7

static __always_inline int l3_dec_ttl(struct __sk_buff *skb, const struct pkt *p)
{
	if (p->ttl <= 1)
		return -DROP_TTL_EXCEEDED;
	__u8 ttl = p->ttl - 1;
	if (p->family == AF_INET4) {
		/* TTL and protocol share one 16-bit word of the header checksum */
		__u16 old = bpf_htons(((__u16)p->ttl << 8) | p->proto);
		__u16 new = bpf_htons(((__u16)ttl << 8) | p->proto);
		if (bpf_l3_csum_replace(skb, p->l3_off + IPV4_CSUM_OFF, old, new, 2) < 0)
			return -DROP_WRITE_ERROR;
		if (bpf_skb_store_bytes(skb, p->l3_off + IPV4_TTL_OFF, &ttl, 1, 0) < 0)
			return -DROP_WRITE_ERROR;
	} else {
		if (bpf_skb_store_bytes(skb, p->l3_off + IPV6_HOPLIMIT_OFF, &ttl, 1, 0) < 0)
			return -DROP_WRITE_ERROR;
	}
	return 0;
}

static __always_inline int l2_rewrite(struct __sk_buff *skb, const __u8 *dmac, const __u8 *smac)
{
	if (bpf_skb_store_bytes(skb, 0, dmac, 6, 0) < 0)
		return -DROP_WRITE_ERROR;
	if (bpf_skb_store_bytes(skb, 6, smac, 6, 0) < 0)
		return -DROP_WRITE_ERROR;
	return 0;
}
#endif
