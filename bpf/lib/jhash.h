/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Bob Jenkins' lookup3 hash of 32-bit words, as the kernel's <linux/jhash.h> (which Cilium's
 * lib/jhash.h copies): Maglev's hash of a connection's tuple (lib/lb.h). The agent's mirror,
 * ciliary.core.maglev.jhash_3words, computes the same value in Python (tests predict a
 * connection's backend with it). */
#ifndef __CILIARY_JHASH_H
#define __CILIARY_JHASH_H
#include "common.h"

#define JHASH_INITVAL 0xdeadbeef

static __always_inline __u32 jhash_rol32(__u32 word, unsigned int shift)
{
	return (word << shift) | (word >> ((-shift) & 31));
}

#define __jhash_mix(a, b, c)                                                                       \
	{                                                                                          \
		a -= c; a ^= jhash_rol32(c, 4); c += b;                                          \
		b -= a; b ^= jhash_rol32(a, 6); a += c;                                          \
		c -= b; c ^= jhash_rol32(b, 8); b += a;                                          \
		a -= c; a ^= jhash_rol32(c, 16); c += b;                                         \
		b -= a; b ^= jhash_rol32(a, 19); a += c;                                         \
		c -= b; c ^= jhash_rol32(b, 4); b += a;                                          \
	}

#define __jhash_final(a, b, c)                                                                     \
	{                                                                                          \
		c ^= b; c -= jhash_rol32(b, 14);                                                 \
		a ^= c; a -= jhash_rol32(c, 11);                                                 \
		b ^= a; b -= jhash_rol32(a, 25);                                                 \
		c ^= b; c -= jhash_rol32(b, 16);                                                 \
		a ^= c; a -= jhash_rol32(c, 4);                                                  \
		b ^= a; b -= jhash_rol32(a, 14);                                                 \
		c ^= b; c -= jhash_rol32(b, 24);                                                 \
	}

/* jhash_3words(a, b, c, initval) of the kernel. */
static __always_inline __u32 jhash_3words(__u32 a, __u32 b, __u32 c, __u32 initval)
{
	a += JHASH_INITVAL + (3 << 2) + initval;
	b += JHASH_INITVAL + (3 << 2) + initval;
	c += JHASH_INITVAL + (3 << 2) + initval;
	__jhash_final(a, b, c);
	return c;
}
#endif
