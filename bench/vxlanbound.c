// SPDX-License-Identifier: GPL-2.0
/* bench/vxlanbound.py's setup e: VXLAN between two node namespaces done by tc programs alone,
 * with no vxlan device on the path. Compiled at bench time once per node, its addresses, MACs
 * and devices as constants. On the pod's node-side veth (tc ingress), `enc` wraps a packet for
 * the other node's pod /24 in outer Ethernet/IPv4/UDP (8472)/VXLAN headers with
 * bpf_skb_adjust_room (the ENCAP flags tell GSO where the inner headers are) and redirects it
 * out of the node's eth0; on eth0 (tc ingress), `dec` strips them and redirects the inner
 * packet into the local pod (bpf_redirect_peer). What this does not have to do that a vxlan
 * device does: the route and neighbour lookups of the outer packet, the UDP socket lookup and
 * vxlan_rcv on receive, the second pass through the stack as the vxlan device's packet. With
 * INNER_DMAC defined, `enc` alone runs and the other node's vxlan device receives (setup
 * "half tx"); setup "half rx" runs `dec` alone under vxlan devices that send. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lib/vxlan.h" /* the wire format, as the datapath writes it */

#define PROTO_UDP 17
#define VXLAN_PORT 8472

SEC("tc")
int enc(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if ((ip->daddr & bpf_htonl(0xffffff00)) != bpf_htonl(REMOTE_NET))
		return TC_ACT_OK; /* not for the other node's pods */
	__u32 hash = bpf_get_hash_recalc(skb);
	if (bpf_skb_adjust_room(skb, ENCAP_HDR_LEN, BPF_ADJ_ROOM_MAC, ENCAP_ROOM_FLAGS))
		return TC_ACT_SHOT;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	struct iphdr *outer = data + sizeof(*eth);
	struct udphdr *udp = (void *)(outer + 1);
	struct vxlanhdr *vx = (void *)(udp + 1);
	struct ethhdr *inner = (void *)(vx + 1);
	if ((void *)(inner + 1) > end)
		return TC_ACT_SHOT;
#ifdef INNER_DMAC /* the receiving node's vxlan device decapsulates (half tx) */
	__u8 idmac[ETH_ALEN] = INNER_DMAC;
	__builtin_memcpy(inner->h_dest, idmac, ETH_ALEN);
#else
	__builtin_memcpy(inner->h_dest, eth->h_dest, ETH_ALEN);
#endif
	__builtin_memcpy(inner->h_source, eth->h_source, ETH_ALEN);
	inner->h_proto = bpf_htons(ETH_P_IP);
	__u8 smac[ETH_ALEN] = LOCAL_MAC, dmac[ETH_ALEN] = REMOTE_MAC;
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	/* DF; the flow's entropy in the source port, as vxlan's */
	vxlan_write_outer(outer, skb->len - sizeof(*eth), bpf_htonl(LOCAL_IP), bpf_htonl(REMOTE_IP),
			  bpf_htons(0x4000), 49152 | (hash & 0x3fff), VXLAN_PORT, VNI);
	return bpf_redirect(UNDERLAY_IFINDEX, 0);
}

SEC("tc")
int dec(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    ip->protocol != PROTO_UDP || ip->ihl != 5 || udp->dest != bpf_htons(VXLAN_PORT))
		return TC_ACT_OK;
	struct ethhdr *in = (void *)(udp + 1) + sizeof(struct vxlanhdr);
	if ((void *)(in + 1) > end || in->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK; /* ARP between vxlan devices (half rx): theirs */
	if (bpf_skb_adjust_room(skb, -(int)ENCAP_HDR_LEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_DECAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO))
		return TC_ACT_SHOT;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return TC_ACT_SHOT;
	__u8 smac[ETH_ALEN] = LXC_MAC, dmac[ETH_ALEN] = POD_MAC;
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	return bpf_redirect_peer(LXC_IFINDEX, 0);
}

char _license[] SEC("license") = "GPL";
