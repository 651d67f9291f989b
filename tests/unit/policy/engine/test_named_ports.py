"""Egress rules on named ports: resolved per selected identity against the destinations' declared
container ports (Cilium's ``NamedPortMultiMap.GetNamedPorts``), and the selector cache shrinking
once a policy is gone."""

from __future__ import annotations

from ciliary.policy.mapstate import PROTO_TCP, PROTO_UDP, MapKey
from ciliary.policy.resolve import compute, merge_named_ports
from ciliary.policy.selectorcache import SelectorCache

from .lab import WORLD4, Lab, pod

CLIENT = pod(256, "default", role="client")
SERVER_A = pod(257, "default", app="server", instance="a")
SERVER_B = pod(258, "default", app="server", instance="b")
OTHER = pod(259, "default", app="other")
EVERYONE = (CLIENT, SERVER_A, SERVER_B, OTHER, WORLD4)

TO_SERVERS = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: named, namespace: default}
spec:
  endpointSelector: {matchLabels: {role: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts: [{ports: [{port: web}]}]
"""

TO_ANYONE = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: named, namespace: default}
spec:
  endpointSelector: {matchLabels: {role: client}}
  egress:
  - toPorts: [{ports: [{port: web}]}]
"""


def lab(text: str) -> Lab:
    out = Lab(*EVERYONE)
    out.apply(text)
    out.named_ports = {
        SERVER_A.id: {"web": (8080, "TCP")},
        SERVER_B.id: {"web": (9090, "TCP")},
        OTHER.id: {"web": (7070, "TCP"), "dns": (53, "UDP")},
    }
    return out


def egress_keys(lab_: Lab) -> set[MapKey]:
    return {k for k in lab_.policy(CLIENT).entries if k.egress}


def test_named_port_resolves_per_selected_identity() -> None:
    lab_ = lab(TO_SERVERS)
    assert egress_keys(lab_) == {
        MapKey(SERVER_A.id, True, PROTO_TCP, 8080, 16),
        MapKey(SERVER_B.id, True, PROTO_TCP, 9090, 16),
    }
    # each server on its own number only, and the unselected pod not at all
    assert lab_.egress(CLIENT, SERVER_A, PROTO_TCP, 8080).allowed
    assert not lab_.egress(CLIENT, SERVER_A, PROTO_TCP, 9090).allowed
    assert lab_.egress(CLIENT, SERVER_B, PROTO_TCP, 9090).allowed
    assert not lab_.egress(CLIENT, SERVER_B, PROTO_TCP, 8080).allowed
    assert not lab_.egress(CLIENT, OTHER, PROTO_TCP, 7070).allowed
    policy = lab_.policy(CLIENT)
    assert policy.egress_port_names == {"web"}
    assert not policy.unsupported


def test_wildcard_peer_counts_every_identity_declaring_the_name() -> None:
    lab_ = lab(TO_ANYONE)
    assert egress_keys(lab_) == {
        MapKey(SERVER_A.id, True, PROTO_TCP, 8080, 16),
        MapKey(SERVER_B.id, True, PROTO_TCP, 9090, 16),
        MapKey(OTHER.id, True, PROTO_TCP, 7070, 16),
    }
    assert lab_.egress(CLIENT, OTHER, PROTO_TCP, 7070).allowed
    assert not lab_.egress(CLIENT, WORLD4, PROTO_TCP, 7070).allowed  # declares nothing


def test_unknown_name_or_other_protocol_gives_no_entry() -> None:
    lab_ = lab(TO_SERVERS.replace("port: web", "port: nope"))
    assert egress_keys(lab_) == set()
    policy = lab_.policy(CLIENT)
    assert policy.egress_enforced and not policy.unsupported
    lab_ = lab(TO_ANYONE.replace("port: web", "port: dns, protocol: TCP"))
    assert egress_keys(lab_) == set()  # declared for UDP only
    lab_ = lab(TO_ANYONE.replace("port: web", "port: dns, protocol: UDP"))
    assert egress_keys(lab_) == {MapKey(OTHER.id, True, PROTO_UDP, 53, 16)}


def test_new_declarations_change_the_result() -> None:
    lab_ = lab(TO_SERVERS)
    lab_.named_ports = {SERVER_A.id: {"web": (8080, "TCP")}}
    assert egress_keys(lab_) == {MapKey(SERVER_A.id, True, PROTO_TCP, 8080, 16)}
    lab_.named_ports = {SERVER_A.id: {"web": (8081, "TCP")}}
    assert egress_keys(lab_) == {MapKey(SERVER_A.id, True, PROTO_TCP, 8081, 16)}


def test_merge_named_ports_per_identity() -> None:
    merged = merge_named_ports(
        [
            (257, {"web": (8080, "TCP")}),
            (257, {"web": (8080, "TCP"), "Metrics": (9100, "tcp")}),
            (258, {"web": (9090, "TCP")}),
            (259, {"web": (1, "TCP")}),
            (259, {"web": (2, "TCP")}),  # one identity, two numbers: ambiguous, dropped
            (259, {"web": (3, "TCP")}),
            (260, {}),
        ]
    )
    assert {i: dict(p) for i, p in merged.items()} == {
        257: {"web": (8080, "TCP"), "metrics": (9100, "TCP")},
        258: {"web": (9090, "TCP")},
    }


def test_deleting_a_policy_lets_the_cache_shrink() -> None:
    lab_ = Lab(*EVERYONE)
    lab_.apply(TO_SERVERS)
    lab_.apply(TO_SERVERS.replace("name: named", "name: extra").replace("app: server", "app: x"))
    cache: SelectorCache = lab_.cache
    before = lab_.policy(CLIENT)
    assert len(before.selectors) == 2
    assert before.selectors <= cache.selectors()
    lab_.repo.delete(["CiliumNetworkPolicy/default/extra"])
    after = lab_.policy(CLIENT)
    assert len(after.selectors) == 1
    assert cache.retain(after.selectors) == 1
    assert cache.selectors() == after.selectors
    # a policy computed from the memo keeps its selectors tracked even after a retain
    cache.retain(())
    again = lab_.policy(CLIENT)
    assert again is after
    assert cache.selectors() == after.selectors


def test_without_remote_named_ports_the_engine_reports_it() -> None:
    lab_ = lab(TO_SERVERS)
    alone = compute(lab_.repo, lab_.cache, CLIENT)
    assert any("egress named port 'web'" in note for note in alone.unsupported)
