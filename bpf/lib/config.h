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
#endif
