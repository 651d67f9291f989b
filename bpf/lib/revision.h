/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* A datapath revision (datapath/maps/revision.py): one u32 in a one-slot array map, pinned by
 * name, that the agent raises after every write of the maps it covers, never to 0. The programs
 * cache what those maps answered together with the revision they read, and use a cached answer
 * only at that revision; 0 means no writer keeps the revision, and nothing is cached then. */
#ifndef __CILIARY_REVISION_H
#define __CILIARY_REVISION_H
#include "common.h"

#define REVISION_MAP(name)                                                                      \
	struct {                                                                                \
		__uint(type, BPF_MAP_TYPE_ARRAY);                                               \
		__type(key, __u32);                                                             \
		__type(value, __u32);                                                           \
		__uint(max_entries, 1);                                                         \
		__uint(pinning, LIBBPF_PIN_BY_NAME);                                            \
	} name SEC(".maps")

/* The revision `map` (a REVISION_MAP) holds now. */
static __always_inline __u32 revision_of(void *map)
{
	__u32 zero = 0;
	__u32 *rev = bpf_map_lookup_elem(map, &zero);
	return rev ? *rev : 0;
}
#endif
