/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The node's L7 proxies' listening sockets, by (port, family), for bpf_sk_lookup.c: the agent
 * puts them in (agent/proxysockets.py: Envoy's listeners, taken from its process with
 * pidfd_getfd), the kernel takes a socket out when it closes, so an entry is always a live
 * listener. A SOCKHASH because sk_lookup can only select a socket it finds in a socket map. */
#ifndef __CILIARY_PROXYSOCK_H
#define __CILIARY_PROXYSOCK_H
#include "common.h"

struct proxy_sock_key {
	__u16 port;   /* the proxy's port, host order */
	__u8 family;  /* AF_INET4 | AF_INET6 */
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, struct proxy_sock_key);
	__type(value, __u64);
	__uint(max_entries, 64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_proxy_socks SEC(".maps");
#endif
