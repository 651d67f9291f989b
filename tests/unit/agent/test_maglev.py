"""Maglev tables (core/maglev.py): upstream's hash (MurmurHash3 x64-128, checked against the
reference's known answer), the table a permutation-filled, balanced, deterministic function of
(sorted backend names, size, seed), the disruption when 1 of 100 backends goes (the issue's
Must-hold: at most 1.5 % of flows move besides the removed backend's own; measured and printed,
with the total), the shares' balance (the "1 %" of the Maglev paper's M > 100 N rule), and the
flags' validation."""

from __future__ import annotations

import functools
import time
from collections import Counter
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Disruption:
    """What removing one backend of ``NAMES`` does to the table, as fractions of M: ``own`` the
    entries the removed backend held (they must move), ``without_cause`` the entries of a backend
    that stays whose backend changed, ``total`` every entry whose backend changed."""

    own: float
    without_cause: float
    total: float


@functools.cache
def _full_table(m: int) -> tuple[int, ...]:
    return tuple(lookup_table(NAMES, m, SEED))


def disruption(m: int, removed: int) -> Disruption:
    before = _full_table(m)
    rest = NAMES[:removed] + NAMES[removed + 1 :]
    after = lookup_table(rest, m, SEED)
    own = sum(1 for b in before if b == removed)
    changed = [b for b, a in zip(before, after, strict=True) if NAMES[b] != rest[a]]
    without_cause = sum(1 for b in changed if b != removed)
    return Disruption(own / m, without_cause / m, len(changed) / m)


@pytest.mark.parametrize(
    ("m", "bound", "removals"),
    [(DEFAULT_TABLE_SIZE, 0.015, range(100)), (32749, 0.01, range(0, 100, 10))],
)
def test_removing_one_of_100_backends_moves_few_flows(
    m: int, bound: float, removals: range
) -> None:
    """Flows map to table entries uniformly (the tuple hash % M), so the share of entries whose
    backend changes is the share of flows that move. The removed backend's own entries (1/N)
    must move; the Must-hold bound (<= 1.5 % of flows) is on those that move without cause, the
    entries of backends that stay. At the default M=16381 (M/N = 164), over all 100 removals,
    that is 1.29 % mean, 1.50 % max (245 entries), in total (with the removed backend's 1 %)
    2.29 % / 2.50 %; the next upstream size, 32749, gets it below 1 % (0.83 % / 0.96 %). The
    test takes every removal at the default size (each backend of the 100 removed alone), 10
    of them at 32749; ``pytest -s`` prints its numbers (docs/architecture.md)."""
    found = [disruption(m, r) for r in removals]
    for d in found:
        assert abs(d.own - 1 / len(NAMES)) <= 1 / m, d  # 1/N of the table, within one entry
        assert d.total == pytest.approx(d.own + d.without_cause), d
        assert d.without_cause <= bound, d
        assert d.total <= d.own + bound, d
    worst = max(found, key=lambda d: d.without_cause)
    mean = sum(d.without_cause for d in found) / len(found)
    print(
        f"\nMaglev M={m}, 1 of {len(NAMES)} backends removed ({len(found)} cases): moved "
        f"without cause mean {mean:.2%} max {worst.without_cause:.2%}; in total max "
        f"{max(d.total for d in found):.2%} (of which the removed backend's own "
        f"{worst.own:.2%})"
    )


def test_backends_shares_differ_by_under_1_percent() -> None:
    """The Maglev paper's rule M > 100 N (Cilium's docs: "at most 1 % difference"): every
    backend holds floor or ceil of M/N entries, so two backends' shares of the flows differ by
    at most N/M < 1 %."""
    counts = Counter(lookup_table(NAMES, DEFAULT_TABLE_SIZE, SEED))
    spread = (max(counts.values()) - min(counts.values())) / (DEFAULT_TABLE_SIZE / len(NAMES))
    assert spread <= len(NAMES) / DEFAULT_TABLE_SIZE < 0.01, counts


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
