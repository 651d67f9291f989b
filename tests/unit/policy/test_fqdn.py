"""toFQDNs' two halves (policy/fqdn.py): Cilium's matchName/matchPattern semantics, and the DNS
cache with TTLs, min TTL, the per-name IP limit, expiry, version bumps and the pre-cache file."""

from __future__ import annotations

from ipaddress import ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ciliary.policy.api.model import FQDNSelector
from ciliary.policy.fqdn import DNSCache, DNSLookup, pattern_regex, selector_matches

label = st.from_regex(r"[-a-z0-9_]{1,10}", fullmatch=True)


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("*", "cilium.io", True),
        ("*", "a.b.c", True),
        ("*.cilium.io", "sub.cilium.io", True),
        ("*.cilium.io", "cilium.io", False),
        ("*.cilium.io", "a.b.cilium.io", False),
        ("*.cilium.io", "subxcilium.io", False),  # the dot is literal
        ("**.cilium.io", "a.b.cilium.io", True),
        ("**.cilium.io", "sub.cilium.io", True),
        ("**.cilium.io", "cilium.io", False),
        ("api-*.example.com", "api-v1.example.com", True),
        ("api-*.example.com", "api-.example.com", True),
        ("api-*.example.com", "web-v1.example.com", False),
        ("sub.*.io", "sub.cilium.io", True),
        ("CILIUM.io.", "cilium.io", True),
    ],
)
def test_patterns_as_cilium(pattern: str, name: str, expected: bool) -> None:
    assert selector_matches(FQDNSelector(match_pattern=pattern), name) is expected


def test_match_name_is_exact_and_case_insensitive() -> None:
    sel = FQDNSelector(match_name="api.example.com")
    assert selector_matches(sel, "API.Example.com.")
    assert not selector_matches(sel, "x.api.example.com")


@given(st.lists(label, min_size=1, max_size=4), st.lists(label, min_size=1, max_size=3))
def test_one_star_is_one_label_and_two_are_any(sub: list[str], base: list[str]) -> None:
    name = ".".join([*sub, *base])
    suffix = ".".join(base)
    assert (pattern_regex(f"*.{suffix}").fullmatch(name) is not None) is (len(sub) == 1)
    assert pattern_regex(f"**.{suffix}").fullmatch(name) is not None
    assert pattern_regex("*").fullmatch(name) is not None


def test_ttls_min_ttl_and_expiry() -> None:
    cache = DNSCache(min_ttl=10)
    assert cache.update(DNSLookup("web.example.com.", ("192.0.2.1", "2001:db8::1"), 5, 100.0))
    assert cache.lookup("web.example.com") == ["192.0.2.1", "2001:db8::1"]
    v = cache.version
    assert not cache.update(DNSLookup("web.example.com", ("192.0.2.1",), 60, 101.0))  # refresh
    assert cache.version == v
    assert cache.expire(109.0) == set()  # min TTL: 100 + 10
    assert cache.expire(110.0) == {"web.example.com"}  # the IPv6 one, TTL 5 → 10
    assert cache.lookup("web.example.com") == ["192.0.2.1"] and cache.version == v + 1
    assert cache.expire(161.0) == {"web.example.com"} and cache.names() == []


def test_a_name_keeps_the_ips_expiring_last() -> None:
    cache = DNSCache(max_ips_per_name=2)
    cache.update(DNSLookup("a.io", ("192.0.2.1",), 10, 0.0))
    cache.update(DNSLookup("a.io", ("192.0.2.2",), 30, 0.0))
    cache.update(DNSLookup("a.io", ("192.0.2.3",), 20, 0.0))
    assert cache.lookup("a.io") == ["192.0.2.2", "192.0.2.3"]


def test_selectors_select_the_host_prefixes_of_their_names() -> None:
    cache = DNSCache()
    cache.update(DNSLookup("api.example.com", ("192.0.2.1",), 60, 0.0))
    cache.update(DNSLookup("www.example.com", ("192.0.2.2", "2001:db8::2"), 60, 0.0))
    cache.update(DNSLookup("other.org", ("198.51.100.1",), 60, 0.0))
    assert cache.prefixes([FQDNSelector(match_name="api.example.com")]) == (
        ip_network("192.0.2.1/32"),
    )
    assert cache.prefixes([FQDNSelector(match_pattern="*.example.com")]) == (
        ip_network("192.0.2.1/32"),
        ip_network("192.0.2.2/32"),
        ip_network("2001:db8::2/128"),
    )
    assert cache.prefixes([FQDNSelector(match_name="nothing.io")]) == ()


def test_the_pre_cache_file_is_all_or_nothing() -> None:
    cache = DNSCache()
    good = {"fqdn": "a.io.", "ips": ["192.0.2.1"], "ttl": 60, "lookup-time": 0}
    with pytest.raises(ValueError, match=r"entry 1: .*not-an-ip"):
        cache.restore([good, {"fqdn": "b.io", "ips": ["not-an-ip"]}])
    assert cache.names() == []
    with pytest.raises(ValueError, match="entry 0: expected 'fqdn'"):
        cache.restore([{"ips": []}])
    cache.restore([good])
    assert cache.lookup("a.io") == ["192.0.2.1"]


def test_a_dump_restores_every_entry_with_its_expiry() -> None:
    cache = DNSCache()
    cache.update(DNSLookup("web.example.com", ("192.0.2.1",), 30, 1000.0))
    cache.update(DNSLookup("web.example.com", ("192.0.2.2",), 300, 1000.5))
    cache.update(DNSLookup("gone.example.com", ("192.0.2.9",), 5, 1000.0))
    dumped = cache.dump(now=1010.0)
    assert [(e["fqdn"], e["ips"], e["ttl"], e.get("source")) for e in dumped] == [
        ("web.example.com", ["192.0.2.1"], 20, None),
        ("web.example.com", ["192.0.2.2"], 291, None),
        ("gone.example.com", ["192.0.2.9"], 0, "connection"),
    ]  # the expired answer is saved as a zombie: a connection may still use its IP
    again = DNSCache()
    again.restore(dumped)
    assert again.entries() == [e for e in cache.entries() if e[0] == "web.example.com"]
    assert again.zombies.entries() == [("gone.example.com", "192.0.2.9", 1005.0)]


def test_names_of_an_address_follow_answers_and_expiry() -> None:
    """Hubble's source/destination names: IP → names (normalized, sorted), rebuilt when the
    cache's IPs change, gone with their expiry."""
    cache = DNSCache()
    assert cache.names_of("192.0.2.1") == ()
    cache.update(DNSLookup("Web.Example.com.", ("192.0.2.1",), 5, 100.0))
    cache.update(DNSLookup("alias.example.com", ("192.0.2.1", "2001:db8::1"), 60, 100.0))
    assert cache.names_of("192.0.2.1") == ("alias.example.com", "web.example.com")
    assert cache.names_of("2001:db8::1") == ("alias.example.com",)
    cache.expire(106.0)  # web.example.com's answer expired
    assert cache.names_of("192.0.2.1") == ("alias.example.com",)
    cache.expire(161.0)
    assert cache.names_of("192.0.2.1") == () and cache.names_of("2001:db8::1") == ()
