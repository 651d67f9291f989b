"""Maglev consistent hashing (Eisenbud et al., NSDI'16) as Cilium's ``pkg/maglev``: the lookup
table every node computes for a service, so that the same 5-tuple picks the same backend on
every node (the datapath indexes the table with a hash of the tuple) and removing one backend
moves only about 1/N of the table.

Why here (core): the agent computes the tables and the lab generates the cluster-wide seed; both
validate the same flags. Pure Python, no numpy: the permutation is never materialised (upstream
keeps a ``len(backends) * M`` slice); each backend's next preferred slot is computed as
``(offset + k*skip) mod M`` when needed. 100 backends at M = 16381 take ~20 ms
(tests/unit/agent/test_maglev.py measures it).

Upstream's details kept: the seed is base64 of 12 bytes, the first 4 (big endian) seeding
MurmurHash3 x64-128 over the backend's name, the next 4 and 4 the datapath's jhash of the tuple;
``offset = h1 mod M``, ``skip = h2 mod (M - 1) + 1``; backends sorted by name (names are the same
on every node, backend ids are not) and filled round-robin, each taking its next preferred free
slot. M must be one of upstream's primes (``MAGLEV_TABLE_SIZES``).
"""

from __future__ import annotations

import base64
import binascii
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_HASH_SEED",
    "DEFAULT_TABLE_SIZE",
    "MAGLEV_TABLE_SIZES",
    "MaglevSeed",
    "jhash_3words",
    "lookup_table",
    "murmur3_x64_128",
    "new_hash_seed",
    "parse_hash_seed",
    "tuple_hash",
    "validate_table_size",
]

DEFAULT_TABLE_SIZE = 16381
MAGLEV_TABLE_SIZES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
DEFAULT_HASH_SEED = "JLfvgnHc2kaSUFaI"
"""Upstream's default ``--bpf-lb-maglev-hash-seed`` (a cluster should set its own)."""

_M64 = (1 << 64) - 1
_C1 = 0x87C37B91114253D5
_C2 = 0x4CF5AD432745937F


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M64
    return k ^ (k >> 33)


def murmur3_x64_128(data: bytes, seed: int) -> tuple[int, int]:
    """MurmurHash3 x64-128 (Appleby's reference; Cilium's ``murmur3.Hash128``): (h1, h2)."""
    h1 = h2 = seed & 0xFFFFFFFF
    n = len(data)
    full = n - n % 16
    for i in range(0, full, 16):
        k1 = int.from_bytes(data[i : i + 8], "little")
        k2 = int.from_bytes(data[i + 8 : i + 16], "little")
        h1 ^= (_rotl((k1 * _C1) & _M64, 31) * _C2) & _M64
        h1 = (((_rotl(h1, 27) + h2) & _M64) * 5 + 0x52DCE729) & _M64
        h2 ^= (_rotl((k2 * _C2) & _M64, 33) * _C1) & _M64
        h2 = (((_rotl(h2, 31) + h1) & _M64) * 5 + 0x38495AB5) & _M64
    tail = data[full:]
    if len(tail) > 8:
        k2 = int.from_bytes(tail[8:], "little")
        h2 ^= (_rotl((k2 * _C2) & _M64, 33) * _C1) & _M64
    if tail:
        k1 = int.from_bytes(tail[:8], "little")
        h1 ^= (_rotl((k1 * _C1) & _M64, 31) * _C2) & _M64
    h1 ^= n
    h2 ^= n
    h1 = (h1 + h2) & _M64
    h2 = (h2 + h1) & _M64
    h1 = _fmix(h1)
    h2 = _fmix(h2)
    h1 = (h1 + h2) & _M64
    h2 = (h2 + h1) & _M64
    return h1, h2


@dataclass(frozen=True)
class MaglevSeed:
    """The three 32-bit seeds of a ``--bpf-lb-maglev-hash-seed``."""

    murmur: int
    jhash0: int
    jhash1: int


def parse_hash_seed(seed: str, what: str = "--bpf-lb-maglev-hash-seed") -> MaglevSeed:
    """Upstream's seed: base64 of exactly 12 bytes; anything else is refused naming ``what``."""
    try:
        raw = base64.b64decode(seed, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what}: {seed!r} is not base64 ({exc})") from exc
    if len(raw) != 12:
        raise ValueError(f"{what}: {seed!r} decodes to {len(raw)} bytes, expected 12")
    return MaglevSeed(
        int.from_bytes(raw[0:4], "big"),
        int.from_bytes(raw[4:8], "big"),
        int.from_bytes(raw[8:12], "big"),
    )


def new_hash_seed() -> str:
    """A fresh seed (upstream: ``head -c12 /dev/urandom | base64``), one per cluster."""
    return base64.b64encode(secrets.token_bytes(12)).decode()


def validate_table_size(m: int, what: str = "--bpf-lb-maglev-table-size") -> int:
    if m not in MAGLEV_TABLE_SIZES:
        sizes = ", ".join(str(s) for s in MAGLEV_TABLE_SIZES)
        raise ValueError(f"{what}: {m} is not one of upstream's prime sizes ({sizes})")
    return m


def lookup_table(names: Sequence[str], m: int, seed: int) -> list[int]:
    """The Maglev table of size ``m``: for each entry, an index into ``names`` (which the caller
    passes sorted: upstream sorts by name so that every node fills the same table). Empty for no
    backends."""
    n = len(names)
    if n == 0:
        return []
    offsets: list[int] = []
    skips: list[int] = []
    for name in names:
        h1, h2 = murmur3_x64_128(name.encode(), seed)
        offsets.append(h1 % m)
        skips.append(h2 % (m - 1) + 1)
    nxt = [0] * n
    entry = [-1] * m
    filled = 0
    while True:
        for i in range(n):
            off, skip, k = offsets[i], skips[i], nxt[i]
            c = (off + k * skip) % m
            while entry[c] >= 0:
                k += 1
                c = (off + k * skip) % m
            entry[c] = i
            nxt[i] = k + 1
            filled += 1
            if filled == m:
                return entry


_M32 = 0xFFFFFFFF


def _rol32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def jhash_3words(a: int, b: int, c: int, initval: int) -> int:
    """The kernel's ``jhash_3words`` (lookup3's final mix), as bpf/lib/jhash.h."""
    a = (a + 0xDEADBEEF + 12 + initval) & _M32
    b = (b + 0xDEADBEEF + 12 + initval) & _M32
    c = (c + 0xDEADBEEF + 12 + initval) & _M32
    c ^= b
    c = (c - _rol32(b, 14)) & _M32
    a ^= c
    a = (a - _rol32(c, 11)) & _M32
    b ^= a
    b = (b - _rol32(a, 25)) & _M32
    c ^= b
    c = (c - _rol32(b, 16)) & _M32
    a ^= c
    a = (a - _rol32(c, 4)) & _M32
    b ^= a
    b = (b - _rol32(a, 14)) & _M32
    c ^= b
    return (c - _rol32(b, 24)) & _M32


def tuple_hash(saddr: bytes, sport: int, dport: int, proto: int, seed: MaglevSeed) -> int:
    """lib/lb.h ``lb_tuple_hash``: the hash whose value mod M indexes a frontend's table (the
    client's source address, ports in host order, protocol; address words in the machine's
    byte order, as the C reads them)."""
    ports = ((dport << 16) | sport) & _M32
    w = [int.from_bytes(saddr[i : i + 4], sys.byteorder) for i in range(0, len(saddr), 4)]
    if len(saddr) == 4:
        return jhash_3words(w[0], ports, proto, seed.jhash0)
    h = jhash_3words(w[0], w[1], w[2], seed.jhash1)
    return jhash_3words(w[3], ports, proto, h)
