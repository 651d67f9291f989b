"""The selector cache: selections kept incrementally, only the selectors an identity enters or
leaves reported as changed, and the same answers as a cache built from scratch."""

from __future__ import annotations

from ipaddress import ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ciliary.policy.api import LabelSet, Requirement, Selector
from ciliary.policy.identity import (
    RESERVED_IDENTITIES,
    Identity,
    cidr_identity,
    cidr_label,
    cidr_labels,
    entity_selects,
    is_cluster_identity,
    reserved_identity,
)
from ciliary.policy.selectorcache import (
    CIDRPeer,
    EntityPeer,
    LabelPeer,
    PeerSelector,
    SelectorCache,
    cidr_blocks,
    is_wildcard,
)

from .lab import NS, pod

WEB = LabelPeer(Selector((("k8s:app", "web"),)))
SHOP = LabelPeer(Selector(((NS, "shop"),)))
WORLD = EntityPeer("world")
CLUSTER = EntityPeer("cluster")
TEN = CIDRPeer(ip_network("10.0.0.0/8"), (ip_network("10.1.0.0/16"),))


def test_reserved_identities_have_ciliums_numbers_and_labels() -> None:
    numbers = {i.id: i.labels for i in RESERVED_IDENTITIES}
    assert numbers[1] == {"reserved:host"}
    assert numbers[2] == {"reserved:world"}
    assert numbers[7] == {"reserved:kube-apiserver", "reserved:remote-node"}
    assert numbers[9] == {"reserved:world-ipv4", "reserved:world"}
    assert numbers[10] == {"reserved:world-ipv6", "reserved:world"}
    assert sorted(numbers) == list(range(1, 11))
    assert reserved_identity("kube-apiserver").id == 7
    assert reserved_identity(6).labels == {"reserved:remote-node"}


def test_cidr_labels_hold_every_supernet_and_world() -> None:
    labels = cidr_labels("10.1.0.0/16")
    assert "cidr:10.1.0.0/16" in labels
    assert "cidr:10.0.0.0/8" in labels
    assert "cidr:0.0.0.0/0" in labels
    assert "cidr:10.1.0.0/17" not in labels
    assert {"reserved:world", "reserved:world-ipv4"} <= labels
    assert len([x for x in labels if x.startswith("cidr:")]) == 17
    six = cidr_labels("2001:db8::/32")
    assert "cidr:2001-db8--/32" in six
    assert "reserved:world-ipv6" in six
    assert cidr_label(ip_network("::/0")) == "cidr:--/0"
    assert cidr_identity(5, "1.2.3.4/32").id == (1 << 24) | 5


def test_cluster_identity_ranges() -> None:
    assert all(is_cluster_identity(n) for n in (1, 3, 4, 5, 6, 7, 8, 256, 65535, (1 << 24) - 1))
    assert not any(is_cluster_identity(n) for n in (2, 9, 10, 100, 255, 1 << 24, (1 << 24) | 7))
    world = cidr_identity(1, "8.8.8.8/32")
    assert entity_selects("world", world)
    assert not entity_selects("cluster", world)
    assert entity_selects("remote-node", reserved_identity("kube-apiserver"))


def test_cidr_blocks_are_the_largest_prefixes_around_the_exceptions() -> None:
    blocks = cidr_blocks(ip_network("10.0.0.0/8"), [ip_network("10.1.0.0/16")])
    assert [str(b) for b in blocks] == [
        "10.0.0.0/16",
        "10.2.0.0/15",
        "10.4.0.0/14",
        "10.8.0.0/13",
        "10.16.0.0/12",
        "10.32.0.0/11",
        "10.64.0.0/10",
        "10.128.0.0/9",
    ]
    assert cidr_blocks(ip_network("10.0.0.0/8"), [ip_network("0.0.0.0/0")]) == []
    assert cidr_blocks(ip_network("10.0.0.0/8"), [ip_network("::/0")]) == [ip_network("10.0.0.0/8")]


@given(
    st.integers(0, 255),
    st.lists(st.tuples(st.integers(0, 255), st.integers(0, 8)), max_size=3),
)
def test_cidr_blocks_cover_exactly_the_difference(
    base: int, raw_excepts: list[tuple[int, int]]
) -> None:
    # a /28 inside 10.0.0.0/24, exceptions anywhere in the /24: brute force over addresses
    cidr = ip_network(f"10.0.0.{base & 0xF0}/28")
    excepts = [ip_network(f"10.0.0.{a}/{24 + p}", strict=False) for a, p in raw_excepts]
    blocks = cidr_blocks(cidr, excepts)
    covered = {int(a) for b in blocks for a in b}
    expected = {int(a) for a in cidr if not any(a in e for e in excepts)}
    assert covered == expected
    for i, b in enumerate(blocks):  # maximal: no two siblings both present
        for other in blocks[i + 1 :]:
            assert not (b.prefixlen == other.prefixlen and b.supernet() == other.supernet())


def test_selections_and_wildcards() -> None:
    cache = SelectorCache()
    web = pod(256, "shop", app="web")
    cache.upsert_identity(web)
    assert cache.selections(WEB) == {256}
    assert cache.selections(WORLD) == {2, 9, 10}
    assert cache.selections(CLUSTER) == {1, 3, 4, 5, 6, 7, 8, 256}
    assert is_wildcard(LabelPeer(Selector()))
    assert is_wildcard(EntityPeer("all"))
    assert not is_wildcard(WEB)
    assert not is_wildcard(LabelPeer(Selector((), (Requirement(NS, "Exists"),))))


def test_adding_an_identity_changes_only_the_selectors_it_matches() -> None:
    cache = SelectorCache()
    peers: list[PeerSelector] = [WEB, SHOP, WORLD, CLUSTER, TEN]
    for peer in peers:
        cache.selections(peer)
    version = cache.version

    assert cache.upsert_identity(pod(256, "shop", app="web")) == {WEB, SHOP, CLUSTER}
    assert cache.upsert_identity(pod(257, "other", app="db")) == {CLUSTER}
    assert cache.upsert_identity(cidr_identity(1, "10.2.0.0/16")) == {WORLD, TEN}
    assert cache.upsert_identity(cidr_identity(2, "10.1.2.0/24")) == {WORLD}  # excepted
    assert cache.upsert_identity(cidr_identity(3, "10.0.0.0/8")) == {WORLD}  # overlaps except
    assert cache.upsert_identity(Identity.of(300, ["k8s:x=y"])) == {CLUSTER}
    assert cache.version == version + 6
    # the same identity again: no change at all
    assert cache.upsert_identity(pod(256, "shop", app="web")) == frozenset()
    assert cache.version == version + 6

    assert cache.selections(WEB) == {256}
    assert cache.selections(SHOP) == {256}
    assert cache.selections(TEN) == {(1 << 24) | 1}
    assert cache.selections(WORLD) == {2, 9, 10} | {(1 << 24) | n for n in (1, 2, 3)}


def test_relabelling_and_removing_report_what_left() -> None:
    cache = SelectorCache()
    for peer in (WEB, SHOP, CLUSTER):
        cache.selections(peer)
    cache.upsert_identity(pod(256, "shop", app="web"))
    # the same number, new labels: leaves WEB, stays in SHOP and CLUSTER
    assert cache.upsert_identity(pod(256, "shop", app="api")) == {WEB}
    assert cache.selections(WEB) == frozenset()
    assert cache.remove_identity(256) == {SHOP, CLUSTER}
    assert cache.remove_identity(256) == frozenset()
    assert 256 not in cache.selections(CLUSTER)
    assert cache.get(256) is None


def test_retain_drops_unused_selectors() -> None:
    cache = SelectorCache()
    for peer in (WEB, SHOP, WORLD):
        cache.selections(peer)
    assert cache.retain([WEB]) == 2
    assert cache.selectors() == {WEB}
    # dropped selectors are no longer reported
    assert cache.upsert_identity(cidr_identity(1, "1.1.1.1/32")) == frozenset()


IDENTITIES = [
    pod(256 + i, ns, app=app, env=env)
    for i, (ns, app, env) in enumerate(
        (ns, app, env) for ns in ("a", "b") for app in ("web", "db") for env in ("x", "y")
    )
] + [
    cidr_identity(n + 1, p)
    for n, p in enumerate(["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "192.168.0.0/16"])
]
PEERS: list[PeerSelector] = [
    WEB,
    SHOP,
    WORLD,
    CLUSTER,
    TEN,
    LabelPeer(Selector((("k8s:env", "x"),), (Requirement("k8s:app", "NotIn", ("db",)),))),
    LabelPeer(Selector((), (Requirement("any:env", "Exists"),))),
    CIDRPeer(ip_network("0.0.0.0/0")),
    EntityPeer("world-ipv4"),
]


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(st.booleans(), st.sampled_from(IDENTITIES), st.sampled_from(PEERS)),
        max_size=30,
    )
)
def test_incremental_cache_equals_a_fresh_one(
    ops: list[tuple[bool, Identity, PeerSelector]],
) -> None:
    cache = SelectorCache()
    for add, identity, peer in ops:
        cache.selections(peer)  # selectors registered at arbitrary times
        before = {p: cache.selections(p) for p in cache.selectors()}
        changed = cache.upsert_identity(identity) if add else cache.remove_identity(identity.id)
        after = {p: cache.selections(p) for p in cache.selectors()}
        assert changed == {p for p in before if before[p] != after[p]}
    fresh = SelectorCache(cache.identities().values())
    for peer in PEERS:
        assert cache.selections(peer) == fresh.selections(peer)


RELABELLED = [
    pod(256, "b", app="db", env="y"),  # IDENTITIES[0]'s number, another label set
    Identity.of(257, ["reserved:host"]),
    Identity.of(258, ["k8s:app=web", "container:app=web", f"{NS}=a"]),
]
INDEXED_PEERS: list[PeerSelector] = [
    *PEERS,
    LabelPeer(Selector((("any:app", "web"),))),
    LabelPeer(Selector((("container:app", "web"),))),
    LabelPeer(Selector((), (Requirement("k8s:app", "In", ("db", "web")),))),
    LabelPeer(Selector((), (Requirement("any:env", "DoesNotExist"),))),
    LabelPeer(Selector((("reserved:host", ""),))),
]


@settings(max_examples=80)
@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.sampled_from(IDENTITIES + RELABELLED),
            st.sampled_from(INDEXED_PEERS),
        ),
        max_size=30,
    )
)
def test_the_label_index_misses_no_identity_that_changes_labels(
    ops: list[tuple[bool, Identity, PeerSelector]],
) -> None:
    """Identities whose number comes back with other labels, label sources other than ``k8s``
    and selectors indexed by key, by key and value, or not at all: the indexed cache reports
    and keeps exactly what matching every identity against every selector gives."""
    cache = SelectorCache()
    for add, identity, peer in ops:
        cache.selections(peer)
        before = {p: cache.selections(p) for p in cache.selectors()}
        changed = cache.upsert_identity(identity) if add else cache.remove_identity(identity.id)
        brute = {
            p: frozenset(
                n for n, i in cache.identities().items() if p.selects(i, LabelSet(i.labels))
            )
            for p in cache.selectors()
        }
        assert {p: cache.selections(p) for p in cache.selectors()} == brute
        assert changed == {p for p in before if before[p] != brute[p]}


def test_a_new_selector_is_matched_only_against_identities_with_its_label(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = SelectorCache()
    for n in range(200):
        cache.upsert_identity(pod(256 + n, f"ns{n % 4}", app=f"a{n % 20}", tier=f"t{n % 2}"))
    asked: list[int] = []
    selects = LabelPeer.selects

    def counting(self: LabelPeer, identity: Identity, labels: LabelSet) -> bool:
        asked.append(identity.id)
        return selects(self, identity, labels)

    monkeypatch.setattr(LabelPeer, "selects", counting)
    app = LabelPeer(Selector((("any:app", "a3"), ("k8s:tier", "t1"))))
    assert cache.selections(app) == {256 + n for n in range(200) if n % 20 == 3}
    assert len(asked) == 10  # the identities labelled app=a3, not all 210
    asked.clear()
    tier = LabelPeer(Selector((), (Requirement("k8s:tier", "Exists"),)))
    assert len(cache.selections(tier)) == 200
    assert len(asked) == 200  # every identity with the key (the reserved ones have none)
    # a new identity is matched against the selectors of its labels (and unindexed ones) only
    asked.clear()
    assert cache.upsert_identity(pod(999, "ns0", app="a9", tier="t0")) == {tier}
    assert asked == [999]


def test_unchanged_since_and_drops() -> None:
    cache = SelectorCache()
    cache.selections(WEB)
    cache.selections(SHOP)
    version = cache.version
    cache.upsert_identity(pod(256, "other", app="db"))  # neither selects it
    assert cache.unchanged_since([WEB, SHOP], version)
    cache.upsert_identity(pod(257, "shop", app="db"))
    assert cache.unchanged_since([WEB], version)
    assert not cache.unchanged_since([WEB, SHOP], version)
    assert cache.unchanged_since([WEB, SHOP], cache.version)
    drops = cache.drops
    cache.retain([SHOP])
    assert cache.drops == drops + 1
    assert not cache.unchanged_since([WEB], cache.version)  # dropped: not kept any more
    cache.retain([SHOP])
    assert cache.drops == drops + 1  # nothing dropped
