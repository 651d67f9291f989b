/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Packet parsing into a flat `struct pkt`. The common case (IPv4 / IPv6 TCP/UDP, headers in the
 * linear area) is read with direct packet access; everything else uses bpf_skb_load_bytes so that
 * non-linear skbs (GRO on veth) parse the same as linear ones and the verifier sees bounded
 * copies, not pointer math. Both fill `p` alike. */
#ifndef __CILIARY_PARSE_H
#define __CILIARY_PARSE_H
#include "common.h"

#define PARSE_OK 0
#define PARSE_PASS 1     /* not ours to judge (ARP, ND, multicast): hand to the stack quietly */

struct pkt {
	__u8 saddr[16];
	__u8 daddr[16];
	__u8 smac[6];
	__u8 dmac[6];
	__u16 sport;
	__u16 dport;
	__u32 l3_off;
	__u32 l4_off;
	__u32 len;
	__u8 family;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 ttl;
	__u8 has_l4;
	__u8 has_related;   /* ICMP error: rel_* is the embedded packet's tuple */
	__u8 rel_saddr[16];
	__u8 rel_daddr[16];
	__u16 rel_sport;
	__u16 rel_dport;
	__u8 rel_proto;
	__u8 rel_pad;
	__be16 ip_csum;     /* IPv4: the header checksum as the packet carries it now (lib/rewrite.h
			     * and lib/l3.h keep it current: they update it incrementally) */
};

static __always_inline int icmp_is_error(__u8 proto, __u8 type)
{
	if (proto == IPPROTO_ICMP)
		return type == 3 || type == 11 || type == 12;
	return type >= 1 && type <= 4; /* unreachable, too big, time exceeded, param problem */
}

/* The packet an ICMP error quotes (its IP header and first 4 bytes of L4) identifies the
 * connection the error belongs to; conntrack then treats the error as related. */
static __always_inline void parse_icmp_error(struct __sk_buff *skb, struct pkt *p)
{
	__u32 inner = p->l4_off + 8;
	__u16 ports[2];
	if (p->proto == IPPROTO_ICMP) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, inner, &ip, sizeof(ip)) < 0 || ip.ihl < 5)
			return;
		__builtin_memcpy(p->rel_saddr, &ip.saddr, 4);
		__builtin_memcpy(p->rel_daddr, &ip.daddr, 4);
		p->rel_proto = ip.protocol;
		inner += ip.ihl * 4;
	} else {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, inner, &ip6, sizeof(ip6)) < 0)
			return;
		__builtin_memcpy(p->rel_saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->rel_daddr, &ip6.daddr, 16);
		p->rel_proto = ip6.nexthdr;
		inner += sizeof(ip6);
	}
	if (p->rel_proto != IPPROTO_TCP && p->rel_proto != IPPROTO_UDP &&
	    p->rel_proto != IPPROTO_SCTP)
		return;
	if (bpf_skb_load_bytes(skb, inner, ports, sizeof(ports)) < 0)
		return;
	p->rel_sport = bpf_ntohs(ports[0]);
	p->rel_dport = bpf_ntohs(ports[1]);
	p->has_related = 1;
}

static __always_inline int parse_l4(struct __sk_buff *skb, struct pkt *p)
{
	p->has_l4 = 1;
	switch (p->proto) {
	case IPPROTO_TCP: {
		struct tcphdr th;
		if (bpf_skb_load_bytes(skb, p->l4_off, &th, sizeof(th)) < 0)
			return -DROP_CT_INVALID_HDR;
		p->sport = bpf_ntohs(th.source);
		p->dport = bpf_ntohs(th.dest);
		/* byte 13 of the TCP header holds CWR..FIN in wire order */
		p->tcp_flags = ((__u8 *)&th)[13];
		return PARSE_OK;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		/* SCTP and UDP both start with source and destination port */
		__u16 ports[2];
		if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)) < 0)
			return -DROP_CT_INVALID_HDR;
		p->sport = bpf_ntohs(ports[0]);
		p->dport = bpf_ntohs(ports[1]);
		return PARSE_OK;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		__u8 hdr[8];
		if (bpf_skb_load_bytes(skb, p->l4_off, hdr, sizeof(hdr)) < 0)
			return -DROP_CT_INVALID_HDR;
		p->icmp_type = hdr[0];
		p->icmp_code = hdr[1];
		__u16 id = ((__u16)hdr[4] << 8) | hdr[5];
		/* Echo request carries the id as "source port", the reply as "destination port":
		 * the reply's reversed tuple is then the request's tuple. */
		if ((p->proto == IPPROTO_ICMP && p->icmp_type == ICMP_ECHO) ||
		    (p->proto == IPPROTO_ICMPV6 && p->icmp_type == ICMPV6_ECHO_REQUEST)) {
			p->sport = id;
			p->dport = 0;
		} else if ((p->proto == IPPROTO_ICMP && p->icmp_type == ICMP_ECHOREPLY) ||
			   (p->proto == IPPROTO_ICMPV6 && p->icmp_type == ICMPV6_ECHO_REPLY)) {
			p->sport = 0;
			p->dport = id;
		}
		if (p->proto == IPPROTO_ICMPV6 &&
		    ((p->icmp_type >= 130 && p->icmp_type <= 137) || p->icmp_type == 143))
			return PARSE_PASS; /* MLD and neighbour discovery belong to the stack */
		if (icmp_is_error(p->proto, p->icmp_type))
			parse_icmp_error(skb, p);
		return PARSE_OK;
	}
	default:
		p->has_l4 = 0;
		return PARSE_OK;
	}
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, struct pkt *p)
{
	struct iphdr ip;
	if (bpf_skb_load_bytes(skb, p->l3_off, &ip, sizeof(ip)) < 0)
		return -DROP_INVALID;
	if (ip.ihl < 5)
		return -DROP_INVALID;
	p->family = AF_INET4;
	__builtin_memcpy(p->saddr, &ip.saddr, 4);
	__builtin_memcpy(p->daddr, &ip.daddr, 4);
	p->proto = ip.protocol;
	p->ttl = ip.ttl;
	p->ip_csum = ip.check;
	p->l4_off = p->l3_off + ip.ihl * 4;
	if ((bpf_ntohl(ip.daddr) >> 28) == 0xe || ip.daddr == 0xffffffff)
		return PARSE_PASS; /* multicast / broadcast */
	if (bpf_ntohs(ip.frag_off) & 0x1fff)
		return PARSE_OK;   /* non-first fragment: no L4 header to read */
	return parse_l4(skb, p);
}

static __always_inline int parse_ipv6(struct __sk_buff *skb, struct pkt *p)
{
	struct ipv6hdr ip6;
	if (bpf_skb_load_bytes(skb, p->l3_off, &ip6, sizeof(ip6)) < 0)
		return -DROP_INVALID;
	p->family = AF_INET6;
	__builtin_memcpy(p->saddr, &ip6.saddr, 16);
	__builtin_memcpy(p->daddr, &ip6.daddr, 16);
	p->ttl = ip6.hop_limit;
	__u8 nexthdr = ip6.nexthdr;
	__u32 off = p->l3_off + sizeof(ip6);
	if (ip6.daddr.in6_u.u6_addr8[0] == 0xff) {
		p->proto = nexthdr;
		return PARSE_PASS; /* multicast */
	}
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u8 opt[2];
		if (nexthdr == 0 || nexthdr == 43 || nexthdr == 60 || nexthdr == 51) {
			if (bpf_skb_load_bytes(skb, off, opt, sizeof(opt)) < 0)
				return -DROP_INVALID;
			nexthdr = opt[0];
			off += nexthdr == 51 ? (opt[1] + 2) * 4 : (opt[1] + 1) * 8;
		} else if (nexthdr == 44) {
			__u8 frag[8];
			if (bpf_skb_load_bytes(skb, off, frag, sizeof(frag)) < 0)
				return -DROP_INVALID;
			nexthdr = frag[0];
			off += 8;
			if ((((__u16)frag[2] << 8) | frag[3]) & 0xfff8) {
				p->proto = nexthdr;
				p->l4_off = off;
				return PARSE_OK; /* non-first fragment */
			}
		} else {
			break;
		}
	}
	p->proto = nexthdr;
	p->l4_off = off;
	return parse_l4(skb, p);
}

/* The common case read straight from the packet (direct packet access: no helper call per
 * header): IPv4 without options, not a later fragment, unicast, TCP or UDP, all of it in the
 * skb's linear area. Fills `p` as the general path would and returns 1; 0 leaves `p` untouched
 * for the general path (bpf_skb_load_bytes), which handles everything else. */
static __always_inline int parse_fast_ipv4(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	__u8 *l4 = (__u8 *)(ip + 1);

	if ((void *)(l4 + 8) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    (ip->frag_off & bpf_htons(0x1fff)))
		return 0;
	__u32 daddr = bpf_ntohl(ip->daddr);
	if ((daddr >> 28) == 0xe || daddr == 0xffffffff)
		return 0;
	if (ip->protocol == IPPROTO_TCP) {
		if ((void *)(l4 + 20) > end)
			return 0;
		p->tcp_flags = l4[13];
	} else if (ip->protocol != IPPROTO_UDP) {
		return 0;
	}
	__builtin_memcpy(p->smac, eth->h_source, 6);
	__builtin_memcpy(p->dmac, eth->h_dest, 6);
	p->len = skb->len;
	p->l3_off = sizeof(*eth);
	p->family = AF_INET4;
	__builtin_memcpy(p->saddr, &ip->saddr, 4);
	__builtin_memcpy(p->daddr, &ip->daddr, 4);
	p->proto = ip->protocol;
	p->ttl = ip->ttl;
	p->ip_csum = ip->check;
	p->l4_off = sizeof(*eth) + sizeof(*ip);
	p->has_l4 = 1;
	p->sport = ((__u16)l4[0] << 8) | l4[1];
	p->dport = ((__u16)l4[2] << 8) | l4[3];
	return 1;
}

/* The same for IPv6 without extension headers, unicast, TCP or UDP. */
static __always_inline int parse_fast_ipv6(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = data + sizeof(*eth);
	__u8 *l4 = (__u8 *)(ip6 + 1);

	if ((void *)(l4 + 8) > end || eth->h_proto != bpf_htons(ETH_P_IPV6) ||
	    ip6->daddr.in6_u.u6_addr8[0] == 0xff)
		return 0;
	if (ip6->nexthdr == IPPROTO_TCP) {
		if ((void *)(l4 + 20) > end)
			return 0;
		p->tcp_flags = l4[13];
	} else if (ip6->nexthdr != IPPROTO_UDP) {
		return 0;
	}
	__builtin_memcpy(p->smac, eth->h_source, 6);
	__builtin_memcpy(p->dmac, eth->h_dest, 6);
	p->len = skb->len;
	p->l3_off = sizeof(*eth);
	p->family = AF_INET6;
	__builtin_memcpy(p->saddr, &ip6->saddr, 16);
	__builtin_memcpy(p->daddr, &ip6->daddr, 16);
	p->proto = ip6->nexthdr;
	p->ttl = ip6->hop_limit;
	p->l4_off = sizeof(*eth) + sizeof(*ip6);
	p->has_l4 = 1;
	p->sport = ((__u16)l4[0] << 8) | l4[1];
	p->dport = ((__u16)l4[2] << 8) | l4[3];
	return 1;
}

/* Returns PARSE_OK, PARSE_PASS, or -DROP_* */
static __always_inline int parse_packet(struct __sk_buff *skb, struct pkt *p)
{
	if (parse_fast_ipv4(skb, p) || parse_fast_ipv6(skb, p))
		return PARSE_OK;
	struct ethhdr eth;
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return -DROP_INVALID;
	__builtin_memcpy(p->smac, eth.h_source, 6);
	__builtin_memcpy(p->dmac, eth.h_dest, 6);
	p->len = skb->len;
	p->l3_off = sizeof(eth);
	switch (bpf_ntohs(eth.h_proto)) {
	case ETH_P_IP:
		return parse_ipv4(skb, p);
	case ETH_P_IPV6:
		return parse_ipv6(skb, p);
	case ETH_P_ARP:
		return PARSE_PASS;
	default:
		return -DROP_UNKNOWN_L3;
	}
}
#endif
