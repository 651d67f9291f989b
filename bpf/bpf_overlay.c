/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Program of the node's tunnel device (ciliary_vxlan), as Cilium's bpf_overlay.c:
 *   tc ingress  cil_from_overlay: packets other nodes' pods sent through the tunnel, already
 *               decapsulated by the VXLAN driver. The sender's identity is the VNI (bpf_lxc of
 *               the sending node put it there), never an ipcache guess from the inner source.
 *               To a local endpoint: conntrack, that endpoint's ingress policy with the VNI's
 *               identity (replies of its own connections pass on conntrack), L2 rewrite and
 *               bpf_redirect_peer, as local pod-to-pod delivery. Anything else (the node's own
 *               addresses: replies to its own connections, which cil_from_host tunnelled) goes
 *               to the node's stack, as a packet for this host: the inner frame still carries
 *               the sending node's MACs, which the stack would discard as another host's.
 *               A frame for a local endpoint rarely comes this way: bpf_host's cil_from_netdev
 *               decapsulates those itself and runs the same from_overlay (lib/overlay.h); the
 *               device sees what the sending node sent before it knew its neighbour.
 * It shares the node's pinned maps with bpf_lxc (conntrack, endpoints, policy, events), so a
 * connection is one conntrack entry whichever object saw which of its packets. */
#include "lib/common.h"
#include "lib/config.h"
#include "lib/parse.h"
#include "lib/endpoints.h"
#include "lib/ipcache.h"
#include "lib/conntrack.h"
#include "lib/events.h"
#include "lib/policy.h"
#include "lib/deliver.h"
#include "lib/encap.h"
#include "lib/overlay.h"

SEC("tc")
int cil_from_overlay(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct deliver_to to = {};
	int ret = from_overlay(skb, &p, device_vni(skb), &to);
	if (ret == DELIVER_TAIL)
		ret = deliver_tail(skb, &p, to.entry, to.dst);
	if (ret == PROXY_TAIL)
		return to_proxy(skb, &p);
	return ret;
}

char __license[] SEC("license") = "Dual BSD/GPL";
