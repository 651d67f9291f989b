/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The proxy's listener for a redirected connection whose SYN the kernel itself resolves
 * (BPF_PROG_TYPE_SK_LOOKUP on the node's network namespace, datapath/sklookup.py): run by the
 * kernel's TCP/UDP listener lookup, which for a redirected connection happens in one case only.
 * lib/proxy.h hands a redirected packet to its socket with bpf_sk_assign at tc ingress, except
 * when the socket of its tuple is a TIME_WAIT one (the proxy closed the previous connection of
 * that tuple first, as Envoy does after `Connection: close`, and the client reuses the port):
 * assigning the SYN to it would answer with the old connection's ACK, and assigning it to the
 * listener makes the kernel refuse the request socket as a duplicate of the TIME_WAIT one in
 * the established hash (the SYN is dropped). Delivered unassigned, the SYN takes the kernel's
 * own TIME_WAIT path (tcp_timewait_state_process: TCP_TW_SYN), which ends the TIME_WAIT socket
 * once a listener for the packet's destination is found: the destination is the pod's address
 * and port, where nothing listens in the node netns, so this program names the proxy's.
 *
 * Which proxy: the connection's conntrack entry (the tc program that decided the redirect
 * marked it CT_F_PROXY_REDIRECT with the proxy's port, lib/proxy.h) keyed by the lookup's tuple
 * as the packet travels (remote = client, local = destination). The listener: the proxy's
 * socket of that port and family in ciliary_proxy_socks. A redirected connection whose proxy
 * has no socket there (not listening yet, restarting) gets no listener (SK_DROP: never the
 * node's own listener of the destination port); any other lookup is left to the kernel. */
#include "lib/common.h"
#include "lib/conntrack.h"
#include "lib/proxysock.h"

SEC("sk_lookup")
int cil_sk_lookup(struct bpf_sk_lookup *ctx)
{
	struct proxy_sock_key sk_key = {};
	struct ct_key k = {};
	struct ct_entry *e;
	struct bpf_sock *sk;
	long err;

	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	if (ctx->family == AF_INET4) {
		__u32 remote = ctx->remote_ip4, local = ctx->local_ip4;
		__builtin_memcpy(k.saddr, &remote, 4);
		__builtin_memcpy(k.daddr, &local, 4);
	} else if (ctx->family == AF_INET6) {
		__u32 remote[4], local[4];
		remote[0] = ctx->remote_ip6[0];
		remote[1] = ctx->remote_ip6[1];
		remote[2] = ctx->remote_ip6[2];
		remote[3] = ctx->remote_ip6[3];
		local[0] = ctx->local_ip6[0];
		local[1] = ctx->local_ip6[1];
		local[2] = ctx->local_ip6[2];
		local[3] = ctx->local_ip6[3];
		__builtin_memcpy(k.saddr, remote, 16);
		__builtin_memcpy(k.daddr, local, 16);
	} else {
		return SK_PASS;
	}
	k.sport = bpf_ntohs(ctx->remote_port);
	k.dport = ctx->local_port;
	k.proto = IPPROTO_TCP;
	k.family = ctx->family;
	e = bpf_map_lookup_elem(&ciliary_ct, &k);
	if (!e || !(e->flags & CT_F_PROXY_REDIRECT) || !e->proxy_port)
		return SK_PASS;
	sk_key.port = bpf_ntohs(e->proxy_port);
	sk_key.family = ctx->family;
	sk = bpf_map_lookup_elem(&ciliary_proxy_socks, &sk_key);
	if (!sk)
		return SK_DROP;
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return err ? SK_DROP : SK_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
