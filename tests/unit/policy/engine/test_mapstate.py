"""Map keys, port-range cutting, the map-state builder, the LPM lookup and the diff."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ciliary.policy import mapstate
from ciliary.policy.mapstate import (
    PROTO_TCP,
    PROTO_UDP,
    LPMIndex,
    MapEntry,
    MapKey,
    MapStateBuilder,
    RuleRef,
    diff,
    keys_for_ports,
    lookup,
    map_key,
    port_range_prefixes,
)

REF = RuleRef("k", "CiliumNetworkPolicy", "ns", "p", 0, "ingress", False, 0)
DENY_REF = RuleRef("k", "CiliumNetworkPolicy", "ns", "p", 0, "ingress", True, 1)


def test_map_key_is_one_object_per_key_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine makes its keys through ``map_key``: equal parts, the same (checked) object."""
    key = map_key(7, True, PROTO_TCP, 8080, 16)
    assert key == MapKey(7, True, PROTO_TCP, 8080, 16)
    assert map_key(7, True, PROTO_TCP, 8080, 16) is key
    assert map_key(7, False, PROTO_TCP, 8080, 16) is not key
    with pytest.raises(ValueError, match="port prefix"):
        map_key(7, True, PROTO_TCP, 8080, 17)
    monkeypatch.setattr(mapstate, "_KEYS_LIMIT", 2)
    map_key(8, True)
    map_key(9, True)  # past the limit: everything kept is forgotten at once
    assert len(mapstate._keys) <= 2 and map_key(7, True, PROTO_TCP, 8080, 16) == key


def test_key_prefix_lengths_and_validation() -> None:
    assert MapKey(5, False).prefixlen == 40
    assert MapKey(5, False, PROTO_TCP).prefixlen == 48
    assert MapKey(5, False, PROTO_TCP, 80, 16).prefixlen == 64
    assert MapKey(5, False, PROTO_TCP, 8000, 13).prefixlen == 61
    with pytest.raises(ValueError, match="needs a protocol"):
        MapKey(5, False, 0, 80, 16)
    with pytest.raises(ValueError, match="bits set"):
        MapKey(5, False, PROTO_TCP, 8001, 13)
    with pytest.raises(ValueError, match="prefix"):
        MapKey(5, False, PROTO_TCP, 80, 17)
    assert str(MapKey(5, True, PROTO_TCP, 8000, 13)) == "egress id=5 tcp/8000-8007"


def test_covers() -> None:
    wide = MapKey(1, False)
    tcp = MapKey(1, False, PROTO_TCP)
    block = MapKey(1, False, PROTO_TCP, 8000, 13)
    port = MapKey(1, False, PROTO_TCP, 8005, 16)
    assert wide.covers(tcp) and wide.covers(port) and tcp.covers(block) and block.covers(port)
    assert not port.covers(block)
    assert not block.covers(MapKey(1, False, PROTO_TCP, 8008, 16))
    assert not tcp.covers(MapKey(1, False, PROTO_UDP, 80, 16))
    assert not wide.covers(MapKey(1, True))


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_port_range_prefixes_cover_exactly(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    blocks = port_range_prefixes(lo, hi)
    covered = 0
    previous_end = lo - 1
    for port, prefix in blocks:
        size = 1 << (16 - prefix)
        assert port % size == 0
        assert port == previous_end + 1  # contiguous, in order, no overlap
        previous_end = port + size - 1
        covered += size
    assert previous_end == hi
    assert covered == hi - lo + 1
    assert len(blocks) <= 32


def test_port_range_examples() -> None:
    assert port_range_prefixes(80, 80) == [(80, 16)]
    assert port_range_prefixes(0, 0xFFFF) == [(0, 0)]
    assert port_range_prefixes(8000, 8010) == [(8000, 13), (8008, 15), (8010, 16)]
    assert keys_for_ports(7, True, PROTO_TCP, 0, 0xFFFF) == [MapKey(7, True, PROTO_TCP)]
    with pytest.raises(ValueError, match="bad port range"):
        port_range_prefixes(10, 9)


def test_builder_deny_wins_and_covered_allows_go() -> None:
    builder = MapStateBuilder()
    builder.add(MapKey(1, False, PROTO_TCP, 80, 16), False, REF)
    builder.add(MapKey(1, False, PROTO_TCP, 81, 16), False, REF)
    builder.add(MapKey(1, False, PROTO_TCP, 80, 16), True, DENY_REF)  # same key: deny
    builder.add(MapKey(2, False, PROTO_TCP, 443, 16), False, REF)
    builder.add(MapKey(2, False), True, DENY_REF)  # covers identity 2 entirely
    builder.add(MapKey(3, False, PROTO_UDP, 53, 16), False, REF)
    builder.add(MapKey(0, False, PROTO_UDP), True, DENY_REF)  # identity 0 deny covers 3's allow
    builder.add(MapKey(0, True), False)  # other direction untouched
    out = builder.build()
    assert out == {
        MapKey(0, False, PROTO_UDP): MapEntry(True, frozenset({DENY_REF})),
        MapKey(0, True): MapEntry(False),
        MapKey(1, False, PROTO_TCP, 80, 16): MapEntry(True, frozenset({DENY_REF})),
        MapKey(1, False, PROTO_TCP, 81, 16): MapEntry(False, frozenset({REF})),
        MapKey(2, False): MapEntry(True, frozenset({DENY_REF})),
    }


def brute_lookup(
    entries: dict[MapKey, MapEntry], identity: int, egress: bool, protocol: int, port: int
) -> MapKey | None:
    """Longest matching key by scanning everything (what an LPM trie answers)."""
    matching = [
        k
        for k in entries
        if k.identity == identity and k.egress == egress and k.matches(protocol, port)
    ]
    return max(matching, key=lambda k: k.prefixlen, default=None)


KEYS = st.builds(
    lambda identity, egress, protocol, port, prefix: (
        MapKey(identity, egress)
        if protocol == 0
        else MapKey(identity, egress, protocol, port & ((0xFFFF << (16 - prefix)) & 0xFFFF), prefix)
    ),
    st.sampled_from([0, 1, 2]),
    st.booleans(),
    st.sampled_from([0, PROTO_TCP, PROTO_UDP]),
    st.sampled_from([0, 53, 80, 81, 8000, 8080, 65535]),
    st.integers(0, 16),
)


@settings(max_examples=200)
@given(
    st.dictionaries(KEYS, st.builds(MapEntry, st.booleans()), max_size=12),
    st.sampled_from([0, 1, 2]),
    st.booleans(),
    st.sampled_from([PROTO_TCP, PROTO_UDP, 1]),
    st.sampled_from([0, 53, 80, 81, 8000, 8007, 8080, 65535]),
)
def test_lookup_is_longest_prefix_match(
    entries: dict[MapKey, MapEntry], identity: int, egress: bool, protocol: int, port: int
) -> None:
    found = lookup(entries, identity, egress, protocol, port)
    expected = brute_lookup(entries, identity, egress, protocol, port)
    assert (found[0] if found else None) == expected
    assert LPMIndex(entries).lookup(identity, egress, protocol, port) == found


def test_diff() -> None:
    a = MapKey(1, False)
    b = MapKey(2, False)
    c = MapKey(3, False)
    old = {a: MapEntry(False), b: MapEntry(False, frozenset({REF}))}
    new = {b: MapEntry(True, frozenset({DENY_REF})), c: MapEntry(False)}
    to_set, to_delete = diff(old, new)
    assert to_set == new
    assert to_delete == {a}
    assert diff(new, new) == ({}, frozenset())
