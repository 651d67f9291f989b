/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Services at the tc level (the kube-proxy replacement's per-packet half), as Cilium's lib/lb.h:
 *
 *   ciliary_lb{4,6}_services     frontend (address, port, protocol, slot) -> slot 0: the service
 *                                entry (count = number of backends, rev_nat_index, flags); slots
 *                                1..count: one backend id each.
 *   ciliary_lb{4,6}_backends     backend id -> address, port, protocol, state.
 *   ciliary_lb{4,6}_reverse_nat  rev_nat_index -> the frontend's address and port, which replies
 *                                get back as their source.
 *
 * The agent (src/ciliary/agent/services.py) is the only writer; it writes a service's new
 * backends first, then its slots, then slot 0, and only then removes stale slots and backends, so
 * a packet never reads a slot naming a missing backend. A frontend's address also has a wildcard
 * entry (port 0, protocol 0, no backends, SVC_FLAG_WILDCARD): anything else sent to a ClusterIP
 * (another port, an ICMP echo) is dropped with DROP_NO_SERVICE, as upstream drops traffic to a
 * service VIP's unknown ports; so is a frontend without backends (upstream's default answers it
 * with an ICMP unreachable, not done here).
 *
 * A new connection to a frontend gets a random backend (bpf_get_prandom_u32() % count + 1) and a
 * service conntrack entry keyed on the tuple the client sent (ct_key.scope CT_SCOPE_SERVICE)
 * remembering the backend id and the rev-NAT index: the connection's later packets go to the same
 * backend as long as it exists (a removed backend's connections are given another). The packet is
 * DNATed (address, port, checksums) before anything else looks at its destination, so identity,
 * conntrack, policy and routing see the backend; the connection's own conntrack entry carries
 * the rev-NAT index, and wherever a reply is delivered to the client (lib/deliver.h, or the lxc's
 * tc egress for one that came through the stack) its source is rewritten back to the frontend.
 * A pod given itself as backend (hairpin, IPv4) sends from the loopback address 169.254.42.1
 * (CT_F_LOOPBACK), and its reply to that address is turned back to the pod. */
#ifndef __CILIARY_LB_H
#define __CILIARY_LB_H
#include "common.h"
#include "parse.h"
#include "conntrack.h"
#include "rewrite.h"

#ifndef LB_MAP_SIZE
#define LB_MAP_SIZE 65536 /* upstream's --bpf-lb-map-max default; the agent's flag overrides */
#endif

/* Service flags (upstream's SVC_FLAG_* values of lb_service.flags). */
#define SVC_FLAG_EXTERNAL_IP 0x01
#define SVC_FLAG_NODEPORT 0x02
#define SVC_FLAG_EXT_LOCAL_SCOPE 0x04
#define SVC_FLAG_HOSTPORT 0x08
#define SVC_FLAG_AFFINITY 0x10
#define SVC_FLAG_LOADBALANCER 0x20
#define SVC_FLAG_ROUTABLE 0x40
#define SVC_FLAG_SOURCE_RANGE 0x80
/* flags2 */
#define SVC_FLAG_LOCALREDIRECT 0x01
#define SVC_FLAG_NAT_46X64 0x02
#define SVC_FLAG_L7_LOADBALANCER 0x04
#define SVC_FLAG_LOOPBACK 0x08
#define SVC_FLAG_INT_LOCAL_SCOPE 0x10
#define SVC_FLAG_TWO_SCOPES 0x20
#define SVC_FLAG_QUARANTINED 0x40
#define SVC_FLAG_WILDCARD 0x80 /* flags2: the address's catch-all entry (port 0, protocol 0) */

#define LB_LOOKUP_SCOPE_EXT 0
#define LB_LOOKUP_SCOPE_INT 1

/* Backend states (upstream's BE_STATE_*). */
#define BE_STATE_ACTIVE 0
#define BE_STATE_TERMINATING 1
#define BE_STATE_QUARANTINED 2
#define BE_STATE_MAINTENANCE 3

/* ---- structs shared with user space (mirrors in ciliary.datapath.maps.lb) ---- */

struct lb4_key {
	__be32 address;
	__be16 dport;
	__u16 backend_slot; /* 0 = the service entry */
	__u8 proto;         /* IPPROTO_*, 0 = the wildcard entry */
	__u8 scope;         /* LB_LOOKUP_SCOPE_* */
	__u8 pad[2];
};

struct lb6_key {
	__u8 address[16];
	__be16 dport;
	__u16 backend_slot;
	__u8 proto;
	__u8 scope;
	__u8 pad[2];
};

/* The value of both families' service maps. */
struct lb_service {
	__u32 backend_id;   /* slots 1..count */
	__u16 count;        /* slot 0: number of backend slots */
	__u16 rev_nat_index; /* slot 0: the frontend's id */
	__u8 flags;         /* SVC_FLAG_* */
	__u8 flags2;
	__u8 pad[2];
};

struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 flags;         /* BE_STATE_* */
};

struct lb6_backend {
	__u8 address[16];
	__be16 port;
	__u8 proto;
	__u8 flags;
};

struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct lb6_reverse_nat {
	__u8 address[16];
	__be16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb_service);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb6_key);
	__type(value, struct lb_service);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_lb6_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_lb4_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb6_backend);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_lb6_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, struct lb4_reverse_nat);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_lb4_reverse_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, struct lb6_reverse_nat);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_lb6_reverse_nat SEC(".maps");

/* The service entry (slot 0) of the frontend the packet is sent to: its own (address, port,
 * protocol), else the address's wildcard entry; NULL when the address is no frontend. */
static __always_inline struct lb_service *lb_lookup_service(const struct pkt *p)
{
	struct lb_service *svc;
	if (p->family == AF_INET4) {
		struct lb4_key k = {};
		__builtin_memcpy(&k.address, p->daddr, 4);
		k.dport = bpf_htons(p->dport);
		k.proto = p->proto;
		svc = bpf_map_lookup_elem(&ciliary_lb4_services, &k);
		if (svc)
			return svc;
		k.dport = 0;
		k.proto = 0;
		return bpf_map_lookup_elem(&ciliary_lb4_services, &k);
	}
	struct lb6_key k = {};
	__builtin_memcpy(k.address, p->daddr, 16);
	k.dport = bpf_htons(p->dport);
	k.proto = p->proto;
	svc = bpf_map_lookup_elem(&ciliary_lb6_services, &k);
	if (svc)
		return svc;
	k.dport = 0;
	k.proto = 0;
	return bpf_map_lookup_elem(&ciliary_lb6_services, &k);
}

/* Backend id of slot `slot` (1..count) of the packet's frontend, 0 when the slot is absent. */
static __always_inline __u32 lb_slot_backend(const struct pkt *p, __u16 slot)
{
	struct lb_service *s;
	if (p->family == AF_INET4) {
		struct lb4_key k = {};
		__builtin_memcpy(&k.address, p->daddr, 4);
		k.dport = bpf_htons(p->dport);
		k.proto = p->proto;
		k.backend_slot = slot;
		s = bpf_map_lookup_elem(&ciliary_lb4_services, &k);
	} else {
		struct lb6_key k = {};
		__builtin_memcpy(k.address, p->daddr, 16);
		k.dport = bpf_htons(p->dport);
		k.proto = p->proto;
		k.backend_slot = slot;
		s = bpf_map_lookup_elem(&ciliary_lb6_services, &k);
	}
	return s ? s->backend_id : 0;
}

/* A backend's address (16 bytes, IPv4 in the first 4) and port (host order); 0 when the id is
 * not (or no longer) a backend. */
static __always_inline int lb_backend(__u8 family, __u32 id, __u8 *addr, __u16 *port)
{
	if (family == AF_INET4) {
		struct lb4_backend *b = bpf_map_lookup_elem(&ciliary_lb4_backends, &id);
		if (!b)
			return 0;
		__builtin_memcpy(addr, &b->address, 4);
		*port = bpf_ntohs(b->port);
		return 1;
	}
	struct lb6_backend *b = bpf_map_lookup_elem(&ciliary_lb6_backends, &id);
	if (!b)
		return 0;
	__builtin_memcpy(addr, b->address, 16);
	*port = bpf_ntohs(b->port);
	return 1;
}

/* Upstream's --ipv4-service-loopback-address default: the source of a pod's connection to a
 * service that picked the pod itself (hairpin), which the kernel would otherwise refuse (a packet
 * from its own address). IPv6 has none (as upstream: an IPv6 hairpin is not translated). */
#define LB_LOOPBACK_V4_0 169
#define LB_LOOPBACK_V4_1 254
#define LB_LOOPBACK_V4_2 42
#define LB_LOOPBACK_V4_3 1

struct lb_result {
	struct ct_entry *svc_ct; /* the service conntrack entry, refreshed with the connection's */
	__u16 rev_nat_index;     /* 0: not sent to a frontend */
	__u8 loopback;           /* hairpin: the source is now the loopback address */
	__u8 pad;
};

/* Service translation of a packet a pod sends (before anything looks at its destination).
 * Returns 0 (not a frontend, or translated: res says which), or -DROP_*. On translation the
 * packet and `p` carry the backend's address and port. */
static __always_inline int lb_translate(struct __sk_buff *skb, struct pkt *p,
					struct lb_result *res)
{
	struct lb_service *svc = lb_lookup_service(p);
	if (!svc)
		return 0;
	if (svc->flags2 & SVC_FLAG_WILDCARD || svc->count == 0)
		return -DROP_NO_SERVICE;
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return -DROP_NO_SERVICE; /* SCTP frontends are not translated (yet) */
	__u16 count = svc->count;
	__u16 rev_nat = svc->rev_nat_index;
	__u64 now = bpf_ktime_get_ns();
	__u8 addr[16] = {};
	__u16 port = 0;

	struct ct_key sk = {};
	ct_build_key(&sk, p, 0);
	sk.scope = CT_SCOPE_SERVICE;
	struct ct_entry *e = bpf_map_lookup_elem(&ciliary_ct, &sk);
	if (e && e->expires_ns > now && e->rev_nat_index == rev_nat &&
	    lb_backend(p->family, e->backend_id, addr, &port)) {
		e->last_seen_ns = now;
	} else {
		__u16 slot = (__u16)(bpf_get_prandom_u32() % count) + 1;
		__u32 id = lb_slot_backend(p, slot);
		if (!id || !lb_backend(p->family, id, addr, &port))
			return -DROP_NO_SERVICE;
		struct ct_entry n = {};
		n.created_ns = now;
		n.last_seen_ns = now;
		n.last_report_ns = now;
		n.expires_ns = now + CT_LIFETIME_SYN;
		n.rev_nat_index = rev_nat;
		n.backend_id = id;
		if (bpf_map_update_elem(&ciliary_ct, &sk, &n, BPF_ANY) < 0)
			return -DROP_CT_CREATE_FAILED;
		e = bpf_map_lookup_elem(&ciliary_ct, &sk);
	}
	int ret = nat_rewrite(skb, p, 0, addr, p->dport, port);
	if (ret < 0)
		return ret;
	addr_copy(p->daddr, addr, p->family);
	p->dport = port;
	res->svc_ct = e;
	res->rev_nat_index = rev_nat;
	if (p->family == AF_INET4 && addr_eq(p->daddr, p->saddr, AF_INET4)) {
		__u8 lo[16] = {LB_LOOPBACK_V4_0, LB_LOOPBACK_V4_1, LB_LOOPBACK_V4_2,
			       LB_LOOPBACK_V4_3};
		ret = nat_rewrite(skb, p, 1, lo, p->sport, p->sport);
		if (ret < 0)
			return ret;
		addr_copy(p->saddr, lo, AF_INET4);
		res->loopback = 1;
	}
	return 0;
}

/* The reply of a hairpinned connection (the pod answering the loopback address): to the pod
 * itself again, whose own address it is. Returns 0 or -DROP_*. */
static __always_inline int lb_loopback_reply(struct __sk_buff *skb, struct pkt *p)
{
	int ret = nat_rewrite(skb, p, 0, p->saddr, p->dport, p->dport);
	if (ret < 0)
		return ret;
	addr_copy(p->daddr, p->saddr, p->family);
	return 0;
}

/* A reply of a translated connection (its conntrack entry names the frontend): the source back
 * to the frontend's address and port. Returns 0 or -DROP_*. */
static __always_inline int lb_rev_nat(struct __sk_buff *skb, struct pkt *p, __u16 index)
{
	__u8 addr[16] = {};
	__u16 port;
	if (p->family == AF_INET4) {
		struct lb4_reverse_nat *r = bpf_map_lookup_elem(&ciliary_lb4_reverse_nat, &index);
		if (!r)
			return 0; /* the service is gone: the reply goes as it is, as upstream's */
		__builtin_memcpy(addr, &r->address, 4);
		port = bpf_ntohs(r->port);
	} else {
		struct lb6_reverse_nat *r = bpf_map_lookup_elem(&ciliary_lb6_reverse_nat, &index);
		if (!r)
			return 0;
		__builtin_memcpy(addr, r->address, 16);
		port = bpf_ntohs(r->port);
	}
	int ret = nat_rewrite(skb, p, 1, addr, p->sport, port);
	if (ret < 0)
		return ret;
	addr_copy(p->saddr, addr, p->family);
	p->sport = port;
	return 0;
}

/* Reverse translation of a packet conntrack classified: a reply of a translated connection. */
static __always_inline int lb_rev_nat_ct(struct __sk_buff *skb, struct pkt *p,
					 const struct ct_result *ct)
{
	if (ct->state != CT_REPLY || !ct->entry || !ct->entry->rev_nat_index)
		return 0;
	return lb_rev_nat(skb, p, ct->entry->rev_nat_index);
}
#endif
