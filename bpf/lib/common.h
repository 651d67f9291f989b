/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shared vocabulary of the datapath: types, numbered constants and the structs that cross the
 * kernel/user boundary. Every struct here has a ctypes mirror in src/ciliary/datapath/maps/ whose
 * docstring names it; tests/bpf/test_btf_layout.py compares both through the object's BTF, so a
 * field added here without its mirror fails the suite instead of corrupting maps.
 *
 * Numbers are upstream's: verdicts and observation points are Hubble's flow.proto enums, drop
 * reasons are Cilium's DROP_* list (bpf/lib/common.h upstream), identities are Cilium's reserved
 * ones. C returns them as-is and user space never invents its own meaning for them. */
#ifndef __CILIARY_COMMON_H
#define __CILIARY_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
/* linux/icmp.h drags in libc headers; the two numbers we need: */
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
#include <linux/icmpv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#define PACKET_HOST 0 /* linux/if_packet.h: skb->pkt_type of a frame addressed to us */
#define AF_INET4 2
#define AF_INET6 10

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

/* Reserved identities (Cilium numbering). */
#define ID_UNKNOWN 0
#define ID_HOST 1
#define ID_WORLD 2
#define ID_UNMANAGED 3
#define ID_HEALTH 4
#define ID_INIT 5
#define ID_REMOTE_NODE 6
#define ID_WORLD_IPV4 9
#define ID_WORLD_IPV6 10

/* Monitor message types (Cilium's pkg/monitor/api: CiliumEventType.type). */
#define EVENT_DROP 1
#define EVENT_TRACE 4
#define EVENT_POLICY_VERDICT 5

/* Hubble Verdict enum. */
#define VERDICT_FORWARDED 1
#define VERDICT_DROPPED 2
#define VERDICT_REDIRECTED 5 /* a policy verdict's connection goes to an L7 proxy */

/* Hubble TraceObservationPoint enum. */
#define OBS_TO_PROXY 1
#define OBS_TO_STACK 3
#define OBS_TO_OVERLAY 4
#define OBS_FROM_ENDPOINT 5
#define OBS_FROM_PROXY 6
#define OBS_FROM_OVERLAY 9
#define OBS_FROM_NETWORK 10
#define OBS_TO_NETWORK 11
#define OBS_TO_ENDPOINT 101

/* Cilium drop reasons (values < 130 are not drops). */
#define DROP_INVALID_SMAC 130
#define DROP_INVALID_SIP 132
#define DROP_POLICY 133
#define DROP_POLICY_DENY 181
#define DROP_INVALID 134
#define DROP_CT_INVALID_HDR 135
#define DROP_UNKNOWN_L3 139
#define DROP_WRITE_ERROR 141
#define DROP_UNKNOWN_L4 142
#define DROP_NO_TUNNEL_KEY 147
#define DROP_UNKNOWN_TARGET 150
#define DROP_FRAG_NOSUPPORT 157
#define DROP_NO_SERVICE 158
#define DROP_CT_CREATE_FAILED 155
#define DROP_UNSUPPORTED_L2 166
#define DROP_NAT_NO_MAPPING 167
#define DROP_NAT_UNSUPP_PROTO 168
#define DROP_NO_FIB 169
#define DROP_NOT_IN_SRC_RANGE 177
#define DROP_PROXY_LOOKUP_FAILED 178
#define DROP_PROXY_SET_FAILED 179
#define DROP_INVALID_IDENTITY 171
#define DROP_TTL_EXCEEDED 196
#define DROP_EP_NOT_READY 203

/* Conntrack result as reported in events. */
#define CT_NEW 0
#define CT_ESTABLISHED 1
#define CT_REPLY 2
#define CT_RELATED 3
#define CT_UNTRACKED 4

/* ---- structs shared with user space (mirrors in ciliary.datapath.maps) ---- */

/* ciliary_lxc key: one local endpoint address. IPv4 in addr[0..3], rest zero. */
struct endpoint_key {
	__u8 addr[16];
	__u8 family;
	__u8 pad[3];
};

#define EP_F_READY 0x1

/* ciliary_lxc value: where a local endpoint lives and who it is. */
struct endpoint_info {
	__u32 ifindex;      /* node-side lxc device */
	__u32 sec_id;       /* security identity */
	__u16 ep_id;        /* endpoint id (1..65535) */
	__u16 flags;        /* EP_F_* */
	__u8 mac[6];        /* pod-side eth0 MAC */
	__u8 node_mac[6];   /* node-side lxc MAC (the pod's gateway MAC) */
};

/* ciliary_ipcache key: LPM trie key; prefixlen counts family+pad bits (32) + address bits. */
struct ipcache_key {
	__u32 prefixlen;
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};

struct ipcache_info {
	__u32 sec_id;
	__u32 tunnel_ep;    /* IPv4 of the node hosting the prefix (network order), 0 = local/none */
	__u8 flags;         /* IPCACHE_F_* */
	__u8 pad[3];
};

/* Written by the node manager from the cluster (remote pods, remote nodes, their pod CIDRs): it
 * prunes only entries with this bit (local endpoints and CIDR identities are owned by others). */
#define IPCACHE_F_REMOTE 0x1

/* ciliary_ct key: the tuple as the packet carries it (ports host order). */
struct ct_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 family;
	__u8 scope;         /* CT_SCOPE_*: a service entry never matches a connection's lookup */
	__u8 pad;
};

/* ct_key.scope: the connection's entry (its tuple as it travels, after service translation),
 * or the service entry keyed on the tuple the client sent (client -> frontend), which remembers
 * the connection's backend (upstream's CT_SERVICE). */
#define CT_SCOPE_CONN 0
#define CT_SCOPE_SERVICE 1

#define CT_F_TX_CLOSING 0x1
#define CT_F_RX_CLOSING 0x2
#define CT_F_REPLY_SEEN 0x4
#define CT_F_REPLY_REPORTED 0x8
/* The connection's packets reach the destination pod through the node stack (cil_to_container):
 * the stack may have NATed them (portmap's hostPort DNAT), so the replies go back through the
 * stack too, where its conntrack undoes the NAT, never straight to a local pod. */
#define CT_F_VIA_STACK 0x10
/* A pod's connection to a service that chose the pod itself (hairpin): the request's source was
 * rewritten to the loopback address (lib/lb.h), so the reply is sent back to it. */
#define CT_F_LOOPBACK 0x20
/* The connection goes through the node's L7 proxy on ct_entry.proxy_port (lib/proxy.h): its
 * requests are assigned to the proxy's socket, its replies to the socket the proxy opened to
 * the destination with the same tuple. */
#define CT_F_PROXY_REDIRECT 0x40
/* The connection's client side is an L7 proxy's upstream socket (a packet with its mark opened
 * it, lib/proxy.h proxy_sent): a reply the node stack routes to the pod (another proxy on this
 * node answered it) belongs to that socket, not to the pod. */
#define CT_F_PROXY_UPSTREAM 0x80
/* A pod's connection on the tuple of an L7 proxy's upstream connection, which may live on after
 * it (lib/conntrack.h ct_syn_reopens): the entry keeps the established lifetime when closing. */
#define CT_F_PROXY_SHARED 0x100

struct ct_entry {
	__u64 created_ns;
	__u64 last_seen_ns;
	__u64 expires_ns;
	__u64 last_report_ns;
	__u64 tx_packets;
	__u64 tx_bytes;
	__u64 rx_packets;
	__u64 rx_bytes;
	__u32 src_sec_id;
	__u32 dst_sec_id;
	__u8 tx_flags_seen;
	__u8 rx_flags_seen;
	__u16 flags;        /* CT_F_* */
	__u16 rev_nat_index; /* the service frontend the client addressed (lib/lb.h), 0 = none */
	__u16 proxy_port;   /* CT_F_PROXY_REDIRECT: the proxy's port, network order */
	__u32 backend_id;   /* service entry: the backend this connection was given */
	__u32 policy_rev;   /* the policy verdicts this node's forward packets passed: the policy
			     * revision they were checked at << 2 | POLICY_CACHED_* (lib/policy.h) */
};

/* Inner key of ciliary_policy (LPM trie): prefixlen counts the bits after it; sec_label is always
 * given in full, dport is network byte order so that a prefix covers a power-of-two port range. */
struct policy_key {
	__u32 prefixlen;
	__u32 sec_label;    /* remote identity, 0 = any */
	__u8 egress;        /* 0 ingress, 1 egress */
	__u8 protocol;      /* 0 = any */
	__u16 dport;        /* 0 with a shorter prefix = any */
};

struct policy_entry {
	__u64 packets;
	__u64 bytes;
	__u32 cookie;       /* which rule put this entry here (agent's table), 0 = none */
	__u16 proxy_port;   /* L7 redirect, network order; 0 = none */
	__u8 flags;         /* POLICY_F_DENY */
	__u8 prefixlen;     /* copy of the key's prefixlen: ranks the two lookups */
};

/* ciliary_config[0]: knobs the agent sets at start. */
#define MONITOR_AGG_NONE 0
#define MONITOR_AGG_MEDIUM 2

/* How pods reach pods of other nodes (the agent's --routing-mode). 0 = native, so a datapath the
 * agent has not configured yet hands cross-node traffic to the stack rather than to a tunnel
 * device that may not exist. */
/* The multiplicative (golden ratio) hash of an address: its 32-bit words as the CPU reads them
 * (IPv4: the first alone), XORed, times 0x9E3779B1; its high bits are the spread ones. The
 * frontend bits' index (lib/lb.h, >> 16; datapath/maps/lb.py's frontend_bit is its Python twin)
 * and the per-CPU caches' slots (lib/ipcache.h, lib/fib.h: >> 24, 256 slots). */
static __always_inline __u32 addr_hash(const __u8 *addr, __u8 family)
{
	__u32 w[4] = {};
	if (family == AF_INET4)
		__builtin_memcpy(w, addr, 4);
	else
		__builtin_memcpy(w, addr, 16);
	return (w[0] ^ w[1] ^ w[2] ^ w[3]) * 0x9E3779B1u;
}

#define ROUTING_MODE_NATIVE 0
#define ROUTING_MODE_TUNNEL 1

/* dp_config.flags: the node's ip rules route a packet bpf_lxc routes to another node's pod in
 * the native routing CIDR of the family as the main table alone would (lib/fib.h: the agent
 * watches the rules, agent/fibdirect.py) */
#define DP_F_FIB_MAIN_V4 0x1
#define DP_F_FIB_MAIN_V6 0x2

struct dp_config {
	__u64 aggregation_interval_ns;
	__u32 monitor_aggregation;
	__u16 flags;            /* DP_F_* */
	__u16 tunnel_port;      /* ciliary_vxlan's UDP port (host order) in tunnel mode, else 0 (in
				 * what was flags' upper half: an entry written before reads 0) */
	__u32 routing_mode;     /* ROUTING_MODE_* */
	__u32 tunnel_ifindex;   /* ciliary_vxlan in tunnel mode, else 0 */
};

/* Every record in the ciliary_events ring buffer starts with its type, one byte (EVENT_*, the
 * monitor message types), as upstream's NOTIFY_COMMON_HDR: the agent dispatches on that byte
 * (src/ciliary/datapath/maps/events.py decode_event) and a record type's layout is its own
 * after it. EVENT_HDR_CHECK puts the rule into each record struct's definition. */
#define EVENT_HDR_CHECK(record)                                                              \
	_Static_assert(__builtin_offsetof(struct record, type) == 0,                           \
		       #record ": a ring buffer record starts with its type")

/* One record in the ciliary_events ring buffer per reported verdict: EVENT_TRACE, EVENT_DROP
 * or EVENT_POLICY_VERDICT (the "threefour" family: one layout, one size). */
struct trace_event {
	__u8 type;              /* EVENT_TRACE / EVENT_DROP / EVENT_POLICY_VERDICT: first */
	__u8 obs_point;
	__u8 verdict;
	__u8 drop_reason;
	__u8 family;
	__u8 proto;
	__u8 tcp_flags;         /* FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 URG 0x20 ECE 0x40 CWR 0x80 */
	__u8 is_reply;
	__u64 ts_ns;            /* bpf_ktime_get_ns() at the verdict */
	__u64 ct_created_ns;    /* start of the connection, 0 when untracked */
	__u8 saddr[16];
	__u8 daddr[16];
	__u8 smac[6];
	__u8 dmac[6];
	__u16 sport;            /* or ICMP echo id */
	__u16 dport;
	__u32 src_sec_id;
	__u32 dst_sec_id;
	__u32 ifindex;
	__u32 pkt_len;
	__u16 ep_id;            /* endpoint whose program saw the packet */
	__u16 dst_ep_id;        /* local destination endpoint, 0 if none */
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 ct_state;
	__u8 policy_match;      /* POLICY_MATCH_* of the deciding entry */
	__u8 traffic_direction; /* Hubble TrafficDirection: 1 ingress, 2 egress, 0 unknown */
	__u8 pad;
	__u16 rev_nat_index;    /* the connection's service frontend (translated here), 0 if none */
	__u32 policy_cookie;    /* rule that decided (agent's cookie table); 0 = default / none */
};
EVENT_HDR_CHECK(trace_event);

#endif
