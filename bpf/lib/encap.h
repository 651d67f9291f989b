/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* VXLAN between nodes (tunnel routing mode), as Cilium's encap.h: the sender's source security
 * identity travels in the VNI, so the receiving node enforces its ingress policy on the real
 * sender with no ipcache guess. The outer packet is IPv4 (the underlay's node IPs); the inner
 * frame may be IPv4 or IPv6. Two ways through a node, one wire format (RFC 7348, UDP 8472):
 * - the common one, without the tunnel device: encap_and_redirect writes the outer headers
 *   itself and sends the packet out of the node's device, and encap_strip takes them off at the
 *   receiving node's device for a local endpoint (bench/vxlanbound.py: the device's path, not
 *   the encapsulation, was what a tunnelled packet cost);
 * - ciliary_vxlan, an external (collect_md) device: the outer header is whatever the program
 *   puts into the skb's tunnel key, and on receive the key (VNI, outer source) is readable by the
 *   program on its tc ingress (bpf_overlay.c). It carries what the first way does not: a packet
 *   before the node knows its next hop's neighbour (the device's own traffic resolves it), and
 *   what arrives for the node itself rather than one of its endpoints. */
#ifndef __CILIARY_ENCAP_H
#define __CILIARY_ENCAP_H
#include "common.h"
#include "config.h"
#include "endpoints.h"
#include "vxlan.h"

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

/* encap_received_fast's packet half (no configuration read, no stack): 0 when the packet cannot
 * be a tunnel packet (not IPv4 UDP as encap_received_fast wants it). */
static __always_inline int encap_maybe(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);

	return (void *)(ip + 1) <= end && eth->h_proto == bpf_htons(ETH_P_IP) &&
	       ip->protocol == IPPROTO_UDP;
}

#define ENCAP_TO_STACK -1 /* encap_strip: not done, the stack's VXLAN socket takes it */

/* encap_and_redirect's working memory, off the stack: its callers' frames already take most of
 * the verifier's 512 bytes. */
struct encap_scratch {
	struct bpf_fib_lookup fib;
	struct bpf_tunnel_key key;
	__u32 tunnel_ep; /* in memory: ciliary_tunnel_direct's key */
	__u32 vni;
	__u32 hash;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct encap_scratch);
	__uint(max_entries, 1);
} ciliary_encap_scratch SEC(".maps");

/* Tunnel endpoints (IPv4, network order) whose route the main table alone gives as the node's ip
 * rules would: agent/fibdirect.py proves it per endpoint from the rules and the local table, and
 * takes an entry out as soon as a change of either could make it untrue. encap_and_redirect
 * looks those up with BPF_FIB_LOOKUP_DIRECT (the rule walk, the local table's lookup included,
 * is most of a lookup's cost: bpf/lib/fib.h); any other endpoint through every rule. */
#define TUNNEL_DIRECT_MAX 16384 /* nodes */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u8);
	__uint(max_entries, TUNNEL_DIRECT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_tunnel_direct SEC(".maps");

/* The outer headers written in front of the frame that bpf_skb_adjust_room made room for: the
 * frame's own Ethernet header becomes the inner one, the outer one goes to the FIB's next hop.
 * Returns 0 or -DROP_WRITE_ERROR. */
static __always_inline int encap_write(struct __sk_buff *skb, const struct encap_scratch *w,
				       __u16 port)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *outer = data + sizeof(*eth);
	struct udphdr *udp = (void *)(outer + 1);
	struct vxlanhdr *vx = (void *)(udp + 1);
	struct ethhdr *inner = (void *)(vx + 1);
	if ((void *)(inner + 1) > end)
		return -DROP_WRITE_ERROR;
	__builtin_memcpy(inner->h_dest, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(inner->h_source, eth->h_source, ETH_ALEN);
	inner->h_proto = eth->h_proto;
	__builtin_memcpy(eth->h_dest, w->fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, w->fib.smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	/* the flow's entropy in the source port, in the kernel's ephemeral range, as the device;
	 * no DF, as the device's default */
	vxlan_write_outer(outer, skb->len - sizeof(*eth), w->fib.ipv4_src, w->tunnel_ep, 0,
			  32768 + (w->hash >> 16) % 28232, port, w->vni);
	return 0;
}

/* Encapsulate towards `tunnel_ep` (an ipcache tunnel endpoint: IPv4, network order) with the
 * sender's identity as VNI. Without the tunnel device when the node's FIB knows the next hop
 * of `tunnel_ep` with its neighbour (bench/vxlanbound.py: the device's path, not the
 * encapsulation, is what a tunnelled packet paid): the outer headers written here with
 * bpf_skb_adjust_room (its encapsulation flags tell GSO where the inner headers are, so a GSO
 * packet stays whole), the outer source and next hop from the FIB (as the device's own route
 * lookup), out of that device, marked MARK_MAGIC_OVERLAY as the device's outer packets are.
 * Otherwise the tunnel device (`device`) with the key in the skb. A global function: verified
 * once, not once per path of its callers. Returns the tc verdict or -DROP_WRITE_ERROR. */
__attribute__((noinline)) int encap_and_redirect(struct __sk_buff *skb, __u32 tunnel_ep,
						 __u32 src_id, __u32 device)
{
	__u32 zero = 0;
	struct encap_scratch *w = bpf_map_lookup_elem(&ciliary_encap_scratch, &zero);
	struct dp_config *cfg = dp_config_get();
	if (!skb || !w)
		return -DROP_WRITE_ERROR;
	__builtin_memset(&w->fib, 0, sizeof(w->fib));
	w->tunnel_ep = tunnel_ep;
	w->vni = src_id & VNI_MASK;
	w->fib.family = AF_INET4;
	w->fib.ifindex = skb->ifindex;
	w->fib.ipv4_dst = tunnel_ep;
	__u32 fib_flags = BPF_FIB_LOOKUP_SRC;
	if (bpf_map_lookup_elem(&ciliary_tunnel_direct, &w->tunnel_ep))
		fib_flags |= BPF_FIB_LOOKUP_DIRECT;
	if (cfg && cfg->tunnel_port &&
	    bpf_fib_lookup(skb, &w->fib, sizeof(w->fib), fib_flags) == BPF_FIB_LKUP_RET_SUCCESS) {
		__u16 port = cfg->tunnel_port;
		w->hash = bpf_get_hash_recalc(skb);
		if (!bpf_skb_adjust_room(skb, ENCAP_HDR_LEN, BPF_ADJ_ROOM_MAC, ENCAP_ROOM_FLAGS)) {
			if (encap_write(skb, w, port) < 0)
				return -DROP_WRITE_ERROR;
			skb->mark = MARK_MAGIC_OVERLAY;
			return bpf_redirect(w->fib.ifindex, 0);
		}
	}
	/* the helper takes the address in host order (it converts with cpu_to_be32) */
	__builtin_memset(&w->key, 0, sizeof(w->key));
	w->key.remote_ipv4 = bpf_ntohl(w->tunnel_ep);
	w->key.tunnel_id = w->vni;
	w->key.tunnel_ttl = TUNNEL_TTL;
	if (bpf_skb_set_tunnel_key(skb, &w->key, sizeof(w->key), BPF_F_ZERO_CSUM_TX) < 0)
		return -DROP_WRITE_ERROR;
	skb->mark = MARK_MAGIC_OVERLAY;
	return bpf_redirect(device, 0);
}

/* The sender's identity of a decapsulated packet from its VNI (`vni`: the VNI, or -DROP_* when
 * it could not be read). A packet the host of the other node sent carries HOST, which is
 * remote-node from here (upstream's rule). Returns 0 or -DROP_*. */
static __always_inline int vni_identity(int vni, __u32 *identity)
{
	if (vni < 0)
		return vni;
	__u32 id = (__u32)vni & VNI_MASK;
	if (id == ID_UNKNOWN)
		return -DROP_INVALID_IDENTITY;
	*identity = id == ID_HOST ? ID_REMOTE_NODE : id;
	return 0;
}

/* The VNI of a packet the tunnel device decapsulated (its tunnel key), or -DROP_NO_TUNNEL_KEY. */
static __always_inline int device_vni(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return -DROP_NO_TUNNEL_KEY;
	return key.tunnel_id & VNI_MASK;
}

/* An outer VXLAN packet at the node's device (encap_received_fast said so) decapsulated here,
 * without the stack's UDP socket and the tunnel device, when its inner frame is for a local
 * endpoint: the headers before the inner network header stripped (bpf_skb_adjust_room), the
 * outer Ethernet header kept with the inner protocol. Returns the VNI, or ENCAP_TO_STACK
 * (anything else: the packet is as it was, for the device's path).
 * A GSO packet (a sender's whole TCP burst, as veth and the bridge carry it) keeps its UDP
 * tunnel GSO type and skb->encapsulation after this: the flag that clears them,
 * BPF_F_ADJ_ROOM_DECAP_L4_UDP, is newer than Linux 6.18 (the tunnel device clears them itself).
 * Harmless where it goes, a local endpoint's socket (the pod's, or the L7 proxy's through
 * bpf_sk_assign) and veths (they take that GSO type whole); a pod that forwarded such a packet
 * in its own kernel onto a device needing software segmentation would not have it segmented
 * right (upstream keeps such packets on the device until the flag is there). */
__attribute__((noinline)) int encap_strip(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct vxlanhdr *vx = data + sizeof(*eth) + sizeof(struct iphdr) + sizeof(struct udphdr);
	struct ethhdr *inner = (void *)(vx + 1);
	__u8 *l3 = (__u8 *)(inner + 1);
	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO;
	struct endpoint_info *dst;

	/* the inner network header whole, as its family has it (an IPv4 one of 20 bytes: a small
	 * packet, a ping's, is shorter than an IPv6 header) */
	if ((void *)l3 > end || !(vx->flags & bpf_htonl(VXLAN_F_VNI)))
		return ENCAP_TO_STACK;
	if (inner->h_proto == bpf_htons(ETH_P_IP)) {
		if ((void *)(l3 + sizeof(struct iphdr)) > end)
			return ENCAP_TO_STACK;
		dst = lookup_endpoint(l3 + 16, AF_INET4);
		flags |= BPF_F_ADJ_ROOM_DECAP_L3_IPV4;
	} else if (inner->h_proto == bpf_htons(ETH_P_IPV6)) {
		if ((void *)(l3 + sizeof(struct ipv6hdr)) > end)
			return ENCAP_TO_STACK;
		dst = lookup_endpoint(l3 + 24, AF_INET6);
		flags |= BPF_F_ADJ_ROOM_DECAP_L3_IPV6;
	} else {
		return ENCAP_TO_STACK;
	}
	if (!dst)
		return ENCAP_TO_STACK;
	int vni = bpf_ntohl(vx->vni) >> 8;
	__be16 proto = inner->h_proto;
	if (bpf_skb_adjust_room(skb, -(int)ENCAP_HDR_LEN, BPF_ADJ_ROOM_MAC, flags))
		return ENCAP_TO_STACK;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return ENCAP_TO_STACK; /* not reached: the packet is longer than before */
	eth->h_proto = proto;
	return vni;
}
#endif
