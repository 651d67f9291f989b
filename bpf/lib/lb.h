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
 * A pod given itself as backend (hairpin) sends from the loopback address 169.254.42.1 or fe80::1
 * (CT_F_LOOPBACK), and its reply to that address is turned back to the pod. */
#ifndef __CILIARY_LB_H
#define __CILIARY_LB_H
#include "common.h"
#include "parse.h"
#include "conntrack.h"
#include "rewrite.h"
#include "jhash.h"

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

/* Slot 0's backend_id: the affinity timeout (s) below LB_ALGORITHM_SHIFT, the frontend's
 * algorithm above it (upstream's LB_SELECTION_* values; 0 = random here). Only a frontend the
 * agent marks LB_SELECTION_MAGLEV (its table written before its slot 0) has its Maglev table
 * looked for: a new connection to any other frontend skips the config and hash-of-maps
 * lookups (cold on a SYN; BPF_PROG_TEST_RUN in a loaded lab: ~80 ns of the whole program's
 * SYN, 300-480 ns of the translation step's alone). */
#define LB_ALGORITHM_SHIFT 24
#define LB_AFFINITY_TIMEOUT_MASK ((1U << LB_ALGORITHM_SHIFT) - 1)
#define LB_SELECTION_RANDOM 1
#define LB_SELECTION_MAGLEV 2

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

/* The value of both families' service maps. Slots 1..count are the backends new connections
 * choose from; slots count+1..count+qcount the terminating ones (upstream's quarantined slots),
 * kept only so their backend entries stay while established connections finish. */
struct lb_service {
	__u32 backend_id;   /* slots 1..: the backend; slot 0: the sessionAffinity timeout (s) in
			     * the low 24 bits, the frontend's algorithm (LB_SELECTION_*) in the
			     * top 8, as upstream's affinity_timeout and LB_ALGORITHM_SHIFT */
	__u16 count;        /* slot 0: number of backend slots */
	__u16 rev_nat_index; /* slot 0: the frontend's id */
	__u8 flags;         /* SVC_FLAG_* */
	__u8 flags2;
	__u16 qcount;       /* slot 0: terminating backends in slots count+1..count+qcount */
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

/* Session affinity (sessionAffinity: ClientIP), upstream's cilium_lb{4,6}_affinity and
 * cilium_lb_affinity_match: the client address's last backend per frontend, with when it was
 * last chosen; the match map says which backends a frontend with affinity may still be given
 * (the agent keeps it to the frontend's active backends). */
struct lb4_affinity_key {
	__be32 address;
	__u16 rev_nat_id;
	__u16 pad;
};

struct lb6_affinity_key {
	__u8 address[16];
	__u16 rev_nat_id;
	__u16 pad;
};

struct lb_affinity_val {
	__u64 last_used_ns; /* bpf_ktime_get_ns() of the last new connection given backend_id */
	__u32 backend_id;
	__u32 pad;
};

struct lb_affinity_match {
	__u32 backend_id;
	__u16 rev_nat_id;
	__u16 pad;
};

/* Maglev: the table size and the jhash seeds of the tuple hash, the same on every node
 * (--bpf-lb-maglev-table-size, --bpf-lb-maglev-hash-seed); table_size 0 = not written yet. */
struct lb_maglev_config {
	__u32 table_size;
	__u32 seed_v4;
	__u32 seed_v6;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_affinity_key);
	__type(value, struct lb_affinity_val);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_lb4_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb6_affinity_key);
	__type(value, struct lb_affinity_val);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_lb6_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_affinity_match);
	__type(value, __u8);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_lb_affinity_match SEC(".maps");

/* loadBalancerSourceRanges (upstream's cilium_lb{4,6}_source_range, one map for both families
 * here): a frontend flagged SVC_FLAG_SOURCE_RANGE accepts a client only when its address is in
 * one of the frontend's prefixes. prefixlen counts rev_nat_id, family and pad (32 bits, always
 * matched) plus the prefix's own length; an IPv4 address is in addr[0..3]. */
struct lb_src_range_key {
	__u32 prefixlen;
	__u16 rev_nat_id;
	__u8 family;
	__u8 pad;
	__u8 addr[16];
};

#define LB_SRC_RANGE_KEY_BITS 32

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lb_src_range_key);
	__type(value, __u8);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_lb_source_range SEC(".maps");

/* Whether a client may use a frontend: always, unless the frontend has source ranges
 * (SVC_FLAG_SOURCE_RANGE) and none of them holds its address. */
static __always_inline int lb_src_range_ok(const struct lb_service *svc, const struct pkt *p)
{
	if (!(svc->flags & SVC_FLAG_SOURCE_RANGE))
		return 1;
	struct lb_src_range_key k = {
		.prefixlen = LB_SRC_RANGE_KEY_BITS + 128,
		.rev_nat_id = svc->rev_nat_index,
		.family = p->family,
	};
	__builtin_memcpy(k.addr, p->saddr, 16);
	return bpf_map_lookup_elem(&ciliary_lb_source_range, &k) != NULL;
}

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct lb_maglev_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_lb_maglev_config SEC(".maps");

/* A Maglev service's table (upstream's cilium_lb{4,6}_maglev): rev_nat_index -> an array of
 * table_size backend ids the agent computed (ciliary.core.maglev). BPF_F_INNER_MAP: the inner
 * arrays take the configured size, not this template's. A frontend without an entry here (or
 * not marked LB_SELECTION_MAGLEV in its slot 0) is balanced at random. */
struct lb_maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_INNER_MAP);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u16);
	__type(value, __u32);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct lb_maglev_inner);
} ciliary_lb4_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u16);
	__type(value, __u32);
	__uint(max_entries, LB_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct lb_maglev_inner);
} ciliary_lb6_maglev SEC(".maps");

/* Which addresses may be frontends: one bit per hash of an address (addr_hash) that some
 * service entry (slot 0, exact or wildcard) is keyed on, set by the agent before it writes the
 * entry (datapath/maps/lb.py, the only writer; cleared once no entry's address hashes to it).
 * A packet to any other address, as every pod-to-pod packet, is no service's: its lookups
 * (the exact entry, then the wildcard one: two misses of a hash map) are left out for one word
 * of an array, which the verifier inlines. */
#define LB_FRONTEND_BITS_WORDS 1024 /* 65,536 bits */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, LB_FRONTEND_BITS_WORDS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_lb_frontend_bits SEC(".maps");

/* Whether some service entry may be keyed on `addr` (no: certainly none is). */
static __always_inline int lb_maybe_frontend(const __u8 *addr, __u8 family)
{
	__u32 h = addr_hash(addr, family) >> 16; /* 16 bits: LB_FRONTEND_BITS_WORDS x 64 */
	__u32 idx = h >> 6;
	__u64 *word = bpf_map_lookup_elem(&ciliary_lb_frontend_bits, &idx);
	return !word || (*word >> (h & 63)) & 1;
}

/* The service entry (slot 0) of the packet's destination (address, port, protocol), or with
 * `wildcard` the address's catch-all entry (port 0, protocol 0); NULL when there is none. */
static __always_inline struct lb_service *lb_lookup_frontend(const struct pkt *p, int wildcard)
{
	if (!lb_maybe_frontend(p->daddr, p->family))
		return 0;
	if (p->family == AF_INET4) {
		struct lb4_key k = {};
		__builtin_memcpy(&k.address, p->daddr, 4);
		if (!wildcard) {
			k.dport = bpf_htons(p->dport);
			k.proto = p->proto;
		}
		return bpf_map_lookup_elem(&ciliary_lb4_services, &k);
	}
	struct lb6_key k = {};
	__builtin_memcpy(k.address, p->daddr, 16);
	if (!wildcard) {
		k.dport = bpf_htons(p->dport);
		k.proto = p->proto;
	}
	return bpf_map_lookup_elem(&ciliary_lb6_services, &k);
}

/* The service entry (slot 0) of the frontend the packet is sent to: its own (address, port,
 * protocol), else the address's wildcard entry; NULL when the address is no frontend. */
static __always_inline struct lb_service *lb_lookup_service(const struct pkt *p)
{
	struct lb_service *svc = lb_lookup_frontend(p, 0);
	return svc ? svc : lb_lookup_frontend(p, 1);
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

/* What the selection reads of a new connection: the client's tuple (the frontend as
 * destination) and the frontend's slot 0. Copied to a per-CPU scratch entry that the selection
 * (a global function) is handed: a pointer to the caller's stack would make the verifier forget
 * everything it knew of that stack after the call. */
struct lb_select_req {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport; /* host order */
	__u16 dport;
	__u8 family;
	__u8 proto;
	__u8 pad[2];
	struct lb_service svc;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct lb_select_req);
	__uint(max_entries, 1);
} ciliary_lb_select_scratch SEC(".maps");

/* Backend id of slot `slot` of the request's frontend, 0 when the slot is absent. */
static __always_inline __u32 lb_req_slot_backend(const struct lb_select_req *r, __u16 slot)
{
	struct lb_service *s;
	if (r->family == AF_INET4) {
		struct lb4_key k = {};
		__builtin_memcpy(&k.address, r->daddr, 4);
		k.dport = bpf_htons(r->dport);
		k.proto = r->proto;
		k.backend_slot = slot;
		s = bpf_map_lookup_elem(&ciliary_lb4_services, &k);
	} else {
		struct lb6_key k = {};
		__builtin_memcpy(k.address, r->daddr, 16);
		k.dport = bpf_htons(r->dport);
		k.proto = r->proto;
		k.backend_slot = slot;
		s = bpf_map_lookup_elem(&ciliary_lb6_services, &k);
	}
	return s ? s->backend_id : 0;
}

/* Hash of a connection's tuple as the client sent it (source address and port, destination
 * port, protocol; the table is the frontend's own): jhash_3words with the configured seed, as
 * upstream's hash_from_tuple_v4; IPv6 folds the source address's four words first. Words are
 * read in host order (ciliary.core.maglev.tuple_hash mirrors it). */
static __always_inline __u32 lb_tuple_hash(const struct lb_select_req *r,
					   const struct lb_maglev_config *c)
{
	__u32 ports = ((__u32)r->dport << 16) | r->sport;
	__u32 w[4];
	__builtin_memcpy(w, r->saddr, 16);
	if (r->family == AF_INET4)
		return jhash_3words(w[0], ports, r->proto, c->seed_v4);
	__u32 h = jhash_3words(w[0], w[1], w[2], c->seed_v6);
	return jhash_3words(w[3], ports, r->proto, h);
}

/* The Maglev table's backend for the request's tuple; 0 when the frontend has no table. */
static __always_inline __u32 lb_maglev_backend(const struct lb_select_req *r, __u16 rev_nat)
{
	__u32 zero = 0;
	struct lb_maglev_config *c = bpf_map_lookup_elem(&ciliary_lb_maglev_config, &zero);
	if (!c || c->table_size == 0)
		return 0;
	void *table = r->family == AF_INET4 ? bpf_map_lookup_elem(&ciliary_lb4_maglev, &rev_nat)
					    : bpf_map_lookup_elem(&ciliary_lb6_maglev, &rev_nat);
	if (!table)
		return 0;
	__u32 index = lb_tuple_hash(r, c) % c->table_size;
	__u32 *id = bpf_map_lookup_elem(table, &index);
	return id ? *id : 0;
}

/* An affinity entry's backend if it was chosen less than the timeout ago and is still one of
 * the frontend's active backends (the entry is refreshed); else 0. Every affinity key's (the
 * client address's here, the client's network namespace's in socket-LB, bpf_sock.c). */
static __always_inline __u32 lb_affinity_valid(struct lb_affinity_val *v, __u16 rev_nat,
					       __u64 timeout_ns, __u64 now)
{
	if (!v || now - v->last_used_ns > timeout_ns)
		return 0;
	struct lb_affinity_match m = {.backend_id = v->backend_id, .rev_nat_id = rev_nat};
	if (!bpf_map_lookup_elem(&ciliary_lb_affinity_match, &m))
		return 0;
	v->last_used_ns = now;
	return v->backend_id;
}

/* The client's backend of a frontend with session affinity (lb_affinity_valid), else 0. */
static __always_inline __u32 lb_affinity_backend(const struct lb_select_req *r, __u16 rev_nat,
						 __u64 timeout_ns, __u64 now)
{
	struct lb_affinity_val *v;
	if (r->family == AF_INET4) {
		struct lb4_affinity_key k = {.rev_nat_id = rev_nat};
		__builtin_memcpy(&k.address, r->saddr, 4);
		v = bpf_map_lookup_elem(&ciliary_lb4_affinity, &k);
	} else {
		struct lb6_affinity_key k = {.rev_nat_id = rev_nat};
		__builtin_memcpy(k.address, r->saddr, 16);
		v = bpf_map_lookup_elem(&ciliary_lb6_affinity, &k);
	}
	return lb_affinity_valid(v, rev_nat, timeout_ns, now);
}

static __always_inline void lb_affinity_update(const struct lb_select_req *r, __u16 rev_nat,
					       __u32 id, __u64 now)
{
	struct lb_affinity_val v = {.last_used_ns = now, .backend_id = id};
	if (r->family == AF_INET4) {
		struct lb4_affinity_key k = {.rev_nat_id = rev_nat};
		__builtin_memcpy(&k.address, r->saddr, 4);
		bpf_map_update_elem(&ciliary_lb4_affinity, &k, &v, BPF_ANY);
	} else {
		struct lb6_affinity_key k = {.rev_nat_id = rev_nat};
		__builtin_memcpy(k.address, r->saddr, 16);
		bpf_map_update_elem(&ciliary_lb6_affinity, &k, &v, BPF_ANY);
	}
}

/* The selection proper (see lb_select_backend). A global function: the verifier checks it once,
 * apart from its callers' states (inlined, its branches multiplied cil_from_netdev's past the
 * 1M-instruction limit). */
__attribute__((noinline)) __u32 lb_select_backend_req(struct lb_select_req *r)
{
	if (!r)
		return 0;
	__u16 rev_nat = r->svc.rev_nat_index;
	__u16 count = r->svc.count;
	__u8 affinity = r->svc.flags & SVC_FLAG_AFFINITY;
	__u64 timeout_ns = (__u64)(r->svc.backend_id & LB_AFFINITY_TIMEOUT_MASK) * 1000000000ULL;
	__u64 now = affinity ? bpf_ktime_get_ns() : 0; /* the affinity entry's clock only */
	__u32 id = 0;
	if (count == 0)
		return 0;
	if (affinity) {
		id = lb_affinity_backend(r, rev_nat, timeout_ns, now);
		if (id)
			return id;
	}
	if (r->svc.backend_id >> LB_ALGORITHM_SHIFT == LB_SELECTION_MAGLEV)
		id = lb_maglev_backend(r, rev_nat);
	if (!id)
		id = lb_req_slot_backend(r, (__u16)(bpf_get_prandom_u32() % count) + 1);
	if (id && affinity)
		lb_affinity_update(r, rev_nat, id, now);
	return id;
}

/* THE backend selection for a new connection, for every path that translates packets (tc LB
 * in bpf_lxc, NodePort in bpf_host; socket-LB, bpf_sock.c, follows the same rules for a socket:
 * affinity keyed by the client's netns, no Maglev as upstream's E-W): `p` holds the client's tuple with the frontend
 * as destination, `svc` the frontend's slot 0. In order: the client's affinity backend
 * (SVC_FLAG_AFFINITY, chosen less than slot 0's timeout ago and still active), the Maglev
 * table's entry for the tuple (a frontend marked LB_SELECTION_MAGLEV that has a table: the same
 * on every node), else a random
 * slot 1..count (terminating backends, beyond count, are never chosen). Returns the backend id,
 * 0 if none. */
static __always_inline __u32 lb_select_backend(const struct pkt *p, const struct lb_service *svc)
{
	__u32 zero = 0;
	struct lb_select_req *r = bpf_map_lookup_elem(&ciliary_lb_select_scratch, &zero);
	if (!r)
		return 0;
	__builtin_memcpy(r->saddr, p->saddr, 16);
	__builtin_memcpy(r->daddr, p->daddr, 16);
	r->sport = p->sport;
	r->dport = p->dport;
	r->family = p->family;
	r->proto = p->proto;
	r->svc = *svc;
	return lb_select_backend_req(r);
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

/* Upstream's --ipv4-service-loopback-address and --ipv6-service-loopback-address defaults
 * (169.254.42.1, fe80::1): the source of a pod's connection to a service that picked the pod
 * itself (hairpin). From its own address the pod's kernel would refuse the packet (IPv4: a
 * martian source) or answer it over lo, never through the translation (IPv6). The pod reaches
 * fe80::1 on its eth0 through a permanent neighbour entry naming the node side's MAC, as its
 * router (datapath/linux/link.py). */
#define LB_LOOPBACK_V4_0 169
#define LB_LOOPBACK_V4_1 254
#define LB_LOOPBACK_V4_2 42
#define LB_LOOPBACK_V4_3 1
#define LB_LOOPBACK_V6_0 0xfe
#define LB_LOOPBACK_V6_1 0x80
#define LB_LOOPBACK_V6_15 1

struct lb_result {
	struct ct_entry *svc_ct; /* the service conntrack entry, refreshed with the connection's
				  * (NULL when created by this packet: created as the connection's) */
	__u64 now;               /* translated: its ct_now(), conntrack's clock after it */
	__u16 rev_nat_index;     /* 0: not sent to a frontend */
	__u8 loopback;           /* hairpin: the source is now the loopback address */
	__u8 pad;
};

/* Service translation of a packet a pod sends to frontend `svc` (its lb_lookup_service entry),
 * before anything looks at its destination. Returns 0 (translated: res says how), or -DROP_*.
 * The packet and `p` then carry the backend's address and port. Per packet of an established
 * connection: the service conntrack entry and the backend (two lookups), the DNAT. */
static __always_inline int lb_translate_service(struct __sk_buff *skb, struct pkt *p,
						const struct lb_service *svc,
						struct lb_result *res)
{
	if (svc->flags2 & SVC_FLAG_WILDCARD || svc->count == 0)
		return -DROP_NO_SERVICE;
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return -DROP_NO_SERVICE; /* SCTP frontends are not translated (yet) */
	__u16 rev_nat = svc->rev_nat_index;
	__u64 now = ct_now();
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
		__u32 id = lb_select_backend(p, svc);
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
		e = 0; /* its lifetime is the opening connection's; no lookup back for it */
	}
	int ret = nat_rewrite(skb, p, 0, addr, p->dport, port);
	if (ret < 0)
		return ret;
	addr_copy(p->daddr, addr, p->family);
	p->dport = port;
	res->svc_ct = e;
	res->now = now;
	res->rev_nat_index = rev_nat;
	if (addr_eq(p->daddr, p->saddr, p->family)) {
		__u8 lo[16] = {};
		if (p->family == AF_INET4) {
			lo[0] = LB_LOOPBACK_V4_0;
			lo[1] = LB_LOOPBACK_V4_1;
			lo[2] = LB_LOOPBACK_V4_2;
			lo[3] = LB_LOOPBACK_V4_3;
		} else {
			lo[0] = LB_LOOPBACK_V6_0;
			lo[1] = LB_LOOPBACK_V6_1;
			lo[15] = LB_LOOPBACK_V6_15;
		}
		ret = nat_rewrite(skb, p, 1, lo, p->sport, p->sport);
		if (ret < 0)
			return ret;
		addr_copy(p->saddr, lo, p->family);
		res->loopback = 1;
	}
	return 0;
}

/* Service translation of a packet a pod sends (before anything looks at its destination).
 * Returns 0 (not a frontend, or translated: res says which), or -DROP_*. */
static __always_inline int lb_translate(struct __sk_buff *skb, struct pkt *p,
					struct lb_result *res)
{
	struct lb_service *svc = lb_lookup_service(p);
	if (!svc)
		return 0;
	return lb_translate_service(skb, p, svc, res);
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
 * to the frontend's address and port; `store_addr` 0: the address left for l3_dec_ttl_src
 * (nat_rewrite_at). Returns 1 (translated), 0 (the service is gone) or -DROP_*. */
static __always_inline int lb_rev_nat_at(struct __sk_buff *skb, struct pkt *p, __u16 index,
					 int store_addr)
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
	int ret = nat_rewrite_at(skb, p, 1, addr, p->sport, port, store_addr);
	if (ret < 0)
		return ret;
	addr_copy(p->saddr, addr, p->family);
	p->sport = port;
	return 1;
}

/* lb_rev_nat_at, written at once. Returns 0 or -DROP_*. */
static __always_inline int lb_rev_nat(struct __sk_buff *skb, struct pkt *p, __u16 index)
{
	int ret = lb_rev_nat_at(skb, p, index, 1);
	return ret < 0 ? ret : 0;
}

/* Reverse translation of a packet conntrack classified: a reply of a translated connection.
 * `store_addr` 0: the new source is left for l3_dec_ttl_src, which the caller must call next
 * when this returns 1. Returns 1 (translated), 0 (not one) or -DROP_*. */
static __always_inline int lb_rev_nat_ct_at(struct __sk_buff *skb, struct pkt *p,
					    const struct ct_result *ct, int store_addr)
{
	if (ct->state != CT_REPLY || !ct->entry || !ct->entry->rev_nat_index)
		return 0;
	return lb_rev_nat_at(skb, p, ct->entry->rev_nat_index, store_addr);
}

/* lb_rev_nat_ct_at, written at once. Returns 0 or -DROP_*. */
static __always_inline int lb_rev_nat_ct(struct __sk_buff *skb, struct pkt *p,
					 const struct ct_result *ct)
{
	int ret = lb_rev_nat_ct_at(skb, p, ct, 1);
	return ret < 0 ? ret : 0;
}
#endif
