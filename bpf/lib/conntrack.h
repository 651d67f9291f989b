/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliary_ct: one LRU table per node for TCP, UDP, SCTP and ICMP echo. An entry is keyed by the
 * tuple of the packet that opened the connection; a packet whose reversed tuple hits is a reply.
 * Lifetimes follow Cilium's defaults (TCP 6h once a reply is seen, 60s while opening and for
 * non-TCP, 10s after FIN/RST both ways). Expired entries are treated as absent here and removed by
 * the agent's GC; the LRU evicts under pressure. */
#ifndef __CILIARY_CONNTRACK_H
#define __CILIARY_CONNTRACK_H
#include "common.h"
#include "parse.h"

#ifndef CT_MAP_SIZE
#define CT_MAP_SIZE 65536
#endif

#define NSEC_PER_SEC 1000000000ULL
#define CT_LIFETIME_TCP (21600 * NSEC_PER_SEC)
#define CT_LIFETIME_SYN (60 * NSEC_PER_SEC)
#define CT_LIFETIME_NONTCP (60 * NSEC_PER_SEC)
#define CT_LIFETIME_CLOSE (10 * NSEC_PER_SEC)

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, CT_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_ct SEC(".maps");

/* Conntrack's clock: CLOCK_MONOTONIC as of the last timer tick (bpf_ktime_get_coarse_ns, no
 * clock-source read; at most one tick, 4 ms at HZ 250, behind bpf_ktime_get_ns), as upstream's
 * "jiffies" clock for its CT map. Lifetimes are seconds and the agent's GC compares with
 * time.monotonic_ns(), the same base. Every time written into or compared with a ciliary_ct entry
 * is read here (lib/lb.h's service entries, lib/nodeport.h's), so no entry mixes the two clocks
 * (a report interval across them could go negative). Events keep bpf_ktime_get_ns (ts_ns). */
static __always_inline __u64 ct_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

struct ct_result {
	struct ct_entry *entry;
	__u8 state;         /* CT_* */
	__u8 report;        /* monitor aggregation says: emit an event for this packet */
};

static __always_inline int ct_trackable(const struct pkt *p)
{
	if (!p->has_l4)
		return 0;
	if (p->proto == IPPROTO_ICMP)
		return p->icmp_type == ICMP_ECHO || p->icmp_type == ICMP_ECHOREPLY;
	if (p->proto == IPPROTO_ICMPV6)
		return p->icmp_type == ICMPV6_ECHO_REQUEST || p->icmp_type == ICMPV6_ECHO_REPLY;
	return p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP || p->proto == IPPROTO_SCTP;
}

static __always_inline __u64 ct_lifetime(const struct pkt *p, const struct ct_entry *e)
{
	if (p->proto != IPPROTO_TCP)
		return CT_LIFETIME_NONTCP;
	if ((e->flags & (CT_F_TX_CLOSING | CT_F_RX_CLOSING)) == (CT_F_TX_CLOSING | CT_F_RX_CLOSING) &&
	    !(e->flags & CT_F_PROXY_SHARED))
		return CT_LIFETIME_CLOSE;
	if (!(e->flags & CT_F_REPLY_SEEN))
		return CT_LIFETIME_SYN;
	return CT_LIFETIME_TCP;
}

/* Decides whether this packet is reported under monitor aggregation `level`. */
static __always_inline int ct_should_report(struct ct_entry *e, __u8 seen_before, __u8 flags,
					    int is_reply, __u64 now, __u32 level, __u64 interval)
{
	if (level == MONITOR_AGG_NONE)
		return 1;
	if (is_reply && !(e->flags & CT_F_REPLY_REPORTED)) {
		e->flags |= CT_F_REPLY_REPORTED;
		e->last_report_ns = now;
		return 1;
	}
	if (flags & (TCP_SYN | TCP_FIN | TCP_RST) & ~seen_before) {
		e->last_report_ns = now;
		return 1;
	}
	if (interval && now - e->last_report_ns >= interval) {
		e->last_report_ns = now;
		return 1;
	}
	return 0;
}

/* A SYN (without ACK) on the tuple of a connection that is closing opens a new connection, as
 * upstream's ACTION_CREATE on a closing entry: the tuple was reused (a client's port comes round
 * again while the server side still holds the old one), so the packet is treated as new (policy
 * checked again, a fresh entry whose flags are reported), not as a packet of the old one.
 * So does one on the tuple of an L7 proxy's upstream connection (CT_F_PROXY_UPSTREAM,
 * lib/proxy.h): the proxy speaks as the pod from a port of its own, which the pod's kernel
 * cannot see, so the pod may pick that port for a new connection to the same destination. In
 * the proxy's entry (no proxy port) its SYN found no socket to go to and was dropped, every
 * retransmission too; as the pod's own entry the proxy's connection keeps working (its replies
 * go to its socket by the tuple, CT_F_PROXY_REDIRECT), and the new entry is CT_F_PROXY_SHARED:
 * the pod's connection closing does not end it after CT_LIFETIME_CLOSE while the proxy's may
 * idle on (a server's FIN 10 s later would find no entry and go to the pod). */
static __always_inline int ct_syn_reopens(const struct pkt *p, const struct ct_entry *e)
{
	return p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN &&
	       (e->flags & (CT_F_TX_CLOSING | CT_F_RX_CLOSING | CT_F_PROXY_UPSTREAM));
}

static __always_inline void ct_build_key(struct ct_key *k, const struct pkt *p, int reverse)
{
	if (reverse) {
		__builtin_memcpy(k->saddr, p->daddr, 16);
		__builtin_memcpy(k->daddr, p->saddr, 16);
		k->sport = p->dport;
		k->dport = p->sport;
	} else {
		__builtin_memcpy(k->saddr, p->saddr, 16);
		__builtin_memcpy(k->daddr, p->daddr, 16);
		k->sport = p->sport;
		k->dport = p->dport;
	}
	k->proto = p->proto;
	k->family = p->family;
}

/* Whether `p` is more likely a reply than a request: from the lower port to the higher (a
 * server's well-known or listening port answers a client's ephemeral one). Such a packet's
 * reversed tuple is looked up first: a reply then costs one lookup, not a miss and a hit. The
 * order changes no answer: ct_process_at never leaves a tuple and its reverse both live (a
 * packet whose reverse is live is that connection's reply; an entry is only created when
 * neither is), so at most one of the two lookups finds a live entry. */
static __always_inline int ct_reply_likely(const struct pkt *p)
{
	return (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) && p->sport < p->dport;
}

/* A packet of the connection whose entry `e` (live) holds its reversed tuple: a reply. */
static __always_inline int ct_reply_seen(struct ct_entry *e, const struct pkt *p, __u64 now,
					 __u32 agg_level, __u64 agg_interval,
					 struct ct_result *res)
{
	__u8 seen = e->rx_flags_seen;
	e->rx_packets++;
	e->rx_bytes += p->len;
	e->rx_flags_seen |= p->tcp_flags;
	e->flags |= CT_F_REPLY_SEEN;
	if (p->tcp_flags & (TCP_FIN | TCP_RST))
		e->flags |= CT_F_RX_CLOSING | (p->tcp_flags & TCP_RST ? CT_F_TX_CLOSING : 0);
	e->last_seen_ns = now;
	e->expires_ns = now + ct_lifetime(p, e);
	res->entry = e;
	res->state = CT_REPLY;
	res->report = ct_should_report(e, seen, p->tcp_flags, 1, now, agg_level, agg_interval);
	return 0;
}

/* Undo the entry ct_process created for a connection that policy then denied: otherwise the
 * peer's next packet would look like a reply and pass without a policy check. */
static __always_inline void ct_forget_new(const struct pkt *p, const struct ct_result *res)
{
	if (res->state != CT_NEW)
		return;
	struct ct_key k = {};
	ct_build_key(&k, p, 0);
	bpf_map_delete_elem(&ciliary_ct, &k);
}

/* Looks up (and creates, for new connections) the conntrack entry of packet `p` at time `now`
 * (ct_now(), taken once per packet: the service translation may have read it already).
 * Returns 0, or -DROP_* when an entry could not be created. */
static __always_inline int ct_process_at(const struct pkt *p, __u32 src_id, __u32 dst_id,
					 __u32 agg_level, __u64 agg_interval, __u64 now,
					 struct ct_result *res)
{
	struct ct_key k = {};
	struct ct_entry *e;

	res->entry = 0;
	if (p->has_related) {
		/* An ICMP error about a tracked connection, in either of its directions. */
		struct ct_key rk = {};
		__builtin_memcpy(rk.saddr, p->rel_saddr, 16);
		__builtin_memcpy(rk.daddr, p->rel_daddr, 16);
		rk.sport = p->rel_sport;
		rk.dport = p->rel_dport;
		rk.proto = p->rel_proto;
		rk.family = p->family;
		e = bpf_map_lookup_elem(&ciliary_ct, &rk);
		if (!e) {
			__builtin_memcpy(rk.saddr, p->rel_daddr, 16);
			__builtin_memcpy(rk.daddr, p->rel_saddr, 16);
			rk.sport = p->rel_dport;
			rk.dport = p->rel_sport;
			e = bpf_map_lookup_elem(&ciliary_ct, &rk);
		}
		if (e && e->expires_ns > now) {
			res->entry = e;
			res->state = CT_RELATED;
			res->report = 1;
			return 0;
		}
	}
	if (!ct_trackable(p)) {
		res->state = CT_UNTRACKED;
		res->report = 1;
		return 0;
	}

	if (ct_reply_likely(p)) {
		ct_build_key(&k, p, 1);
		e = bpf_map_lookup_elem(&ciliary_ct, &k);
		if (e && e->expires_ns > now)
			return ct_reply_seen(e, p, now, agg_level, agg_interval, res);
	}
	ct_build_key(&k, p, 0);
	e = bpf_map_lookup_elem(&ciliary_ct, &k);
	if (e && e->expires_ns > now && !ct_syn_reopens(p, e)) {
		__u8 seen = e->tx_flags_seen;
		e->tx_packets++;
		e->tx_bytes += p->len;
		e->tx_flags_seen |= p->tcp_flags;
		if (p->tcp_flags & (TCP_FIN | TCP_RST))
			e->flags |= CT_F_TX_CLOSING | (p->tcp_flags & TCP_RST ? CT_F_RX_CLOSING : 0);
		e->last_seen_ns = now;
		e->expires_ns = now + ct_lifetime(p, e);
		res->entry = e;
		res->state = CT_ESTABLISHED;
		res->report = ct_should_report(e, seen, p->tcp_flags, 0, now, agg_level, agg_interval);
		return 0;
	}

	/* the tuple an L7 proxy's upstream connection uses stays shared with it (ct_syn_reopens) */
	__u16 shared = 0;
	if (e && e->expires_ns > now && (e->flags & (CT_F_PROXY_UPSTREAM | CT_F_PROXY_SHARED)))
		shared = CT_F_PROXY_SHARED;
	/* the reply direction in the same key (one key on the stack: the verifier's 512 bytes) */
	if (!ct_reply_likely(p)) { /* recomputed: no variable to keep across the calls */
		ct_build_key(&k, p, 1);
		e = bpf_map_lookup_elem(&ciliary_ct, &k);
		if (e && e->expires_ns > now)
			return ct_reply_seen(e, p, now, agg_level, agg_interval, res);
	}

	struct ct_entry n = {};
	n.created_ns = now;
	n.last_seen_ns = now;
	n.last_report_ns = now;
	n.tx_packets = 1;
	n.tx_bytes = p->len;
	n.tx_flags_seen = p->tcp_flags;
	n.src_sec_id = src_id;
	n.dst_sec_id = dst_id;
	n.flags = shared;
	n.expires_ns = now + ct_lifetime(p, &n);
	ct_build_key(&k, p, 0);
	if (bpf_map_update_elem(&ciliary_ct, &k, &n, BPF_ANY) < 0)
		return -DROP_CT_CREATE_FAILED;
	res->entry = bpf_map_lookup_elem(&ciliary_ct, &k);
	res->state = CT_NEW;
	res->report = 1;
	return 0;
}

static __always_inline int ct_process(const struct pkt *p, __u32 src_id, __u32 dst_id,
				      __u32 agg_level, __u64 agg_interval, struct ct_result *res)
{
	return ct_process_at(p, src_id, dst_id, agg_level, agg_interval, ct_now(), res);
}
#endif
