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

/* ifindex of the tunnel device when the agent configured tunnel routing, else 0. */
static __always_inline __u32 encap_ifindex(void)
{
	struct dp_config *cfg = dp_config_get();
	if (!cfg || cfg->routing_mode != ROUTING_MODE_TUNNEL)
		return 0;
	return cfg->tunnel_ifindex;
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
