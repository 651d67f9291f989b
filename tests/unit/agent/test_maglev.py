"""Maglev tables (core/maglev.py): upstream's hash (MurmurHash3 x64-128, checked against the
reference's known answer), the table a permutation-filled, balanced, deterministic function of
(sorted backend names, size, seed), the issue's Must-hold disruption bound (removing 1 of 100
backends moves at most 1.5 % of the other backends' entries), and the flags' validation."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from ciliary.core.maglev import (
    DEFAULT_HASH_SEED,
    DEFAULT_TABLE_SIZE,
    lookup_table,
    murmur3_x64_128,
    new_hash_seed,
    parse_hash_seed,
    validate_table_size,
)

NAMES = sorted(f"10.0.{i // 256}.{i % 256}:8080" for i in range(100))
SEED = parse_hash_seed(DEFAULT_HASH_SEED).murmur


def test_murmur3_reference_answers() -> None:
    assert murmur3_x64_128(b"", 0) == (0, 0)
    # the reference's x64-128 of "foo", seed 0 (as mmh3.hash64 prints it, signed)
    h1, h2 = murmur3_x64_128(b"foo", 0)
    assert (h1 - (1 << 64), h2) == (-2129773440516405919, 9128664383759220103)
    # a 16-byte block plus a tail longer than 8 takes both lanes
    assert murmur3_x64_128(b"x" * 33, 1) != murmur3_x64_128(b"x" * 33, 2)


def test_table_is_deterministic_balanced_and_fast() -> None:
    start = time.perf_counter()
    table = lookup_table(NAMES, DEFAULT_TABLE_SIZE, SEED)
    took = time.perf_counter() - start
    assert took < 0.5, f"100 backends at M=16381 took {took:.3f} s"
    assert len(table) == DEFAULT_TABLE_SIZE
    assert table == lookup_table(list(NAMES), DEFAULT_TABLE_SIZE, SEED)
    counts = Counter(table)
    assert set(counts) == set(range(100))
    # round-robin filling: every backend holds floor or ceil of M/N entries
    assert max(counts.values()) - min(counts.values()) <= 1
    other_seed = parse_hash_seed(new_hash_seed()).murmur
    assert lookup_table(NAMES, DEFAULT_TABLE_SIZE, other_seed) != table


def test_each_backend_fills_its_own_permutation() -> None:
    """A backend's entries are the first free positions of its sequence offset + k*skip mod M:
    with one backend it holds every entry; with two, backend 0 (which fills first) has its
    offset."""
    m = 251
    assert lookup_table(["a:1"], m, SEED) == [0] * m
    table = lookup_table(["a:1", "b:1"], m, SEED)
    h1, h2 = murmur3_x64_128(b"a:1", SEED)
    offset, skip = h1 % m, h2 % (m - 1) + 1
    assert table[offset] == 0
    assert sorted({(offset + k * skip) % m for k in range(m)}) == list(range(m))
    assert lookup_table([], m, SEED) == []


@pytest.mark.parametrize("removed", [0, 37, 99])
def test_removing_one_of_100_moves_at_most_1_5_percent(removed: int) -> None:
    before = lookup_table(NAMES, DEFAULT_TABLE_SIZE, SEED)
    rest = NAMES[:removed] + NAMES[removed + 1 :]
    after = lookup_table(rest, DEFAULT_TABLE_SIZE, SEED)
    own = sum(1 for i in before if i == removed)
    moved = sum(
        1 for b, a in zip(before, after, strict=True) if b != removed and NAMES[b] != rest[a]
    )
    assert own > 0
    assert moved / DEFAULT_TABLE_SIZE <= 0.015, f"{moved} of {DEFAULT_TABLE_SIZE} moved"


def test_flags_validated() -> None:
    assert validate_table_size(16381) == 16381
    with pytest.raises(ValueError, match="--bpf-lb-maglev-table-size: 16384 is not one of"):
        validate_table_size(16384)
    seed = parse_hash_seed("AAAAAQAAAAIAAAAD")
    assert (seed.murmur, seed.jhash0, seed.jhash1) == (1, 2, 3)
    with pytest.raises(ValueError, match="decodes to 9 bytes, expected 12"):
        parse_hash_seed("AAAAAQAAAAIA")
    with pytest.raises(ValueError, match="is not base64"):
        parse_hash_seed("not base64!")
    assert len(parse_hash_seed(new_hash_seed()).__dict__) == 3
