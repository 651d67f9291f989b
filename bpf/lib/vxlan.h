/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The VXLAN wire format (RFC 7348) as a tc program writes and strips it: the header, what the
 * outer packet adds in front of the inner frame's network header, bpf_skb_adjust_room's flags
 * for it, the outer IPv4 header's checksum. Only uapi headers: lib/encap.h (the datapath's
 * tunnel) and bench/vxlanbound.c (the bench's bound without ciliary) both include it. */
#ifndef __CILIARY_VXLAN_H
#define __CILIARY_VXLAN_H
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4 /* uapi of Linux 6.3, newer than some distributions' */
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#endif

#define TUNNEL_TTL 64 /* IPDEFTTL, as the device's and upstream's outer header */

struct vxlanhdr {
	__be32 flags;
	__be32 vni;
};

#define VXLAN_F_VNI 0x08000000 /* the I flag: the VNI is valid (RFC 7348) */
/* What the outer packet adds before the inner frame's network header: outer IPv4, UDP, VXLAN
 * and the inner Ethernet header (the outer Ethernet header is the frame's own, rewritten). */
#define ENCAP_HDR_LEN                                                                      \
	(sizeof(struct iphdr) + sizeof(struct udphdr) + sizeof(struct vxlanhdr) +          \
	 sizeof(struct ethhdr))
/* bpf_skb_adjust_room's flags for that room: the encapsulation's layers, so that GSO knows where
 * the inner headers are and a GSO packet stays whole; its segment size unchanged. */
#define ENCAP_ROOM_FLAGS                                                                   \
	(BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |                       \
	 BPF_F_ADJ_ROOM_ENCAP_L2_ETH | BPF_F_ADJ_ROOM_ENCAP_L2(sizeof(struct ethhdr)) |       \
	 BPF_F_ADJ_ROOM_FIXED_GSO)

/* The checksum of an IPv4 header of 20 bytes (`words`: its ten 16-bit words, the checksum's 0). */
static __always_inline __u16 ipv4_header_csum(const __u16 *words)
{
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += words[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* The outer IPv4, UDP and VXLAN headers behind a frame's outer Ethernet header (`outer`: where
 * the IPv4 header goes; the caller checked that all three fit): `total` the length from there
 * on, the addresses in network order, `frag_off` (network order) the DF bit or 0, TUNNEL_TTL, the
 * UDP source port `sport` (the flow's entropy) and destination `dport` (host order), no UDP
 * checksum (as the kernel's device with BPF_F_ZERO_CSUM_TX), the VNI `vni`. */
static __always_inline void vxlan_write_outer(struct iphdr *outer, __u16 total, __be32 saddr,
					      __be32 daddr, __be16 frag_off, __u16 sport,
					      __u16 dport, __u32 vni)
{
	struct udphdr *udp = (void *)(outer + 1);
	struct vxlanhdr *vx = (void *)(udp + 1);
	outer->version = 4;
	outer->ihl = 5;
	outer->tos = 0;
	outer->tot_len = bpf_htons(total);
	outer->id = 0;
	outer->frag_off = frag_off;
	outer->ttl = TUNNEL_TTL;
	outer->protocol = IPPROTO_UDP;
	outer->check = 0;
	outer->saddr = saddr;
	outer->daddr = daddr;
	outer->check = ipv4_header_csum((const __u16 *)outer);
	udp->source = bpf_htons(sport);
	udp->dest = bpf_htons(dport);
	udp->len = bpf_htons(total - sizeof(*outer));
	udp->check = 0;
	vx->flags = bpf_htonl(VXLAN_F_VNI);
	vx->vni = bpf_htonl(vni << 8);
}
#endif
