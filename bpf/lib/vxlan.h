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
#include <bpf/bpf_helpers.h>

#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4 /* uapi of Linux 6.3, newer than some distributions' */
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#endif

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
#endif
