/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Runtime knobs written by the agent into ciliary_config[0]; absent entry = built-in defaults. */
#ifndef __CILIARY_CONFIG_H
#define __CILIARY_CONFIG_H
#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct dp_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ciliary_config SEC(".maps");

static __always_inline struct dp_config *dp_config_get(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&ciliary_config, &zero);
}

#define DEFAULT_AGG_INTERVAL (5 * 1000000000ULL)

/* Monitor aggregation level and report interval; Cilium's defaults (medium, 5 s) until the agent
 * has written the entry (an array slot always exists: an interval of 0 means "not yet"). */
static __always_inline void load_config(__u32 *level, __u64 *interval)
{
	struct dp_config *cfg = dp_config_get();
	if (!cfg || cfg->aggregation_interval_ns == 0) {
		*level = MONITOR_AGG_MEDIUM;
		*interval = DEFAULT_AGG_INTERVAL;
		return;
	}
	*level = cfg->monitor_aggregation;
	*interval = cfg->aggregation_interval_ns;
}
/* The routing mode the agent configured (ROUTING_MODE_*); tunnel until it has written it, so
 * nothing is routed by lib/fib.h before the agent said the node routes natively. */
static __always_inline __u32 routing_mode(void)
{
	struct dp_config *cfg = dp_config_get();
	if (!cfg || cfg->aggregation_interval_ns == 0)
		return ROUTING_MODE_TUNNEL;
	return cfg->routing_mode;
}
#endif
