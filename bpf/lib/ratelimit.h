/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Token buckets for notifications the datapath may send far more often than anyone can read
 * (upstream's lib/ratelimit.h): one bucket per usage, node-wide (every CPU and program shares
 * it), topped up with `tokens_per_topup` every `interval_ns` (the missed intervals at once) and
 * never holding more than `bucket_size`. A use takes a token or is refused and counted.
 *
 * Contract: the updates are not atomic, as upstream's (two CPUs may both take the last token:
 * a notification more, never a packet or a connection wrong); callers decide only whether to
 * report something. The array slot exists from load (zeroes): a last_topup of 0 is a bucket
 * never used, whose first use is granted and starts it with tokens_per_topup - 1 tokens, as
 * upstream's new bucket. */
#ifndef __CILIARY_RATELIMIT_H
#define __CILIARY_RATELIMIT_H
#include "common.h"

/* upstream's RATELIMIT_USAGE_* numbers (its map is keyed by them) */
#define RATELIMIT_USAGE_SOCKET_EVENTS 3
#define RATELIMIT_USAGES 4

struct ratelimit_value {
	__u64 last_topup; /* bpf_ktime_get_ns() of the last top-up, 0: never used */
	__u64 tokens;
	__u64 dropped;    /* uses refused (upstream's cilium_ratelimit_metrics) */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct ratelimit_value);
	__uint(max_entries, RATELIMIT_USAGES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_ratelimit SEC(".maps");

/* 1: a token was taken (report), 0: the bucket is empty (the refusal is counted). `now` is the
 * caller's bpf_ktime_get_ns(); `interval_ns` must not be 0. */
static __always_inline int ratelimit_take(__u32 usage, __u64 bucket_size, __u64 tokens_per_topup,
					  __u64 interval_ns, __u64 now)
{
	struct ratelimit_value *v = bpf_map_lookup_elem(&ciliary_ratelimit, &usage);
	if (!v)
		return 0;
	if (v->last_topup == 0) {
		v->last_topup = now;
		v->tokens = tokens_per_topup - 1;
		return 1;
	}
	__u64 since = now - v->last_topup;
	if (since > interval_ns) {
		__u64 tokens = v->tokens + since / interval_ns * tokens_per_topup;
		v->tokens = tokens > bucket_size ? bucket_size : tokens;
		v->last_topup = now - since % interval_ns;
	}
	if (v->tokens > 0) {
		v->tokens--;
		return 1;
	}
	v->dropped++;
	return 0;
}
#endif
