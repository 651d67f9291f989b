/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* VXLAN between nodes (tunnel routing mode), as Cilium's encap.h: the sender's source security
 * identity travels in the VNI, so the receiving node enforces its ingress policy on the real
 * sender with no ipcache guess. ciliary_vxlan is an external (collect_md) device: the outer
 * header is whatever the program puts into the skb's tunnel key, and on receive the key (VNI,
 * outer source) is readable by the program on its tc ingress. The outer packet is IPv4 (the
 * underlay's node IPs); the inner frame may be IPv4 or IPv6. */
#ifndef __CILIARY_ENCAP_H
#define __CILIARY_ENCAP_H
#include "common.h"
#include "config.h"

#define TUNNEL_TTL 64      /* IPDEFTTL, as upstream's outer header */
#define VNI_MASK 0xffffff  /* a VXLAN network identifier has 24 bits */
/* skb->mark of an encapsulated packet (upstream's MARK_MAGIC_OVERLAY, under lib/proxy.h's
 * MARK_MAGIC_HOST_MASK with the proxy marks): the VXLAN driver keeps the mark of the packet it
 * wraps (same netns: skb_scrub_packet leaves it), so the node device's egress program knows an
 * outer packet without parsing it; the veth into the lab network clears it. No ip rule of the
 * node matches it (the proxy's is 0x200/0xf00). */
#define MARK_MAGIC_OVERLAY 0x0400

/* ifindex of the tunnel device when the agent configured tunnel routing, else 0. */
static __always_inline __u32 encap_ifindex(void)
{
	struct dp_config *cfg = dp_config_get();
	if (!cfg || cfg->routing_mode != ROUTING_MODE_TUNNEL)
		return 0;
	return cfg->tunnel_ifindex;
}

/* In tunnel mode, whether `dport` (host order) is the tunnel's UDP port. */
static __always_inline int encap_port(__u16 dport)
{
	struct dp_config *cfg = dp_config_get();
	return cfg && cfg->routing_mode == ROUTING_MODE_TUNNEL && cfg->tunnel_port &&
	       dport == cfg->tunnel_port;
}

/* Whether `p`, parsed on the node's device, is an outer VXLAN packet another node sent this
 * one: UDP to the tunnel port, in tunnel mode. The port belongs to the kernel's VXLAN socket,
 * which decapsulates it for cil_from_overlay: no NodePort frontend, NAT port (lib/nat.h's are
 * 32768 and up) or endpoint of this node is there, so bpf_host leaves it to the stack. */
static __always_inline int encap_received(const struct pkt *p)
{
	return p->proto == IPPROTO_UDP && p->has_l4 && encap_port(p->dport);
}

/* encap_received read straight from the packet, before anything is parsed (no struct pkt to
 * clear, no call): Ethernet, IPv4 without options, not a later fragment, UDP to the tunnel
 * port, in tunnel mode. Whatever it answers 1 for, the full parse would have found the same and
 * the caller left it to the stack just the same; 0 means "parse and decide as ever". */
static __always_inline int encap_received_fast(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	__u8 *l4 = (__u8 *)(ip + 1);

	if ((void *)(l4 + 4) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(0x1fff)))
		return 0;
	return encap_port(((__u16)l4[2] << 8) | l4[3]);
}

/* Encapsulate towards `tunnel_ep` (an ipcache tunnel endpoint: IPv4, network order) with the
 * sender's identity as VNI and hand the packet to the tunnel device's egress. Returns the tc
 * verdict, or -DROP_WRITE_ERROR when the key could not be set. */
static __always_inline int encap_and_redirect(struct __sk_buff *skb, __u32 tunnel_ep,
					      __u32 src_id, __u32 ifindex)
{
	struct bpf_tunnel_key key = {};
	/* the helper takes the address in host order (it converts with cpu_to_be32) */
	key.remote_ipv4 = bpf_ntohl(tunnel_ep);
	key.tunnel_id = src_id & VNI_MASK;
	key.tunnel_ttl = TUNNEL_TTL;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return -DROP_WRITE_ERROR;
	skb->mark = MARK_MAGIC_OVERLAY;
	return bpf_redirect(ifindex, 0);
}

/* The sender's identity of a decapsulated packet: its VNI. A packet the host of the other node
 * sent carries HOST, which is remote-node from here (upstream's rule). Returns 0 or -DROP_*. */
static __always_inline int decap_identity(struct __sk_buff *skb, __u32 *identity)
{
	struct bpf_tunnel_key key = {};
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return -DROP_NO_TUNNEL_KEY;
	__u32 id = key.tunnel_id & VNI_MASK;
	if (id == ID_UNKNOWN)
		return -DROP_INVALID_IDENTITY;
	*identity = id == ID_HOST ? ID_REMOTE_NODE : id;
	return 0;
}
#endif
