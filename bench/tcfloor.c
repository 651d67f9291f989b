// SPDX-License-Identifier: GPL-2.0
/* The datapath group's "tc floor" (bench/datapath.py): what a node-side veth's tc ingress hook
 * and bpf_redirect_peer cost without ciliary's program. Compiled at bench time once per
 * direction, with the peer device and the MACs as constants (MAC_W0..2: the destination and
 * source MACs' 12 bytes as three native-order words, immediates rather than a .rodata copy):
 * one store of the two MACs (as bpf_lxc's local delivery writes them), then straight into the
 * other pod's eth0. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int tc_floor(struct __sk_buff *skb)
{
	volatile __u32 macs[3];
	macs[0] = MAC_W0;
	macs[1] = MAC_W1;
	macs[2] = MAC_W2;
	bpf_skb_store_bytes(skb, 0, (void *)macs, sizeof(macs), 0);
	return bpf_redirect_peer(PEER_IFINDEX, 0);
}

char _license[] SEC("license") = "GPL";
